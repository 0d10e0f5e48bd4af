"""Baseline F: the encrypt endpoint as a user would write it in an afternoon with FastAPI.

One async POST endpoint, the body parsed by a pydantic model, base64 and AES-GCM
(``cryptography``) under a fixed in-memory key, the response shape of kms-hsm's
``:encrypt``. No auth, no database, no HSM: what is left is the framework's own cost.
Served by bench/run.py as ``uvicorn --app-dir bench baseline_fastapi:app``.
"""

from __future__ import annotations

import base64
import os

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from fastapi import FastAPI
from pydantic import BaseModel

# A benchmark stand-in, not a secret: every run encrypts under the same key.
_AEAD = AESGCM(bytes(range(32)))

app = FastAPI(title="baseline F")


class EncryptRequest(BaseModel):
    """The :encrypt body (camelCase as on the wire)."""

    plaintext: str
    aadContext: str | None = None  # wire names are camelCase
    versionId: str | None = None


class EncryptResponse(BaseModel):
    """The :encrypt response."""

    keyId: str
    versionId: str
    ciphertext: str


@app.post("/kms/v1/keys/{key_id}:encrypt")
async def encrypt(key_id: str, body: EncryptRequest) -> EncryptResponse:
    """Seal the plaintext; the nonce is prepended to ciphertext || tag."""
    plaintext = base64.b64decode(body.plaintext)
    aad = base64.b64decode(body.aadContext) if body.aadContext else None
    nonce = os.urandom(12)
    sealed = nonce + _AEAD.encrypt(nonce, plaintext, aad)
    return EncryptResponse(
        keyId=key_id, versionId="baseline", ciphertext=base64.b64encode(sealed).decode()
    )
