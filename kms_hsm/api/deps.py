"""Request helpers shared by the routes: the runtime, the caller, the body."""

from __future__ import annotations

from typing import Any

from fastapi import Request

from kms_hsm.api import wire
from kms_hsm.errors import InvalidArgument
from kms_hsm.service.runtime import Runtime

# Largest body any method needs: base64 of 32 KiB plaintext plus two 8 KiB contexts,
# or a ciphertext of that size. Anything bigger is refused before it is read in full.
MAX_BODY_BYTES = 256 * 1024


def runtime(request: Request) -> Runtime:
    """The process's Runtime."""
    rt: Runtime = request.app.state.runtime
    return rt


async def json_body(request: Request) -> dict[str, Any]:
    """The body as a JSON object, read with a size cap (chunked bodies included)."""
    content_type = request.headers.get("content-type", "application/json")
    if content_type.split(";")[0].strip().lower() not in ("application/json", ""):
        raise InvalidArgument("content-type must be application/json")
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise InvalidArgument(f"request body must be at most {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    return wire.parse_json_object(b"".join(chunks))
