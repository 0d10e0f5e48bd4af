"""The Yandex Cloud services over gRPC: proto in, ``service.handlers`` through the pipeline,
proto out.

Proto3 has no "absent": an empty string, zero or unset message is read as REST reads a
missing field, so both transports hand the handlers the same request and refuse it with
the same message. Everything that can refuse a request (enum values included) is read
inside the pipeline's work, so a refusal is audited as it is over REST.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Awaitable, Callable, Iterable
from datetime import timedelta
from typing import Any, TypeAlias, TypeVar

from google.protobuf import duration_pb2
from yandex.cloud.access import access_pb2
from yandex.cloud.endpoint import (
    api_endpoint_pb2,
    api_endpoint_service_pb2,
    api_endpoint_service_pb2_grpc,
)
from yandex.cloud.kms.v1 import (
    symmetric_crypto_service_pb2 as crypto_pb2,
)
from yandex.cloud.kms.v1 import (
    symmetric_crypto_service_pb2_grpc as crypto_grpc,
)
from yandex.cloud.kms.v1 import (
    symmetric_key_pb2,
)
from yandex.cloud.kms.v1 import (
    symmetric_key_service_pb2 as keys_pb2,
)
from yandex.cloud.kms.v1 import (
    symmetric_key_service_pb2_grpc as keys_grpc,
)
from yandex.cloud.operation import (
    operation_pb2,
    operation_service_pb2,
    operation_service_pb2_grpc,
)

from kms_hsm.domain.fields import FieldError
from kms_hsm.domain.model import Algorithm, KeyStatus
from kms_hsm.domain.validation import MAX_ID, MAX_RESOURCE_ID
from kms_hsm.errors import FailedPrecondition, KmsError
from kms_hsm.grpc import render
from kms_hsm.grpc.context import transport
from kms_hsm.grpc.errors import abort, abort_internal, abort_with
from kms_hsm.service import handlers, methods, pipeline
from kms_hsm.service.access import Binding, Resource
from kms_hsm.service.keys import KeyUpdate
from kms_hsm.service.methods import Method
from kms_hsm.service.pipeline import Call
from kms_hsm.service.runtime import Runtime

T = TypeVar("T")
E = TypeVar("E", bound=enum.IntEnum)
# grpc.aio.ServicerContext (grpcio has no type information).
Context: TypeAlias = Any


class Calls:
    """What every servicer shares: the runtime, and one call through the pipeline."""

    def __init__(self, rt: Runtime) -> None:
        self._rt = rt
        self._worker = str(os.getpid())

    async def run(
        self,
        context: Context,
        method: Method,
        work: Callable[[Call], Awaitable[T]],
        *,
        key_id: str = "",
    ) -> T:
        """``work`` as ``method`` through the pipeline; a KmsError ends the call as its status."""
        facts = transport(context)
        rpc = method.grpc or method.name
        try:
            result = await pipeline.run(self._rt, method, facts, work, key_id=key_id)
        except KmsError as exc:
            await abort_with(context, exc, facts.request_id, rpc)
        except Exception:
            await abort_internal(context, facts.request_id, rpc)
        context.set_trailing_metadata(
            (("x-request-id", facts.request_id), ("x-kms-worker", self._worker))
        )
        return result


def enum_value(field: str, enum_type: type[E], value: int) -> E:
    """A proto enum value the domain knows; else REST's message for an unknown name."""
    try:
        return enum_type(value)
    except ValueError:
        names = ", ".join(m.name for m in enum_type)
        raise FieldError(field, f"must be one of {names}") from None


def _duration(field: str, value: duration_pb2.Duration, present: bool) -> timedelta | None:
    """A Duration field; None when unset (REST: absent)."""
    if not present:
        return None
    if value.nanos % 1000:
        # Kept in microseconds, as REST: a finer duration is refused, never silently cut.
        raise FieldError(field, "must not be finer than a microsecond")
    return timedelta(seconds=value.seconds, microseconds=value.nanos // 1000)


class SymmetricCryptoServicer(crypto_grpc.SymmetricCryptoServiceServicer, Calls):
    """``yandex.cloud.kms.v1.SymmetricCryptoService``."""

    async def Encrypt(
        self, request: crypto_pb2.SymmetricEncryptRequest, context: Context
    ) -> crypto_pb2.SymmetricEncryptResponse:
        """Encrypt."""
        r = handlers.EncryptRequest(
            request.key_id, request.version_id, request.aad_context, request.plaintext
        )

        async def work(call: Call) -> crypto_pb2.SymmetricEncryptResponse:
            result = await handlers.encrypt(call, r)
            return crypto_pb2.SymmetricEncryptResponse(
                key_id=result.key_id, version_id=result.version_id, ciphertext=result.ciphertext
            )

        return await self.run(context, methods.ENCRYPT, work, key_id=request.key_id[:MAX_ID])

    async def Decrypt(
        self, request: crypto_pb2.SymmetricDecryptRequest, context: Context
    ) -> crypto_pb2.SymmetricDecryptResponse:
        """Decrypt."""
        r = handlers.DecryptRequest(request.key_id, request.aad_context, request.ciphertext)

        async def work(call: Call) -> crypto_pb2.SymmetricDecryptResponse:
            result = await handlers.decrypt(call, r)
            return crypto_pb2.SymmetricDecryptResponse(
                key_id=result.key_id, version_id=result.version_id, plaintext=result.plaintext
            )

        return await self.run(context, methods.DECRYPT, work, key_id=request.key_id[:MAX_ID])

    async def ReEncrypt(
        self, request: crypto_pb2.SymmetricReEncryptRequest, context: Context
    ) -> crypto_pb2.SymmetricReEncryptResponse:
        """ReEncrypt."""
        r = handlers.ReEncryptRequest(
            request.key_id,
            request.version_id,
            request.aad_context,
            request.source_key_id,
            request.source_aad_context,
            request.ciphertext,
        )

        async def work(call: Call) -> crypto_pb2.SymmetricReEncryptResponse:
            result = await handlers.re_encrypt(call, r)
            return crypto_pb2.SymmetricReEncryptResponse(
                key_id=result.key_id,
                version_id=result.version_id,
                source_key_id=result.source_key_id,
                source_version_id=result.source_version_id,
                ciphertext=result.ciphertext,
            )

        return await self.run(context, methods.RE_ENCRYPT, work, key_id=request.key_id[:MAX_ID])

    async def GenerateDataKey(
        self, request: crypto_pb2.GenerateDataKeyRequest, context: Context
    ) -> crypto_pb2.GenerateDataKeyResponse:
        """GenerateDataKey."""

        async def work(call: Call) -> crypto_pb2.GenerateDataKeyResponse:
            r = handlers.GenerateDataKeyRequest(
                request.key_id,
                request.version_id,
                request.aad_context,
                enum_value("dataKeySpec", Algorithm, request.data_key_spec),
                request.skip_plaintext,
            )
            result = await handlers.generate_data_key(call, r)
            return crypto_pb2.GenerateDataKeyResponse(
                key_id=result.key_id,
                version_id=result.version_id,
                data_key_plaintext=result.plaintext or b"",
                data_key_ciphertext=result.ciphertext,
            )

        return await self.run(
            context, methods.GENERATE_DATA_KEY, work, key_id=request.key_id[:MAX_ID]
        )


def _binding(field: str, b: access_pb2.AccessBinding) -> Binding:
    if not b.HasField("subject"):
        raise FieldError(f"{field}.subject", "is required")
    return Binding(b.role_id, b.subject.type, b.subject.id)


def _action(field: str, value: int) -> str:
    if value == access_pb2.ACCESS_BINDING_ACTION_UNSPECIFIED:
        raise FieldError(field, "is required")
    try:
        return str(access_pb2.AccessBindingAction.Name(value))
    except ValueError:
        return str(value)  # the handler refuses it with REST's message


def read_bindings(request: access_pb2.SetAccessBindingsRequest) -> list[Binding]:
    """SetAccessBindings' bindings, as the handlers take them (every key service)."""
    return [_binding(f"accessBindings[{i}]", b) for i, b in enumerate(request.access_bindings)]


def read_deltas(request: access_pb2.UpdateAccessBindingsRequest) -> list[tuple[str, Binding]]:
    """UpdateAccessBindings' deltas, as the handlers take them (every key service)."""
    deltas = []
    for i, d in enumerate(request.access_binding_deltas):
        field = f"accessBindingDeltas[{i}]"
        action = _action(f"{field}.action", d.action)
        if not d.HasField("access_binding"):
            raise FieldError(f"{field}.accessBinding", "is required")
        deltas.append((action, _binding(f"{field}.accessBinding", d.access_binding)))
    return deltas


def snake_paths(camel_paths: Iterable[str]) -> dict[str, str]:
    """proto FieldMask paths (snake_case) -> the handlers' camelCase update paths."""
    return {"".join("_" + c.lower() if c.isupper() else c for c in n): n for n in camel_paths}


def _update_path(path: str) -> str:
    """A FieldMask path as the handlers name it (camelCase): proto paths are snake_case."""
    return _SNAKE_PATHS.get(path, path)


_SNAKE_PATHS = snake_paths(handlers.UPDATE_PATHS)


class SymmetricKeyServicer(keys_grpc.SymmetricKeyServiceServicer, Calls):
    """``yandex.cloud.kms.v1.SymmetricKeyService`` (14 RPCs)."""

    async def Create(
        self, request: keys_pb2.CreateSymmetricKeyRequest, context: Context
    ) -> operation_pb2.Operation:
        """Create: a done Operation whose response is the key."""

        async def work(call: Call) -> operation_pb2.Operation:
            r = handlers.CreateKeyRequest(
                folder_id=request.folder_id,
                name=request.name,
                description=request.description,
                labels=dict(request.labels),
                default_algorithm=enum_value(
                    "defaultAlgorithm", Algorithm, request.default_algorithm
                ),
                rotation_period=_duration(
                    "rotationPeriod",
                    request.rotation_period,
                    request.HasField("rotation_period"),
                ),
                deletion_protection=request.deletion_protection,
            )
            return render.operation(await handlers.create_key(call, r))

        return await self.run(context, methods.CREATE_KEY, work)

    async def Get(
        self, request: keys_pb2.GetSymmetricKeyRequest, context: Context
    ) -> symmetric_key_pb2.SymmetricKey:
        """Get."""

        async def work(call: Call) -> symmetric_key_pb2.SymmetricKey:
            return render.key(await handlers.get_key(call, handlers.KeyRequest(request.key_id)))

        return await self.run(context, methods.GET_KEY, work, key_id=request.key_id[:MAX_ID])

    async def List(
        self, request: keys_pb2.ListSymmetricKeysRequest, context: Context
    ) -> keys_pb2.ListSymmetricKeysResponse:
        """List a folder's keys."""

        async def work(call: Call) -> keys_pb2.ListSymmetricKeysResponse:
            r = handlers.ListKeysRequest(request.folder_id, request.page_size, request.page_token)
            page = await handlers.list_keys(call, r)
            return keys_pb2.ListSymmetricKeysResponse(
                keys=[render.key(k) for k in page.items], next_page_token=page.next_page_token
            )

        return await self.run(context, methods.LIST_KEYS, work)

    async def ListVersions(
        self, request: keys_pb2.ListSymmetricKeyVersionsRequest, context: Context
    ) -> keys_pb2.ListSymmetricKeyVersionsResponse:
        """ListVersions."""

        async def work(call: Call) -> keys_pb2.ListSymmetricKeyVersionsResponse:
            r = handlers.ListKeyItemsRequest(request.key_id, request.page_size, request.page_token)
            page = await handlers.list_versions(call, r)
            return keys_pb2.ListSymmetricKeyVersionsResponse(
                key_versions=[render.version(v) for v in page.items],
                next_page_token=page.next_page_token,
            )

        return await self.run(context, methods.LIST_VERSIONS, work, key_id=request.key_id[:MAX_ID])

    async def ListOperations(
        self, request: keys_pb2.ListSymmetricKeyOperationsRequest, context: Context
    ) -> keys_pb2.ListSymmetricKeyOperationsResponse:
        """ListOperations."""

        async def work(call: Call) -> keys_pb2.ListSymmetricKeyOperationsResponse:
            r = handlers.ListKeyItemsRequest(request.key_id, request.page_size, request.page_token)
            page = await handlers.list_operations(call, r)
            return keys_pb2.ListSymmetricKeyOperationsResponse(
                operations=[render.operation(op) for op in page.items],
                next_page_token=page.next_page_token,
            )

        return await self.run(
            context, methods.LIST_OPERATIONS, work, key_id=request.key_id[:MAX_ID]
        )

    async def Update(
        self, request: keys_pb2.UpdateSymmetricKeyRequest, context: Context
    ) -> operation_pb2.Operation:
        """Update: only the fields in update_mask change; named but unset fields reset."""

        async def work(call: Call) -> operation_pb2.Operation:
            values = KeyUpdate(
                name=request.name,
                description=request.description,
                status=enum_value("status", KeyStatus, request.status),
                labels=dict(request.labels),
                default_algorithm=enum_value(
                    "defaultAlgorithm", Algorithm, request.default_algorithm
                ),
                rotation_period=_duration(
                    "rotationPeriod",
                    request.rotation_period,
                    request.HasField("rotation_period"),
                ),
                deletion_protection=request.deletion_protection,
            )
            mask = tuple(_update_path(p) for p in request.update_mask.paths)
            r = handlers.UpdateKeyRequest(request.key_id, mask, values)
            return render.operation(await handlers.update_key(call, r))

        return await self.run(context, methods.UPDATE_KEY, work, key_id=request.key_id[:MAX_ID])

    async def Delete(
        self, request: keys_pb2.DeleteSymmetricKeyRequest, context: Context
    ) -> operation_pb2.Operation:
        """Delete."""

        async def work(call: Call) -> operation_pb2.Operation:
            op = await handlers.delete_key(call, handlers.KeyRequest(request.key_id))
            return render.operation(op)

        return await self.run(context, methods.DELETE_KEY, work, key_id=request.key_id[:MAX_ID])

    async def Rotate(
        self, request: keys_pb2.RotateSymmetricKeyRequest, context: Context
    ) -> operation_pb2.Operation:
        """Rotate: a new primary version."""

        async def work(call: Call) -> operation_pb2.Operation:
            op = await handlers.rotate_key(call, handlers.KeyRequest(request.key_id))
            return render.operation(op)

        return await self.run(context, methods.ROTATE_KEY, work, key_id=request.key_id[:MAX_ID])

    async def SetPrimaryVersion(
        self, request: keys_pb2.SetPrimarySymmetricKeyVersionRequest, context: Context
    ) -> operation_pb2.Operation:
        """SetPrimaryVersion."""

        async def work(call: Call) -> operation_pb2.Operation:
            r = handlers.VersionRequest(request.key_id, request.version_id)
            return render.operation(await handlers.set_primary_version(call, r))

        return await self.run(
            context, methods.SET_PRIMARY_VERSION, work, key_id=request.key_id[:MAX_ID]
        )

    async def ScheduleVersionDestruction(
        self, request: keys_pb2.ScheduleSymmetricKeyVersionDestructionRequest, context: Context
    ) -> operation_pb2.Operation:
        """ScheduleVersionDestruction; no pending_period means 7 days."""

        async def work(call: Call) -> operation_pb2.Operation:
            r = handlers.ScheduleDestructionRequest(
                request.key_id,
                request.version_id,
                _duration(
                    "pendingPeriod", request.pending_period, request.HasField("pending_period")
                ),
            )
            return render.operation(await handlers.schedule_version_destruction(call, r))

        return await self.run(
            context, methods.SCHEDULE_VERSION_DESTRUCTION, work, key_id=request.key_id[:MAX_ID]
        )

    async def CancelVersionDestruction(
        self, request: keys_pb2.CancelSymmetricKeyVersionDestructionRequest, context: Context
    ) -> operation_pb2.Operation:
        """CancelVersionDestruction."""

        async def work(call: Call) -> operation_pb2.Operation:
            r = handlers.VersionRequest(request.key_id, request.version_id)
            return render.operation(await handlers.cancel_version_destruction(call, r))

        return await self.run(
            context, methods.CANCEL_VERSION_DESTRUCTION, work, key_id=request.key_id[:MAX_ID]
        )

    async def ListAccessBindings(
        self, request: access_pb2.ListAccessBindingsRequest, context: Context
    ) -> access_pb2.ListAccessBindingsResponse:
        """ListAccessBindings of a key."""

        async def work(call: Call) -> access_pb2.ListAccessBindingsResponse:
            resource = handlers.key_resource(request.resource_id)
            r = handlers.ListBindingsRequest(resource, request.page_size, request.page_token)
            page = await handlers.list_access_bindings(call, r)
            return access_pb2.ListAccessBindingsResponse(
                access_bindings=[render.binding(b) for b in page.bindings],
                next_page_token=page.next_page_token,
            )

        return await self.run(
            context,
            methods.KEY_LIST_ACCESS_BINDINGS,
            work,
            key_id=request.resource_id[:MAX_RESOURCE_ID],
        )

    async def SetAccessBindings(
        self, request: access_pb2.SetAccessBindingsRequest, context: Context
    ) -> operation_pb2.Operation:
        """SetAccessBindings of a key."""

        async def work(call: Call) -> operation_pb2.Operation:
            resource: Resource = handlers.key_resource(request.resource_id)
            r = handlers.SetBindingsRequest(resource, read_bindings(request))
            return render.operation(await handlers.set_access_bindings(call, r))

        return await self.run(
            context,
            methods.KEY_SET_ACCESS_BINDINGS,
            work,
            key_id=request.resource_id[:MAX_RESOURCE_ID],
        )

    async def UpdateAccessBindings(
        self, request: access_pb2.UpdateAccessBindingsRequest, context: Context
    ) -> operation_pb2.Operation:
        """UpdateAccessBindings of a key."""

        async def work(call: Call) -> operation_pb2.Operation:
            resource = handlers.key_resource(request.resource_id)
            r = handlers.UpdateBindingsRequest(resource, read_deltas(request))
            return render.operation(await handlers.update_access_bindings(call, r))

        return await self.run(
            context,
            methods.KEY_UPDATE_ACCESS_BINDINGS,
            work,
            key_id=request.resource_id[:MAX_RESOURCE_ID],
        )


class OperationServicer(operation_service_pb2_grpc.OperationServiceServicer, Calls):
    """``yandex.cloud.operation.OperationService``: every operation of kms-hsm is done."""

    async def Get(
        self, request: operation_service_pb2.GetOperationRequest, context: Context
    ) -> operation_pb2.Operation:
        """Get: the SDK polls it even for a done operation."""

        async def work(call: Call) -> operation_pb2.Operation:
            r = handlers.OperationRequest(request.operation_id)
            return render.operation(await handlers.get_operation(call, r))

        return await self.run(context, methods.GET_OPERATION, work)

    async def Cancel(
        self, request: operation_service_pb2.CancelOperationRequest, context: Context
    ) -> operation_pb2.Operation:
        """Cancel: who may see the operation learns it is done; others, as Get."""

        async def work(call: Call) -> operation_pb2.Operation:
            await handlers.get_operation(call, handlers.OperationRequest(request.operation_id))
            raise FailedPrecondition(f"operation {request.operation_id} is already done")

        return await self.run(context, methods.CANCEL_OPERATION, work)


# The ids the SDKs route KMS to: the Python SDK sends every kms module but symmetric crypto
# to "kms" (the asymmetric crypto services too), the Go SDK sends the crypto services
# (asymmetric ones included) to "kms-crypto"; IamTokenService is "iam". One address serves all.
ENDPOINT_IDS = ("kms", "kms-crypto", "operation", "iam", "endpoint")
_WILDCARD_HOSTS = ("", "0.0.0.0", "::", "[::]")


class ApiEndpointServicer(api_endpoint_service_pb2_grpc.ApiEndpointServiceServicer):
    """``yandex.cloud.endpoint.ApiEndpointService``: one address for every id (discovery).

    No credentials (the SDK sends none here), no audit: it tells nothing but this address.
    The address is ``advertise`` when set; else the name the client asked for in TLS SNI,
    with this server's port; else ``host:port``, with "localhost" for a wildcard host
    (grpcio does not tell a server the address a client connected to).
    """

    def __init__(self, host: str, port: int, advertise: str | None, tls: bool) -> None:
        self.host = "localhost" if host in _WILDCARD_HOSTS else host
        self.port = port  # set again once bound (port 0 picks one)
        self.advertise = advertise
        self.tls = tls

    def address(self, context: Context) -> str:
        """The address to answer for a client on ``context``."""
        if self.advertise:
            return self.advertise
        host = self.host
        if self.tls:
            names = (context.auth_context() or {}).get("ssl_requested_server_name") or ()
            sni = names[0].decode("ascii", "replace") if names else ""
            if sni and all(c.isalnum() or c in ".-" for c in sni):
                host = sni
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"{host}:{self.port}"

    async def Get(
        self, request: api_endpoint_service_pb2.GetApiEndpointRequest, context: Context
    ) -> api_endpoint_pb2.ApiEndpoint:
        """The address of one service id; NOT_FOUND for ids kms-hsm does not serve."""
        if request.api_endpoint_id not in ENDPOINT_IDS:
            rid = transport(context).request_id
            await abort(context, 5, f"api endpoint {request.api_endpoint_id[:64]!r} not found", rid)
        return api_endpoint_pb2.ApiEndpoint(
            id=request.api_endpoint_id, address=self.address(context)
        )

    async def List(
        self, request: api_endpoint_service_pb2.ListApiEndpointsRequest, context: Context
    ) -> api_endpoint_service_pb2.ListApiEndpointsResponse:
        """Every id kms-hsm serves (one page: there are five)."""
        address = self.address(context)
        return api_endpoint_service_pb2.ListApiEndpointsResponse(
            endpoints=[api_endpoint_pb2.ApiEndpoint(id=i, address=address) for i in ENDPOINT_IDS]
        )
