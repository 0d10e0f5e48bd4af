"""SymmetricCryptoService over REST: ``POST /kms/v1/keys/{keyId}:<verb>``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from kms_hsm.api import wire
from kms_hsm.api.calls import Call, json_response, run
from kms_hsm.api.deps import json_body
from kms_hsm.domain.model import Algorithm
from kms_hsm.domain.validation import MAX_AAD, MAX_ID, MAX_PLAINTEXT
from kms_hsm.service.access import Permission

router = APIRouter(tags=["SymmetricCrypto"])


def path_key_id(key_id: str) -> str:
    """The path's keyId, checked like a body field."""
    return wire.path_id("keyId", key_id, MAX_ID)


async def encrypt_message(keyId: str, request: Request) -> dict[str, Any]:
    """The Encrypt answer's message."""

    async def work(call: Call) -> dict[str, Any]:
        f = wire.Fields(await json_body(request), ("keyId", "versionId", "aadContext", "plaintext"))
        call.authorize_key(path_key_id(keyId))
        version_id = f.string("versionId", max_len=MAX_ID)
        plaintext = f.bytes_("plaintext", required=True, max_len=MAX_PLAINTEXT)
        aad = f.bytes_("aadContext", max_len=MAX_AAD)
        result = await call.run(
            lambda: call.rt.crypto.encrypt(keyId, version_id, plaintext, aad),
            needs_hsm=call.rt.crypto.needs_hsm(keyId, version_id=version_id),
        )
        call.version_id = result.version_id
        return {
            "keyId": result.key_id,
            "versionId": result.version_id,
            "ciphertext": wire.b64(result.ciphertext),
        }

    return await run(request, "SymmetricCrypto.Encrypt", work, key_id=keyId[:MAX_ID])


async def decrypt_message(keyId: str, request: Request) -> dict[str, Any]:
    """The Decrypt answer's message."""

    async def work(call: Call) -> dict[str, Any]:
        f = wire.Fields(await json_body(request), ("keyId", "aadContext", "ciphertext"))
        call.authorize_key(path_key_id(keyId))
        ciphertext = f.bytes_("ciphertext", required=True)
        aad = f.bytes_("aadContext", max_len=MAX_AAD)
        result = await call.run(
            lambda: call.rt.crypto.decrypt(keyId, ciphertext, aad),
            needs_hsm=call.rt.crypto.needs_hsm(keyId, ciphertext=ciphertext),
        )
        call.version_id = result.version_id
        return wire.compact(
            {
                "keyId": result.key_id,
                "versionId": result.version_id,
                "plaintext": wire.b64(result.plaintext),
            }
        )

    return await run(request, "SymmetricCrypto.Decrypt", work, key_id=keyId[:MAX_ID])


async def re_encrypt_message(keyId: str, request: Request) -> dict[str, Any]:
    """The ReEncrypt answer's message."""

    async def work(call: Call) -> dict[str, Any]:
        f = wire.Fields(
            await json_body(request),
            ("keyId", "versionId", "aadContext", "sourceKeyId", "sourceAadContext", "ciphertext"),
        )
        source_key_id = f.string("sourceKeyId", required=True, max_len=MAX_ID)
        call.authorize_key(path_key_id(keyId))
        call.authorize_key(source_key_id, Permission.DECRYPT)
        version_id = f.string("versionId", max_len=MAX_ID)
        aad = f.bytes_("aadContext", max_len=MAX_AAD)
        source_aad = f.bytes_("sourceAadContext", max_len=MAX_AAD)
        ciphertext = f.bytes_("ciphertext", required=True)
        result = await call.run(
            lambda: call.rt.crypto.re_encrypt(
                keyId, version_id, aad, source_key_id, source_aad, ciphertext
            ),
            needs_hsm=call.rt.crypto.needs_hsm(source_key_id, ciphertext=ciphertext)
            or call.rt.crypto.needs_hsm(keyId, version_id=version_id),
        )
        call.version_id = result.version_id
        return {
            "keyId": result.key_id,
            "versionId": result.version_id,
            "sourceKeyId": result.source_key_id,
            "sourceVersionId": result.source_version_id,
            "ciphertext": wire.b64(result.ciphertext),
        }

    return await run(request, "SymmetricCrypto.ReEncrypt", work, key_id=keyId[:MAX_ID])


async def generate_data_key_message(keyId: str, request: Request) -> dict[str, Any]:
    """The GenerateDataKey answer's message."""

    async def work(call: Call) -> dict[str, Any]:
        f = wire.Fields(
            await json_body(request),
            ("keyId", "versionId", "aadContext", "dataKeySpec", "skipPlaintext"),
        )
        call.authorize_key(path_key_id(keyId))
        version_id = f.string("versionId", max_len=MAX_ID)
        aad = f.bytes_("aadContext", max_len=MAX_AAD)
        spec = f.enum("dataKeySpec", Algorithm)
        skip = f.boolean("skipPlaintext")
        result = await call.run(
            lambda: call.rt.crypto.generate_data_key(keyId, version_id, aad, spec, skip),
            needs_hsm=call.rt.crypto.needs_hsm(keyId, version_id=version_id, data_key_spec=spec),
        )
        call.version_id = result.version_id
        return wire.compact(
            {
                "keyId": result.key_id,
                "versionId": result.version_id,
                "dataKeyPlaintext": wire.b64(result.plaintext) if result.plaintext else None,
                "dataKeyCiphertext": wire.b64(result.ciphertext),
            }
        )

    return await run(request, "SymmetricCrypto.GenerateDataKey", work, key_id=keyId[:MAX_ID])


@router.post("/kms/v1/keys/{keyId}:encrypt", summary="Encrypt plaintext with a key version")
async def encrypt(keyId: str, request: Request) -> Response:
    """Encrypt."""
    return json_response(await encrypt_message(keyId, request))


@router.post("/kms/v1/keys/{keyId}:decrypt", summary="Decrypt a ciphertext")
async def decrypt(keyId: str, request: Request) -> Response:
    """Decrypt."""
    return json_response(await decrypt_message(keyId, request))


@router.post("/kms/v1/keys/{keyId}:reEncrypt", summary="Re-encrypt under another key or version")
async def re_encrypt(keyId: str, request: Request) -> Response:
    """ReEncrypt: decrypt permission on the source key, encrypt permission on the target."""
    return json_response(await re_encrypt_message(keyId, request))


@router.post("/kms/v1/keys/{keyId}:generateDataKey", summary="Generate a wrapped data key")
async def generate_data_key(keyId: str, request: Request) -> Response:
    """GenerateDataKey; dataKeySpec SYMMETRIC_ALGORITHM_UNSPECIFIED means AES_256."""
    return json_response(await generate_data_key_message(keyId, request))
