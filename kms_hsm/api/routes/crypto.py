"""SymmetricCryptoService over REST: ``POST /kms/v1/keys/{keyId}:<verb>``.

Answered by the data plane's fast path (``api/app.py``) before FastAPI sees the request:
each handler takes the path's key id and the request and returns the answer's message.
What each method does is ``kms_hsm.service.handlers``'; here the JSON is read and written.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request

from kms_hsm.api import wire
from kms_hsm.api.calls import run
from kms_hsm.api.deps import json_body
from kms_hsm.api.rest import Routes
from kms_hsm.domain.model import Algorithm
from kms_hsm.domain.validation import MAX_ID
from kms_hsm.service import handlers, methods
from kms_hsm.service.pipeline import Call

routes = Routes("SymmetricCrypto")


@routes.bind(
    methods.ENCRYPT,
    "post",
    "/kms/v1/keys/{keyId}:encrypt",
    summary="Encrypt plaintext with a key version",
    served=False,
)
async def encrypt_message(keyId: str, request: Request) -> dict[str, Any]:
    """Encrypt."""

    async def work(call: Call) -> dict[str, Any]:
        f = wire.Fields(await json_body(request), ("keyId", "versionId", "aadContext", "plaintext"))
        result = await handlers.encrypt(
            call,
            handlers.EncryptRequest(
                keyId, f.string("versionId"), f.bytes_("aadContext"), f.bytes_("plaintext")
            ),
        )
        return {
            "keyId": result.key_id,
            "versionId": result.version_id,
            "ciphertext": wire.b64(result.ciphertext),
        }

    return await run(request, methods.ENCRYPT, work, key_id=keyId[:MAX_ID])


@routes.bind(
    methods.DECRYPT,
    "post",
    "/kms/v1/keys/{keyId}:decrypt",
    summary="Decrypt a ciphertext",
    served=False,
)
async def decrypt_message(keyId: str, request: Request) -> dict[str, Any]:
    """Decrypt."""

    async def work(call: Call) -> dict[str, Any]:
        f = wire.Fields(await json_body(request), ("keyId", "aadContext", "ciphertext"))
        result = await handlers.decrypt(
            call, handlers.DecryptRequest(keyId, f.bytes_("aadContext"), f.bytes_("ciphertext"))
        )
        return wire.compact(
            {
                "keyId": result.key_id,
                "versionId": result.version_id,
                "plaintext": wire.b64(result.plaintext),
            }
        )

    return await run(request, methods.DECRYPT, work, key_id=keyId[:MAX_ID])


@routes.bind(
    methods.RE_ENCRYPT,
    "post",
    "/kms/v1/keys/{keyId}:reEncrypt",
    summary="Re-encrypt under another key or version",
    served=False,
)
async def re_encrypt_message(keyId: str, request: Request) -> dict[str, Any]:
    """ReEncrypt: decrypt permission on the source key, encrypt permission on the target."""

    async def work(call: Call) -> dict[str, Any]:
        f = wire.Fields(
            await json_body(request),
            ("keyId", "versionId", "aadContext", "sourceKeyId", "sourceAadContext", "ciphertext"),
        )
        result = await handlers.re_encrypt(
            call,
            handlers.ReEncryptRequest(
                keyId,
                f.string("versionId"),
                f.bytes_("aadContext"),
                f.string("sourceKeyId"),
                f.bytes_("sourceAadContext"),
                f.bytes_("ciphertext"),
            ),
        )
        return {
            "keyId": result.key_id,
            "versionId": result.version_id,
            "sourceKeyId": result.source_key_id,
            "sourceVersionId": result.source_version_id,
            "ciphertext": wire.b64(result.ciphertext),
        }

    return await run(request, methods.RE_ENCRYPT, work, key_id=keyId[:MAX_ID])


@routes.bind(
    methods.GENERATE_DATA_KEY,
    "post",
    "/kms/v1/keys/{keyId}:generateDataKey",
    summary="Generate a wrapped data key",
    served=False,
)
async def generate_data_key_message(keyId: str, request: Request) -> dict[str, Any]:
    """GenerateDataKey; dataKeySpec SYMMETRIC_ALGORITHM_UNSPECIFIED means AES_256."""

    async def work(call: Call) -> dict[str, Any]:
        f = wire.Fields(
            await json_body(request),
            ("keyId", "versionId", "aadContext", "dataKeySpec", "skipPlaintext"),
        )
        result = await handlers.generate_data_key(
            call,
            handlers.GenerateDataKeyRequest(
                keyId,
                f.string("versionId"),
                f.bytes_("aadContext"),
                f.enum("dataKeySpec", Algorithm),
                f.boolean("skipPlaintext"),
            ),
        )
        return wire.compact(
            {
                "keyId": result.key_id,
                "versionId": result.version_id,
                "dataKeyPlaintext": wire.b64(result.plaintext) if result.plaintext else None,
                "dataKeyCiphertext": wire.b64(result.ciphertext),
            }
        )

    return await run(request, methods.GENERATE_DATA_KEY, work, key_id=keyId[:MAX_ID])
