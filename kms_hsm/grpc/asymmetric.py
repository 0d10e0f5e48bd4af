"""The four asymmetric-key services over gRPC: proto in, ``service.asymmetric_handlers``
through the pipeline, proto out.

The two key services differ only in their messages and one field (``signature_algorithm`` |
``encryption_algorithm``): one base reads and renders both, each subclass names its family
and its generated messages. As in ``servicers``, everything that can refuse a request is
read inside the pipeline's work, so that a refusal is audited as it is over REST.
"""

from __future__ import annotations

from typing import Any, ClassVar

from google.protobuf import message
from yandex.cloud.access import access_pb2
from yandex.cloud.kms.v1.asymmetricencryption import (
    asymmetric_encryption_crypto_service_pb2 as enc_crypto_pb2,
)
from yandex.cloud.kms.v1.asymmetricencryption import (
    asymmetric_encryption_crypto_service_pb2_grpc as enc_crypto_grpc,
)
from yandex.cloud.kms.v1.asymmetricencryption import (
    asymmetric_encryption_key_service_pb2 as enc_keys_pb2,
)
from yandex.cloud.kms.v1.asymmetricencryption import (
    asymmetric_encryption_key_service_pb2_grpc as enc_keys_grpc,
)
from yandex.cloud.kms.v1.asymmetricsignature import (
    asymmetric_signature_crypto_service_pb2 as sig_crypto_pb2,
)
from yandex.cloud.kms.v1.asymmetricsignature import (
    asymmetric_signature_crypto_service_pb2_grpc as sig_crypto_grpc,
)
from yandex.cloud.kms.v1.asymmetricsignature import (
    asymmetric_signature_key_service_pb2 as sig_keys_pb2,
)
from yandex.cloud.kms.v1.asymmetricsignature import (
    asymmetric_signature_key_service_pb2_grpc as sig_keys_grpc,
)
from yandex.cloud.operation import operation_pb2

from kms_hsm.domain.asymmetric import AsymmetricKeyStatus
from kms_hsm.domain.validation import MAX_ID, MAX_RESOURCE_ID
from kms_hsm.grpc import render
from kms_hsm.grpc.servicers import (
    Calls,
    Context,
    enum_value,
    read_bindings,
    read_deltas,
    snake_paths,
)
from kms_hsm.service import asymmetric_handlers as ah
from kms_hsm.service import handlers, methods
from kms_hsm.service.key_pairs import KeyPairSpec, KeyPairUpdate
from kms_hsm.service.pipeline import Call

_SNAKE_PATHS = snake_paths(ah.UPDATE_PATHS)


def _update_mask(paths: Any) -> tuple[str, ...]:
    """A FieldMask's paths as the handlers name them (camelCase); unknown ones as sent."""
    return tuple(_SNAKE_PATHS.get(p, p) for p in paths)


# --- AsymmetricSignatureCryptoService / AsymmetricEncryptionCryptoService ---


class AsymmetricSignatureCryptoServicer(
    Calls, sig_crypto_grpc.AsymmetricSignatureCryptoServiceServicer
):
    """``yandex.cloud.kms.v1.asymmetricsignature.AsymmetricSignatureCryptoService``."""

    async def Sign(
        self, request: sig_crypto_pb2.AsymmetricSignRequest, context: Context
    ) -> sig_crypto_pb2.AsymmetricSignResponse:
        """Sign a message (hashed as the key's algorithm says)."""
        r = ah.SignRequest(request.key_id, request.message)

        async def work(call: Call) -> sig_crypto_pb2.AsymmetricSignResponse:
            result = await ah.sign(call, r)
            return sig_crypto_pb2.AsymmetricSignResponse(
                key_id=result.key_id, signature=result.signature
            )

        return await self.run(context, methods.SIGN, work, key_id=request.key_id[:MAX_ID])

    async def SignHash(
        self, request: sig_crypto_pb2.AsymmetricSignHashRequest, context: Context
    ) -> sig_crypto_pb2.AsymmetricSignHashResponse:
        """Sign a digest of the algorithm's length."""
        r = ah.SignHashRequest(request.key_id, request.hash)

        async def work(call: Call) -> sig_crypto_pb2.AsymmetricSignHashResponse:
            result = await ah.sign_hash(call, r)
            return sig_crypto_pb2.AsymmetricSignHashResponse(
                key_id=result.key_id, signature=result.signature
            )

        return await self.run(context, methods.SIGN_HASH, work, key_id=request.key_id[:MAX_ID])

    async def GetPublicKey(
        self, request: sig_crypto_pb2.AsymmetricGetPublicKeyRequest, context: Context
    ) -> sig_crypto_pb2.AsymmetricGetPublicKeyResponse:
        """The public key, PEM SubjectPublicKeyInfo."""
        r = ah.PublicKeyRequest(request.key_id)

        async def work(call: Call) -> sig_crypto_pb2.AsymmetricGetPublicKeyResponse:
            result = await ah.signature_public_key(call, r)
            return sig_crypto_pb2.AsymmetricGetPublicKeyResponse(
                key_id=result.key_id, public_key=result.public_key
            )

        return await self.run(
            context, methods.SIGNATURE_PUBLIC_KEY, work, key_id=request.key_id[:MAX_ID]
        )


class AsymmetricEncryptionCryptoServicer(
    Calls, enc_crypto_grpc.AsymmetricEncryptionCryptoServiceServicer
):
    """``yandex.cloud.kms.v1.asymmetricencryption.AsymmetricEncryptionCryptoService``."""

    async def Decrypt(
        self, request: enc_crypto_pb2.AsymmetricDecryptRequest, context: Context
    ) -> enc_crypto_pb2.AsymmetricDecryptResponse:
        """Decrypt an RSA-OAEP-SHA-256 ciphertext (one answer for every failure)."""
        r = ah.AsymmetricDecryptRequest(request.key_id, request.ciphertext)

        async def work(call: Call) -> enc_crypto_pb2.AsymmetricDecryptResponse:
            result = await ah.decrypt(call, r)
            return enc_crypto_pb2.AsymmetricDecryptResponse(
                key_id=result.key_id, plaintext=result.plaintext
            )

        return await self.run(
            context, methods.ASYMMETRIC_DECRYPT, work, key_id=request.key_id[:MAX_ID]
        )

    async def GetPublicKey(
        self, request: enc_crypto_pb2.AsymmetricGetPublicKeyRequest, context: Context
    ) -> enc_crypto_pb2.AsymmetricGetPublicKeyResponse:
        """The public key, PEM SubjectPublicKeyInfo."""
        r = ah.PublicKeyRequest(request.key_id)

        async def work(call: Call) -> enc_crypto_pb2.AsymmetricGetPublicKeyResponse:
            result = await ah.encryption_public_key(call, r)
            return enc_crypto_pb2.AsymmetricGetPublicKeyResponse(
                key_id=result.key_id, public_key=result.public_key
            )

        return await self.run(
            context, methods.ENCRYPTION_PUBLIC_KEY, work, key_id=request.key_id[:MAX_ID]
        )


# --- AsymmetricSignatureKeyService / AsymmetricEncryptionKeyService ---


class _KeyPairServicer(Calls):
    """The nine RPCs of one asymmetric key service; subclasses name the family's messages."""

    family: ClassVar[ah.Family]
    algorithm_field: ClassVar[str]  # the create request's enum field (proto name)
    list_response: ClassVar[type[message.Message]]
    operations_response: ClassVar[type[message.Message]]

    async def Create(self, request: Any, context: Context) -> operation_pb2.Operation:
        """Create: the pair is made in the token; a done Operation whose response is the key."""

        async def work(call: Call) -> operation_pb2.Operation:
            spec = KeyPairSpec(
                folder_id=request.folder_id,
                name=request.name,
                description=request.description,
                labels=dict(request.labels),
                # A number the family's enum lacks is refused as REST refuses an unknown name.
                algorithm=int(
                    enum_value(
                        self.family.algorithm_field,
                        self.family.algorithms,
                        getattr(request, self.algorithm_field),
                    )
                ),
                deletion_protection=request.deletion_protection,
            )
            r = ah.CreateKeyPairRequest(self.family, spec)
            return render.operation(await ah.create_key(call, r))

        return await self.run(context, self.family.methods.create, work)

    async def Get(self, request: Any, context: Context) -> message.Message:
        """Get."""

        async def work(call: Call) -> message.Message:
            key = await ah.get_key(call, ah.KeyPairRequest(self.family, request.key_id))
            return render.key_pair(key)

        return await self.run(
            context, self.family.methods.get, work, key_id=request.key_id[:MAX_ID]
        )

    async def List(self, request: Any, context: Context) -> message.Message:
        """List a folder's keys of the family."""

        async def work(call: Call) -> message.Message:
            r = ah.ListKeyPairsRequest(
                self.family, request.folder_id, request.page_size, request.page_token
            )
            page = await ah.list_keys(call, r)
            return self.list_response(
                keys=[render.key_pair(k) for k in page.items],
                next_page_token=page.next_page_token,
            )

        return await self.run(context, self.family.methods.list, work)

    async def Update(self, request: Any, context: Context) -> operation_pb2.Operation:
        """Update: only the fields in update_mask change; named but unset fields reset."""

        async def work(call: Call) -> operation_pb2.Operation:
            values = KeyPairUpdate(
                name=request.name,
                description=request.description,
                status=enum_value("status", AsymmetricKeyStatus, request.status),
                labels=dict(request.labels),
                deletion_protection=request.deletion_protection,
            )
            mask = _update_mask(request.update_mask.paths)
            r = ah.UpdateKeyPairRequest(self.family, request.key_id, mask, values)
            return render.operation(await ah.update_key(call, r))

        return await self.run(
            context, self.family.methods.update, work, key_id=request.key_id[:MAX_ID]
        )

    async def Delete(self, request: Any, context: Context) -> operation_pb2.Operation:
        """Delete: refused under deletion protection; else the pair is destroyed."""

        async def work(call: Call) -> operation_pb2.Operation:
            op = await ah.delete_key(call, ah.KeyPairRequest(self.family, request.key_id))
            return render.operation(op)

        return await self.run(
            context, self.family.methods.delete, work, key_id=request.key_id[:MAX_ID]
        )

    async def ListOperations(self, request: Any, context: Context) -> message.Message:
        """ListOperations."""

        async def work(call: Call) -> message.Message:
            r = ah.ListKeyPairOperationsRequest(
                self.family, request.key_id, request.page_size, request.page_token
            )
            page = await ah.list_operations(call, r)
            return self.operations_response(
                operations=[render.operation(op) for op in page.items],
                next_page_token=page.next_page_token,
            )

        return await self.run(
            context, self.family.methods.list_operations, work, key_id=request.key_id[:MAX_ID]
        )

    async def ListAccessBindings(
        self, request: access_pb2.ListAccessBindingsRequest, context: Context
    ) -> access_pb2.ListAccessBindingsResponse:
        """ListAccessBindings of a key of the family."""

        async def work(call: Call) -> access_pb2.ListAccessBindingsResponse:
            resource = handlers.key_resource(request.resource_id)
            r = handlers.ListBindingsRequest(resource, request.page_size, request.page_token)
            page = await ah.list_access_bindings(call, self.family, r)
            return access_pb2.ListAccessBindingsResponse(
                access_bindings=[render.binding(b) for b in page.bindings],
                next_page_token=page.next_page_token,
            )

        return await self.run(
            context,
            self.family.methods.list_access_bindings,
            work,
            key_id=request.resource_id[:MAX_RESOURCE_ID],
        )

    async def SetAccessBindings(
        self, request: access_pb2.SetAccessBindingsRequest, context: Context
    ) -> operation_pb2.Operation:
        """SetAccessBindings of a key of the family."""

        async def work(call: Call) -> operation_pb2.Operation:
            resource = handlers.key_resource(request.resource_id)
            r = handlers.SetBindingsRequest(resource, read_bindings(request))
            return render.operation(await ah.set_access_bindings(call, self.family, r))

        return await self.run(
            context,
            self.family.methods.set_access_bindings,
            work,
            key_id=request.resource_id[:MAX_RESOURCE_ID],
        )

    async def UpdateAccessBindings(
        self, request: access_pb2.UpdateAccessBindingsRequest, context: Context
    ) -> operation_pb2.Operation:
        """UpdateAccessBindings of a key of the family."""

        async def work(call: Call) -> operation_pb2.Operation:
            resource = handlers.key_resource(request.resource_id)
            r = handlers.UpdateBindingsRequest(resource, read_deltas(request))
            return render.operation(await ah.update_access_bindings(call, self.family, r))

        return await self.run(
            context,
            self.family.methods.update_access_bindings,
            work,
            key_id=request.resource_id[:MAX_RESOURCE_ID],
        )


class AsymmetricSignatureKeyServicer(
    _KeyPairServicer, sig_keys_grpc.AsymmetricSignatureKeyServiceServicer
):
    """``yandex.cloud.kms.v1.asymmetricsignature.AsymmetricSignatureKeyService``."""

    family = ah.SIGNATURE
    algorithm_field = "signature_algorithm"
    list_response = sig_keys_pb2.ListAsymmetricSignatureKeysResponse
    operations_response = sig_keys_pb2.ListAsymmetricSignatureKeyOperationsResponse


class AsymmetricEncryptionKeyServicer(
    _KeyPairServicer, enc_keys_grpc.AsymmetricEncryptionKeyServiceServicer
):
    """``yandex.cloud.kms.v1.asymmetricencryption.AsymmetricEncryptionKeyService``."""

    family = ah.ENCRYPTION
    algorithm_field = "encryption_algorithm"
    list_response = enc_keys_pb2.ListAsymmetricEncryptionKeysResponse
    operations_response = enc_keys_pb2.ListAsymmetricEncryptionKeyOperationsResponse
