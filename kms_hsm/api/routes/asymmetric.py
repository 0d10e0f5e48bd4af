"""Asymmetric keys over REST: both families' crypto and key services.

``/kms/v1/asymmetricSignatureKeys`` and ``/kms/v1/asymmetricEncryptionKeys`` as Yandex's
REST reference has them. What each method does is ``service.asymmetric_handlers``'; here the
JSON is read and written. Sign, SignHash and Decrypt are answered by the data plane's fast
path (``api/app.py``) as the SymmetricCrypto verbs are: each takes the path's key id and the
request and returns the answer's message. The two key services differ only in their
``Family`` (methods, algorithm field, path), so their routes are made by one function, once
per family.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request, Response

from kms_hsm.api import wire
from kms_hsm.api.calls import handle, run
from kms_hsm.api.deps import json_body
from kms_hsm.api.rest import Routes
from kms_hsm.api.routes.access import read_bindings, read_deltas, render_bindings
from kms_hsm.api.routes.keys import operation_json
from kms_hsm.domain.asymmetric import AsymmetricKeyStatus
from kms_hsm.domain.validation import MAX_ID, MAX_RESOURCE_ID
from kms_hsm.service import asymmetric_handlers as ah
from kms_hsm.service import handlers, methods
from kms_hsm.service.key_pairs import KeyPairSpec, KeyPairUpdate
from kms_hsm.service.keys import Page
from kms_hsm.service.pipeline import Call

SIGNATURE_KEYS = "/kms/v1/asymmetricSignatureKeys"
ENCRYPTION_KEYS = "/kms/v1/asymmetricEncryptionKeys"
_PAGING = ("pageSize", "pageToken")


def _result_json(key_id: str, name: str, value: bytes) -> dict[str, Any]:
    return wire.compact({"keyId": key_id, name: wire.b64(value)})


def _public_key_json(result: ah.PublicKeyResult) -> dict[str, Any]:
    return {"keyId": result.key_id, "publicKey": result.public_key}


# --- AsymmetricSignatureCryptoService ---

signature_crypto = Routes("AsymmetricSignatureCrypto")


@signature_crypto.bind(
    methods.SIGN,
    "post",
    SIGNATURE_KEYS + "/{keyId}:sign",
    summary="Sign a message",
    served=False,
)
async def sign(keyId: str, request: Request) -> dict[str, Any]:
    """Sign: the message is hashed as the key's algorithm says."""

    async def work(call: Call) -> dict[str, Any]:
        f = wire.Fields(await json_body(request), ("keyId", "message"))
        result = await ah.sign(call, ah.SignRequest(keyId, f.bytes_("message")))
        return _result_json(result.key_id, "signature", result.signature)

    return await run(request, methods.SIGN, work, key_id=keyId[:MAX_ID])


@signature_crypto.bind(
    methods.SIGN_HASH,
    "post",
    SIGNATURE_KEYS + "/{keyId}:signHash",
    summary="Sign a digest",
    served=False,
)
async def sign_hash(keyId: str, request: Request) -> dict[str, Any]:
    """SignHash: a digest of exactly the algorithm's hash length."""

    async def work(call: Call) -> dict[str, Any]:
        f = wire.Fields(await json_body(request), ("keyId", "hash"))
        result = await ah.sign_hash(call, ah.SignHashRequest(keyId, f.bytes_("hash")))
        return _result_json(result.key_id, "signature", result.signature)

    return await run(request, methods.SIGN_HASH, work, key_id=keyId[:MAX_ID])


@signature_crypto.bind(
    methods.SIGNATURE_PUBLIC_KEY,
    "get",
    SIGNATURE_KEYS + "/{keyId}/publicKey",
    summary="Get a signature key's public key (PEM)",
)
async def signature_public_key(keyId: str, request: Request) -> Response:
    """GetPublicKey: PEM SubjectPublicKeyInfo."""

    async def work(call: Call) -> dict[str, Any]:
        result = await ah.signature_public_key(call, ah.PublicKeyRequest(keyId))
        return _public_key_json(result)

    return await handle(request, methods.SIGNATURE_PUBLIC_KEY, work, key_id=keyId[:MAX_ID])


# --- AsymmetricEncryptionCryptoService ---

encryption_crypto = Routes("AsymmetricEncryptionCrypto")


@encryption_crypto.bind(
    methods.ASYMMETRIC_DECRYPT,
    "post",
    ENCRYPTION_KEYS + "/{keyId}:decrypt",
    summary="Decrypt an RSA-OAEP ciphertext",
    served=False,
)
async def decrypt(keyId: str, request: Request) -> dict[str, Any]:
    """Decrypt: every way a ciphertext can be wrong gets the same answer."""

    async def work(call: Call) -> dict[str, Any]:
        f = wire.Fields(await json_body(request), ("keyId", "ciphertext"))
        r = ah.AsymmetricDecryptRequest(keyId, f.bytes_("ciphertext"))
        result = await ah.decrypt(call, r)
        return _result_json(result.key_id, "plaintext", result.plaintext)

    return await run(request, methods.ASYMMETRIC_DECRYPT, work, key_id=keyId[:MAX_ID])


@encryption_crypto.bind(
    methods.ENCRYPTION_PUBLIC_KEY,
    "get",
    ENCRYPTION_KEYS + "/{keyId}/publicKey",
    summary="Get an encryption key's public key (PEM)",
)
async def encryption_public_key(keyId: str, request: Request) -> Response:
    """GetPublicKey: PEM SubjectPublicKeyInfo, for clients that encrypt locally."""

    async def work(call: Call) -> dict[str, Any]:
        result = await ah.encryption_public_key(call, ah.PublicKeyRequest(keyId))
        return _public_key_json(result)

    return await handle(request, methods.ENCRYPTION_PUBLIC_KEY, work, key_id=keyId[:MAX_ID])


# --- AsymmetricSignatureKeyService / AsymmetricEncryptionKeyService ---


def _page(page: Page, name: str, render: Any) -> dict[str, Any]:
    return wire.compact(
        {name: [render(item) for item in page.items], "nextPageToken": page.next_page_token}
    )


def _key_routes(family: ah.Family, base: str, noun: str) -> Routes:
    """The nine routes of one family's key service under ``base``."""
    m = family.methods
    routes = Routes(family.family.service)
    key_path = base + "/{keyId}"

    @routes.bind(m.create, "post", base, summary=f"Create an {noun}")
    async def create_key(request: Request) -> Response:
        """Create: the pair is made in the token; a done Operation whose response is the key."""

        async def work(call: Call) -> dict[str, Any]:
            f = wire.Fields(
                await json_body(request),
                (
                    "folderId",
                    "name",
                    "description",
                    "labels",
                    family.algorithm_field,
                    "deletionProtection",
                ),
            )
            spec = KeyPairSpec(
                folder_id=f.string("folderId"),
                name=f.string("name"),
                description=f.string("description"),
                labels=f.labels("labels"),
                algorithm=int(f.enum(family.algorithm_field, family.algorithms)),
                deletion_protection=f.boolean("deletionProtection"),
            )
            op = await ah.create_key(call, ah.CreateKeyPairRequest(family, spec))
            return operation_json(op)

        return await handle(request, m.create, work)

    @routes.bind(
        m.list,
        "get",
        base,
        summary=f"List the {noun}s of a folder",
        query=("folderId", *_PAGING),
    )
    async def list_keys(request: Request) -> Response:
        """List, oldest first, paged."""

        async def work(call: Call) -> dict[str, Any]:
            q = wire.Query(request.query_params, ("folderId", *_PAGING))
            r = ah.ListKeyPairsRequest(
                family, q.string("folderId"), q.integer("pageSize"), q.string("pageToken")
            )
            return _page(await ah.list_keys(call, r), "keys", wire.key_pair_json)

        return await handle(request, m.list, work)

    @routes.bind(
        m.list_operations,
        "get",
        key_path + "/operations",
        summary=f"List the operations on an {noun}",
        query=_PAGING,
    )
    async def list_operations(keyId: str, request: Request) -> Response:
        """ListOperations."""

        async def work(call: Call) -> dict[str, Any]:
            q = wire.Query(request.query_params, _PAGING)
            r = ah.ListKeyPairOperationsRequest(
                family, keyId, q.integer("pageSize"), q.string("pageToken")
            )
            return _page(await ah.list_operations(call, r), "operations", operation_json)

        return await handle(request, m.list_operations, work, key_id=keyId[:MAX_ID])

    # The access-binding verbs come before Get: "{keyId}" would also take "abc:listAccessBindings".
    @routes.bind(
        m.list_access_bindings,
        "get",
        base + "/{resourceId}:listAccessBindings",
        summary=f"List an {noun}'s bindings",
        query=_PAGING,
    )
    async def list_bindings(resourceId: str, request: Request) -> Response:
        """ListAccessBindings."""
        resource = handlers.key_resource(resourceId)

        async def work(call: Call) -> dict[str, Any]:
            q = wire.Query(request.query_params, _PAGING)
            r = handlers.ListBindingsRequest(resource, q.integer("pageSize"), q.string("pageToken"))
            return render_bindings(await ah.list_access_bindings(call, family, r))

        return await handle(
            request, m.list_access_bindings, work, key_id=resourceId[:MAX_RESOURCE_ID]
        )

    @routes.bind(
        m.set_access_bindings,
        "post",
        base + "/{resourceId}:setAccessBindings",
        summary=f"Replace an {noun}'s bindings",
    )
    async def set_bindings(resourceId: str, request: Request) -> Response:
        """SetAccessBindings."""
        resource = handlers.key_resource(resourceId)

        async def work(call: Call) -> dict[str, Any]:
            r = handlers.SetBindingsRequest(resource, read_bindings(await json_body(request)))
            return operation_json(await ah.set_access_bindings(call, family, r))

        return await handle(
            request, m.set_access_bindings, work, key_id=resourceId[:MAX_RESOURCE_ID]
        )

    @routes.bind(
        m.update_access_bindings,
        "post",
        base + "/{resourceId}:updateAccessBindings",
        summary=f"Add or remove an {noun}'s bindings",
    )
    async def update_bindings(resourceId: str, request: Request) -> Response:
        """UpdateAccessBindings."""
        resource = handlers.key_resource(resourceId)

        async def work(call: Call) -> dict[str, Any]:
            r = handlers.UpdateBindingsRequest(resource, read_deltas(await json_body(request)))
            return operation_json(await ah.update_access_bindings(call, family, r))

        return await handle(
            request, m.update_access_bindings, work, key_id=resourceId[:MAX_RESOURCE_ID]
        )

    @routes.bind(m.update, "patch", key_path, summary=f"Update an {noun}")
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
                    "deletionProtection",
                ),
            )
            values = KeyPairUpdate(
                name=f.string("name"),
                description=f.string("description"),
                status=f.enum("status", AsymmetricKeyStatus),
                labels=f.labels("labels"),
                deletion_protection=f.boolean("deletionProtection"),
            )
            # The proto3 JSON FieldMask: paths joined by commas.
            mask = tuple(p for p in f.string("updateMask").split(",") if p.strip())
            op = await ah.update_key(call, ah.UpdateKeyPairRequest(family, keyId, mask, values))
            return operation_json(op)

        return await handle(request, m.update, work, key_id=keyId[:MAX_ID])

    @routes.bind(m.delete, "delete", key_path, summary=f"Delete an {noun}")
    async def delete_key(keyId: str, request: Request) -> Response:
        """Delete: refused under deletionProtection; else the pair is destroyed in the token."""

        async def work(call: Call) -> dict[str, Any]:
            op = await ah.delete_key(call, ah.KeyPairRequest(family, keyId))
            return operation_json(op)

        return await handle(request, m.delete, work, key_id=keyId[:MAX_ID])

    @routes.bind(m.get, "get", key_path, summary=f"Get an {noun}")
    async def get_key(keyId: str, request: Request) -> Response:
        """Get."""

        async def work(call: Call) -> dict[str, Any]:
            return wire.key_pair_json(await ah.get_key(call, ah.KeyPairRequest(family, keyId)))

        return await handle(request, m.get, work, key_id=keyId[:MAX_ID])

    return routes


signature_keys = _key_routes(ah.SIGNATURE, SIGNATURE_KEYS, "asymmetric signature key")
encryption_keys = _key_routes(ah.ENCRYPTION, ENCRYPTION_KEYS, "asymmetric encryption key")

# In the order the app includes them and the document lists them.
ROUTES = (signature_crypto, signature_keys, encryption_crypto, encryption_keys)
