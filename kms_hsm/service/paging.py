"""Opaque, tamper-evident page tokens for keyset pagination.

Layout before base64url (no padding): version byte 0x01, 8-byte big-endian microseconds
since the epoch of the last row's created_at, its id, then a 16-byte HMAC-SHA256 tag over
``scope || everything before the tag``. The scope names the list and its filter (for
example ``keys|<folderId>``), so a token cannot be replayed against another list.
Any token that does not verify is an ``InvalidArgument`` naming ``pageToken``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import struct
from datetime import UTC, datetime, timedelta

from kms_hsm.errors import InvalidArgument
from kms_hsm.store.repository import Cursor

_VERSION = 1
_TAG_BYTES = 16
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


class PageTokens:
    """Signs and verifies page tokens with one service secret."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def _tag(self, scope: str, body: bytes) -> bytes:
        mac = hmac.new(self._secret, scope.encode() + b"\x00" + body, hashlib.sha256)
        return mac.digest()[:_TAG_BYTES]

    def encode(self, scope: str, cursor: Cursor) -> str:
        """A token that resumes after ``cursor`` in the list named by ``scope``."""
        micros = (cursor.created_at - _EPOCH) // timedelta(microseconds=1)
        body = bytes([_VERSION]) + struct.pack(">q", micros) + cursor.id.encode("ascii")
        raw = body + self._tag(scope, body)
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")

    def decode(self, scope: str, token: str, max_chars: int) -> Cursor | None:
        """The cursor in ``token`` (None for an empty token)."""
        if not token:
            return None
        invalid = InvalidArgument("pageToken is invalid or belongs to another list")
        if len(token) > max_chars:
            raise InvalidArgument(f"pageToken must be at most {max_chars} characters")
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError):
            raise invalid from None
        if len(raw) < 1 + 8 + 1 + _TAG_BYTES or raw[0] != _VERSION:
            raise invalid
        body, tag = raw[:-_TAG_BYTES], raw[-_TAG_BYTES:]
        if not hmac.compare_digest(tag, self._tag(scope, body)):
            raise invalid
        (micros,) = struct.unpack(">q", body[1:9])
        try:
            last_id = body[9:].decode("ascii")
        except UnicodeDecodeError:
            raise invalid from None
        return Cursor(_EPOCH + timedelta(microseconds=micros), last_id)


def check_page_size(page_size: int) -> int:
    """0 means the default (100); at most 1000."""
    if page_size < 0 or page_size > MAX_PAGE_SIZE:
        raise InvalidArgument(f"pageSize must be between 0 and {MAX_PAGE_SIZE}")
    return page_size or DEFAULT_PAGE_SIZE
