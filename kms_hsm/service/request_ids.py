"""Request ids: the client's when it looks like one, else one made here (every transport)."""

from __future__ import annotations

import random
import re

from kms_hsm.logs import escape

# Request ids need uniqueness, not secrecy: no getrandom() syscall per request.
_REQUEST_IDS = random.Random()  # noqa: S311

# The version (4) and variant (RFC 4122) bits, as uuid.UUID(version=4) sets them.
_UUID4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_UUID4_SET = (0x4000 << 64) | (0x8000 << 48)

# A client's request id (X-Request-Id header, x-request-id gRPC metadata) is taken as the
# request's id only when it looks like one: UUIDs, ULIDs, hex trace ids, W3C traceparent
# values ("00-<32 hex>-<16 hex>-01", 55 characters) and dotted or colon-separated ids
# ("req:42", "web.7f3a") all fit; nothing that could split, forge or bloat a log line or
# audit record does.
_CLIENT_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,64}")
# What is kept of a refused one, for the audit trail: escaped, at most this long.
MAX_CLIENT_REQUEST_ID = 100


def new_request_id() -> str:
    """A random UUID (version 4) for a request that brought none."""
    bits = _REQUEST_IDS.getrandbits(128) & _UUID4_CLEAR | _UUID4_SET
    h = f"{bits:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def request_ids(sent: bytes | None) -> tuple[str, str]:
    """(the request's id, the client's id when it was refused, escaped, else "")."""
    if sent is None:
        return new_request_id(), ""
    if _CLIENT_REQUEST_ID.fullmatch(sent):
        return sent.decode("ascii"), ""
    return new_request_id(), _escaped_prefix(sent.decode("latin-1"), MAX_CLIENT_REQUEST_ID)


def _escaped_prefix(text: str, limit: int) -> str:
    """``escape(text)`` cut to ``limit`` characters, never inside one character's escape."""
    kept: list[str] = []
    size = 0
    for char in text[:limit]:
        escaped = escape(char)
        size += len(escaped)
        if size > limit:
            break
        kept.append(escaped)
    return "".join(kept)
