"""SymmetricKeyService and OperationService over REST: JSON in, ``service.handlers``, JSON out."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from fastapi import Request, Response

from kms_hsm.api import wire
from kms_hsm.api.calls import handle
from kms_hsm.api.deps import json_body
from kms_hsm.api.rest import Routes
from kms_hsm.domain.model import Algorithm, KeyStatus
from kms_hsm.domain.records import key_from_record, key_pair_from_record, version_from_record
from kms_hsm.domain.validation import MAX_ID
from kms_hsm.service import handlers, methods
from kms_hsm.service.keys import KeyUpdate, Page
from kms_hsm.service.pipeline import Call
from kms_hsm.store.repository import StoredOperation

_PAGING = ("pageSize", "pageToken")

routes = Routes("SymmetricKey")


def _render_key(record: dict[str, Any]) -> dict[str, Any]:
    return wire.key_json(key_from_record(record))


def _render_version(record: dict[str, Any]) -> dict[str, Any]:
    return wire.version_json(version_from_record(record))


def _render_key_pair(record: dict[str, Any]) -> dict[str, Any]:
    return wire.key_pair_json(key_pair_from_record(record))


def _render_empty(record: dict[str, Any]) -> dict[str, Any]:
    return {}


_RESOURCE_RENDERERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "yandex.cloud.kms.v1.SymmetricKey": _render_key,
    "yandex.cloud.kms.v1.SymmetricKeyVersion": _render_version,
    "yandex.cloud.kms.v1.asymmetricsignature.AsymmetricSignatureKey": _render_key_pair,
    "yandex.cloud.kms.v1.asymmetricencryption.AsymmetricEncryptionKey": _render_key_pair,
    "google.protobuf.Empty": _render_empty,
}


def _any(type_name: str, message: dict[str, Any]) -> dict[str, Any]:
    return {"@type": f"type.googleapis.com/{type_name}", **message}


def _metadata_value(name: str, value: Any) -> Any:
    if name.endswith("_at") and isinstance(value, str):
        return wire.timestamp(datetime.fromisoformat(value))
    return value


def operation_json(op: StoredOperation) -> dict[str, Any]:
    """``yandex.cloud.operation.Operation`` with metadata and response as ``Any``."""
    metadata = {
        wire.camel(k): _metadata_value(k, v)
        for k, v in handlers.operation_metadata(op).items()
        if v not in (None, "")
    }
    body: dict[str, Any] = {
        "id": op.id,
        "description": op.description,
        "createdAt": wire.timestamp(op.created_at),
        "createdBy": op.created_by,
        "modifiedAt": wire.timestamp(op.modified_at),
        "done": op.done,
        "metadata": _any(str(op.metadata.get("type", "google.protobuf.Empty")), metadata),
    }
    if op.error is not None:
        body["error"] = op.error
    elif op.response is not None:
        render = _RESOURCE_RENDERERS[op.response["type"]]
        body["response"] = _any(op.response["type"], render(op.response["value"]))
    return wire.compact(body)


def _page(page: Page, name: str, render: Callable[[Any], dict[str, Any]]) -> dict[str, Any]:
    return wire.compact(
        {name: [render(item) for item in page.items], "nextPageToken": page.next_page_token}
    )


def _paging(request: Request) -> tuple[int, str]:
    q = wire.Query(request.query_params, _PAGING)
    return q.integer("pageSize"), q.string("pageToken")


@routes.bind(methods.CREATE_KEY, "post", "/kms/v1/keys", summary="Create a symmetric key")
async def create_key(request: Request) -> Response:
    """Create: returns a done Operation whose response is the key."""

    async def work(call: Call) -> dict[str, Any]:
        f = wire.Fields(
            await json_body(request),
            (
                "folderId",
                "name",
                "description",
                "labels",
                "defaultAlgorithm",
                "rotationPeriod",
                "deletionProtection",
            ),
        )
        r = handlers.CreateKeyRequest(
            folder_id=f.string("folderId"),
            name=f.string("name"),
            description=f.string("description"),
            labels=f.labels("labels"),
            default_algorithm=f.enum("defaultAlgorithm", Algorithm),
            rotation_period=f.duration("rotationPeriod"),
            deletion_protection=f.boolean("deletionProtection"),
        )
        return operation_json(await handlers.create_key(call, r))

    return await handle(request, methods.CREATE_KEY, work)


@routes.bind(
    methods.LIST_KEYS,
    "get",
    "/kms/v1/keys",
    summary="List the symmetric keys of a folder",
    query=("folderId", "pageSize", "pageToken"),
)
async def list_keys(request: Request) -> Response:
    """List."""

    async def work(call: Call) -> dict[str, Any]:
        q = wire.Query(request.query_params, ("folderId", "pageSize", "pageToken"))
        r = handlers.ListKeysRequest(
            q.string("folderId"), q.integer("pageSize"), q.string("pageToken")
        )
        return _page(await handlers.list_keys(call, r), "keys", wire.key_json)

    return await handle(request, methods.LIST_KEYS, work)


@routes.bind(
    methods.ROTATE_KEY,
    "post",
    "/kms/v1/keys/{keyId}:rotate",
    summary="Rotate a key: a new primary version",
)
async def rotate(keyId: str, request: Request) -> Response:
    """Rotate (no body)."""

    async def work(call: Call) -> dict[str, Any]:
        return operation_json(await handlers.rotate_key(call, handlers.KeyRequest(keyId)))

    return await handle(request, methods.ROTATE_KEY, work, key_id=keyId[:MAX_ID])


async def _version_body(request: Request) -> str:
    return wire.Fields(await json_body(request), ("keyId", "versionId")).string("versionId")


@routes.bind(
    methods.SET_PRIMARY_VERSION,
    "post",
    "/kms/v1/keys/{keyId}:setPrimaryVersion",
    summary="Make a version primary",
)
async def set_primary_version(keyId: str, request: Request) -> Response:
    """SetPrimaryVersion."""

    async def work(call: Call) -> dict[str, Any]:
        r = handlers.VersionRequest(keyId, await _version_body(request))
        return operation_json(await handlers.set_primary_version(call, r))

    return await handle(request, methods.SET_PRIMARY_VERSION, work, key_id=keyId[:MAX_ID])


@routes.bind(
    methods.SCHEDULE_VERSION_DESTRUCTION,
    "post",
    "/kms/v1/keys/{keyId}:scheduleVersionDestruction",
    summary="Schedule a version for destruction",
)
async def schedule_version_destruction(keyId: str, request: Request) -> Response:
    """ScheduleVersionDestruction; pendingPeriod defaults to 7 days."""

    async def work(call: Call) -> dict[str, Any]:
        f = wire.Fields(await json_body(request), ("keyId", "versionId", "pendingPeriod"))
        r = handlers.ScheduleDestructionRequest(
            keyId, f.string("versionId"), f.duration("pendingPeriod")
        )
        return operation_json(await handlers.schedule_version_destruction(call, r))

    return await handle(request, methods.SCHEDULE_VERSION_DESTRUCTION, work, key_id=keyId[:MAX_ID])


@routes.bind(
    methods.CANCEL_VERSION_DESTRUCTION,
    "post",
    "/kms/v1/keys/{keyId}:cancelVersionDestruction",
    summary="Cancel a scheduled version destruction",
)
async def cancel_version_destruction(keyId: str, request: Request) -> Response:
    """CancelVersionDestruction."""

    async def work(call: Call) -> dict[str, Any]:
        r = handlers.VersionRequest(keyId, await _version_body(request))
        return operation_json(await handlers.cancel_version_destruction(call, r))

    return await handle(request, methods.CANCEL_VERSION_DESTRUCTION, work, key_id=keyId[:MAX_ID])


@routes.bind(
    methods.LIST_VERSIONS,
    "get",
    "/kms/v1/keys/{keyId}/versions",
    summary="List the versions of a key",
    query=_PAGING,
)
async def list_versions(keyId: str, request: Request) -> Response:
    """ListVersions."""

    async def work(call: Call) -> dict[str, Any]:
        r = handlers.ListKeyItemsRequest(keyId, *_paging(request))
        return _page(await handlers.list_versions(call, r), "keyVersions", wire.version_json)

    return await handle(request, methods.LIST_VERSIONS, work, key_id=keyId[:MAX_ID])


@routes.bind(
    methods.LIST_OPERATIONS,
    "get",
    "/kms/v1/keys/{keyId}/operations",
    summary="List the operations on a key",
    query=_PAGING,
)
async def list_operations(keyId: str, request: Request) -> Response:
    """ListOperations."""

    async def work(call: Call) -> dict[str, Any]:
        r = handlers.ListKeyItemsRequest(keyId, *_paging(request))
        return _page(await handlers.list_operations(call, r), "operations", operation_json)

    return await handle(request, methods.LIST_OPERATIONS, work, key_id=keyId[:MAX_ID])


@routes.bind(methods.UPDATE_KEY, "patch", "/kms/v1/keys/{keyId}", summary="Update a symmetric key")
async def update_key(keyId: str, request: Request) -> Response:
    """Update: only the fields in updateMask change; listed but absent fields reset."""

    async def work(call: Call) -> dict[str, Any]:
        f = wire.Fields(
            await json_body(request),
            (
                "keyId",
                "updateMask",
                "name",
                "description",
                "status",
                "labels",
                "defaultAlgorithm",
                "rotationPeriod",
                "deletionProtection",
            ),
        )
        values = KeyUpdate(
            name=f.string("name"),
            description=f.string("description"),
            status=f.enum("status", KeyStatus),
            labels=f.labels("labels"),
            default_algorithm=f.enum("defaultAlgorithm", Algorithm),
            rotation_period=f.duration("rotationPeriod"),
            deletion_protection=f.boolean("deletionProtection"),
        )
        # The proto3 JSON FieldMask: paths joined by commas.
        mask = tuple(p for p in f.string("updateMask").split(",") if p.strip())
        r = handlers.UpdateKeyRequest(keyId, mask, values)
        return operation_json(await handlers.update_key(call, r))

    return await handle(request, methods.UPDATE_KEY, work, key_id=keyId[:MAX_ID])


@routes.bind(methods.DELETE_KEY, "delete", "/kms/v1/keys/{keyId}", summary="Delete a symmetric key")
async def delete_key(keyId: str, request: Request) -> Response:
    """Delete: hidden at once, versions destroyed after 72 hours."""

    async def work(call: Call) -> dict[str, Any]:
        return operation_json(await handlers.delete_key(call, handlers.KeyRequest(keyId)))

    return await handle(request, methods.DELETE_KEY, work, key_id=keyId[:MAX_ID])


@routes.bind(methods.GET_KEY, "get", "/kms/v1/keys/{keyId}", summary="Get a symmetric key")
async def get_key(keyId: str, request: Request) -> Response:
    """Get."""

    async def work(call: Call) -> dict[str, Any]:
        return wire.key_json(await handlers.get_key(call, handlers.KeyRequest(keyId)))

    return await handle(request, methods.GET_KEY, work, key_id=keyId[:MAX_ID])


@routes.bind(methods.GET_OPERATION, "get", "/operations/{operationId}", summary="Get an operation")
async def get_operation(operationId: str, request: Request) -> Response:
    """OperationService.Get: allowed to whoever may view the operation's key or folder.

    An operation on no key (a folder's or the instance's access bindings) is also
    readable by its author, who may have given up their own role on the folder in it.
    """

    async def work(call: Call) -> dict[str, Any]:
        op = await handlers.get_operation(call, handlers.OperationRequest(operationId))
        return operation_json(op)

    return await handle(request, methods.GET_OPERATION, work)
