"""SymmetricCryptoService over REST: ``POST /kms/v1/keys/{keyId}:<verb>``."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from kms_hsm.api import wire
from kms_hsm.api.deps import caller, json_body, runtime
from kms_hsm.domain.model import Algorithm
from kms_hsm.domain.validation import MAX_AAD, MAX_ID, MAX_PLAINTEXT

router = APIRouter(tags=["SymmetricCrypto"])


def _json(message: dict[str, object]) -> Response:
    return Response(wire.dumps(wire.compact(message)), media_type="application/json")


def _key_id(key_id: str) -> str:
    if len(key_id) > MAX_ID:
        raise wire.FieldError("keyId", f"must be at most {MAX_ID} characters")
    return key_id


@router.post("/kms/v1/keys/{keyId}:encrypt", summary="Encrypt plaintext with a key version")
async def encrypt(keyId: str, request: Request) -> Response:
    """Encrypt."""
    caller(request)
    f = wire.Fields(await json_body(request), ("keyId", "versionId", "aadContext", "plaintext"))
    result = runtime(request).crypto.encrypt(
        _key_id(keyId),
        f.string("versionId", max_len=MAX_ID),
        f.bytes_("plaintext", required=True, max_len=MAX_PLAINTEXT),
        f.bytes_("aadContext", max_len=MAX_AAD),
    )
    return _json(
        {
            "keyId": result.key_id,
            "versionId": result.version_id,
            "ciphertext": wire.b64(result.ciphertext),
        }
    )


@router.post("/kms/v1/keys/{keyId}:decrypt", summary="Decrypt a ciphertext")
async def decrypt(keyId: str, request: Request) -> Response:
    """Decrypt."""
    caller(request)
    f = wire.Fields(await json_body(request), ("keyId", "aadContext", "ciphertext"))
    result = runtime(request).crypto.decrypt(
        _key_id(keyId),
        f.bytes_("ciphertext", required=True),
        f.bytes_("aadContext", max_len=MAX_AAD),
    )
    return _json(
        {
            "keyId": result.key_id,
            "versionId": result.version_id,
            "plaintext": wire.b64(result.plaintext),
        }
    )


@router.post("/kms/v1/keys/{keyId}:reEncrypt", summary="Re-encrypt under another key or version")
async def re_encrypt(keyId: str, request: Request) -> Response:
    """ReEncrypt."""
    caller(request)
    f = wire.Fields(
        await json_body(request),
        ("keyId", "versionId", "aadContext", "sourceKeyId", "sourceAadContext", "ciphertext"),
    )
    result = runtime(request).crypto.re_encrypt(
        _key_id(keyId),
        f.string("versionId", max_len=MAX_ID),
        f.bytes_("aadContext", max_len=MAX_AAD),
        f.string("sourceKeyId", required=True, max_len=MAX_ID),
        f.bytes_("sourceAadContext", max_len=MAX_AAD),
        f.bytes_("ciphertext", required=True),
    )
    return _json(
        {
            "keyId": result.key_id,
            "versionId": result.version_id,
            "sourceKeyId": result.source_key_id,
            "sourceVersionId": result.source_version_id,
            "ciphertext": wire.b64(result.ciphertext),
        }
    )


@router.post("/kms/v1/keys/{keyId}:generateDataKey", summary="Generate a wrapped data key")
async def generate_data_key(keyId: str, request: Request) -> Response:
    """GenerateDataKey; dataKeySpec SYMMETRIC_ALGORITHM_UNSPECIFIED means AES_256."""
    caller(request)
    f = wire.Fields(
        await json_body(request),
        ("keyId", "versionId", "aadContext", "dataKeySpec", "skipPlaintext"),
    )
    result = runtime(request).crypto.generate_data_key(
        _key_id(keyId),
        f.string("versionId", max_len=MAX_ID),
        f.bytes_("aadContext", max_len=MAX_AAD),
        f.enum("dataKeySpec", Algorithm),
        f.boolean("skipPlaintext"),
    )
    return _json(
        {
            "keyId": result.key_id,
            "versionId": result.version_id,
            "dataKeyPlaintext": wire.b64(result.plaintext) if result.plaintext else None,
            "dataKeyCiphertext": wire.b64(result.ciphertext),
        }
    )
