"""Baseline R: the same work as baseline F as a bare ASGI callable with orjson.

No framework, no validation library: read the body, ``orjson.loads``, base64, AES-GCM
(``cryptography``) under a fixed in-memory key, ``orjson.dumps``. This is the ceiling of
the HTTP stack (uvicorn) on this machine for this amount of work.
Served by bench/run.py as ``uvicorn --app-dir bench baseline_raw:app``.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# A benchmark stand-in, not a secret: every run encrypts under the same key.
_AEAD = AESGCM(bytes(range(32)))
_PREFIX = "/kms/v1/keys/"
_SUFFIX = ":encrypt"


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def _respond(send: Send, status: int, payload: dict[str, Any]) -> None:
    body = orjson.dumps(payload)
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _encrypt(key_id: str, raw: bytes) -> dict[str, Any]:
    request = orjson.loads(raw)
    plaintext = base64.b64decode(request["plaintext"])
    aad_text = request.get("aadContext")
    aad = base64.b64decode(aad_text) if aad_text else None
    nonce = os.urandom(12)
    sealed = nonce + _AEAD.encrypt(nonce, plaintext, aad)
    ciphertext = base64.b64encode(sealed).decode()
    return {"keyId": key_id, "versionId": "baseline", "ciphertext": ciphertext}


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """The ASGI entry: POST /kms/v1/keys/{keyId}:encrypt, anything else is 404."""
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    path: str = scope["path"]
    if scope["method"] != "POST" or not (path.startswith(_PREFIX) and path.endswith(_SUFFIX)):
        await _respond(send, 404, {"code": 5, "message": "not found"})
        return
    raw = await _read_body(receive)
    try:
        payload = _encrypt(path[len(_PREFIX) : -len(_SUFFIX)], raw)
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError, binascii.Error):
        await _respond(send, 400, {"code": 3, "message": "bad request"})
        return
    await _respond(send, 200, payload)
