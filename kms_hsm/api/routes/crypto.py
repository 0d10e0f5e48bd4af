"""SymmetricCryptoService over REST: ``POST /kms/v1/keys/{keyId}:<verb>``.

Answered by the data plane's fast path (``api/app.py``) before FastAPI sees the request:
each handler takes the path's key id and the request and returns the answer's message.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request

from kms_hsm.api import wire
from kms_hsm.api.calls import run
from kms_hsm.api.deps import json_body
from kms_hsm.api.rest import Routes
from kms_hsm.domain.model import Algorithm
from kms_hsm.domain.validation import MAX_AAD, MAX_ID, MAX_PLAINTEXT
from kms_hsm.service import methods
from kms_hsm.service.access import Permission
from kms_hsm.service.pipeline import Call

routes = Routes("SymmetricCrypto")


def path_key_id(key_id: str) -> str:
    """The path's keyId, checked like a body field."""
    return wire.path_id("keyId", key_id, MAX_ID)


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
        call.authorize_key(path_key_id(keyId))
        version_id = f.identifier("versionId")
        plaintext = f.bytes_("plaintext", required=True, max_len=MAX_PLAINTEXT)
        aad = f.bytes_("aadContext", max_len=MAX_AAD)
        result = await call.rt.crypto.encrypt(keyId, version_id, plaintext, aad)
        call.version_id = result.version_id
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
        call.authorize_key(path_key_id(keyId))
        ciphertext = f.bytes_("ciphertext", required=True)
        aad = f.bytes_("aadContext", max_len=MAX_AAD)
        result = await call.rt.crypto.decrypt(keyId, ciphertext, aad)
        call.version_id = result.version_id
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
        source_key_id = f.identifier("sourceKeyId", required=True)
        call.authorize_key(path_key_id(keyId))
        call.authorize_key(source_key_id, Permission.DECRYPT)
        version_id = f.identifier("versionId")
        aad = f.bytes_("aadContext", max_len=MAX_AAD)
        source_aad = f.bytes_("sourceAadContext", max_len=MAX_AAD)
        ciphertext = f.bytes_("ciphertext", required=True)
        result = await call.rt.crypto.re_encrypt(
            keyId, version_id, aad, source_key_id, source_aad, ciphertext
        )
        call.version_id = result.version_id
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
        call.authorize_key(path_key_id(keyId))
        version_id = f.identifier("versionId")
        aad = f.bytes_("aadContext", max_len=MAX_AAD)
        spec = f.enum("dataKeySpec", Algorithm)
        skip = f.boolean("skipPlaintext")
        result = await call.rt.crypto.generate_data_key(keyId, version_id, aad, spec, skip)
        call.version_id = result.version_id
        return wire.compact(
            {
                "keyId": result.key_id,
                "versionId": result.version_id,
                "dataKeyPlaintext": wire.b64(result.plaintext) if result.plaintext else None,
                "dataKeyCiphertext": wire.b64(result.ciphertext),
            }
        )

    return await run(request, methods.GENERATE_DATA_KEY, work, key_id=keyId[:MAX_ID])
