"""IAM tokens: stateless, MAC'd bearer credentials made by IamTokenService.Create.

Wire format: ``kmsh1i_`` + base64url(payload) + "." + base64url(HMAC-SHA-256(key, payload)),
base64url without padding. Payload v1, byte by byte:

    version   1 byte   0x01
    expires   8 bytes  unix seconds, big-endian unsigned
    kind      1 byte   0x01 = source is a bearer token, 0x02 = an authorized key
    principal 1 byte length n, then n ASCII bytes (the principal id)
    source    1 byte length m, then m ASCII bytes (the bearer token's or the key's id)

No row is kept per token: the SDKs exchange every ~20 s per client. Validity of the source
(token or key still live, principal enabled) is checked at every use, by the caller.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import struct
from dataclasses import dataclass
from typing import Literal

IAM_TOKEN_PREFIX = "kmsh1i_"  # noqa: S105 - a format marker, not a secret
VERSION_1 = 1
_KINDS: dict[str, int] = {"token": 1, "key": 2}
_KIND_NAMES = {code: name for name, code in _KINDS.items()}
_HEAD = struct.Struct(">BQB")
_MAX_ID = 64
MAX_IAM_TOKEN_CHARS = 300

SourceKind = Literal["token", "key"]


class BadIamToken(ValueError):
    """The string is not an IAM token made with this key (no detail: one answer for all)."""


@dataclass(frozen=True, slots=True)
class IamTokenClaims:
    """What an IAM token says: who, from which credential, until when."""

    principal_id: str
    source_kind: SourceKind
    source_id: str
    expires_at: int  # unix seconds

    def payload(self) -> bytes:
        """The v1 payload bytes."""
        principal = _id_bytes(self.principal_id)
        source = _id_bytes(self.source_id)
        return (
            _HEAD.pack(VERSION_1, self.expires_at, _KINDS[self.source_kind])
            + bytes([len(principal)])
            + principal
            + bytes([len(source)])
            + source
        )

    def serialize(self, key: bytes) -> str:
        """The token string, MAC'd with ``key``."""
        payload = self.payload()
        return IAM_TOKEN_PREFIX + _b64(payload) + "." + _b64(_mac(key, payload))

    @classmethod
    def parse(cls, token: str, key: bytes) -> IamTokenClaims:
        """Check the MAC (constant time) and decode; BadIamToken on any fault."""
        if len(token) > MAX_IAM_TOKEN_CHARS or not token.startswith(IAM_TOKEN_PREFIX):
            raise BadIamToken
        body, dot, tag = token[len(IAM_TOKEN_PREFIX) :].partition(".")
        if not dot:
            raise BadIamToken
        payload, mac = _unb64(body), _unb64(tag)
        if not hmac.compare_digest(mac, _mac(key, payload)):
            raise BadIamToken
        return cls._decode(payload)

    @classmethod
    def _decode(cls, payload: bytes) -> IamTokenClaims:
        if len(payload) < _HEAD.size + 2:
            raise BadIamToken
        version, expires_at, kind = _HEAD.unpack_from(payload)
        if version != VERSION_1 or kind not in _KIND_NAMES:
            raise BadIamToken
        at = _HEAD.size
        principal, at = _take(payload, at)
        source, at = _take(payload, at)
        if at != len(payload):
            raise BadIamToken
        kind_name: SourceKind = "token" if _KIND_NAMES[kind] == "token" else "key"
        return cls(principal, kind_name, source, expires_at)


def _id_bytes(value: str) -> bytes:
    raw = value.encode("ascii")
    if not 0 < len(raw) <= _MAX_ID:
        raise ValueError(f"id length {len(raw)} outside 1..{_MAX_ID}")
    return raw


def _take(payload: bytes, at: int) -> tuple[str, int]:
    if at >= len(payload):
        raise BadIamToken
    n = payload[at]
    end = at + 1 + n
    if n == 0 or n > _MAX_ID or end > len(payload):
        raise BadIamToken
    try:
        return payload[at + 1 : end].decode("ascii"), end
    except UnicodeDecodeError:
        raise BadIamToken from None


def _mac(key: bytes, payload: bytes) -> bytes:
    return hmac.new(key, payload, hashlib.sha256).digest()


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    if not text or len(text) % 4 == 1:
        raise BadIamToken
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise BadIamToken from None
