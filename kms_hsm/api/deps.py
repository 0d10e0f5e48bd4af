"""Request helpers shared by the routes: the runtime, the caller, the body."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from starlette.requests import ClientDisconnect
from starlette.types import Receive

from kms_hsm.api import wire
from kms_hsm.domain.validation import MAX_MESSAGE_BYTES
from kms_hsm.errors import InvalidArgument
from kms_hsm.service.runtime import Runtime

# Anything bigger is refused before it is read in full (gRPC's message cap is the same).
MAX_BODY_BYTES = MAX_MESSAGE_BYTES


def runtime(request: Request) -> Runtime:
    """The process's Runtime."""
    rt: Runtime = request.app.state.runtime
    return rt


# Set by the data plane's fast path (api/app.py): the headers as a dict, and the body.
HEADERS_KEY = "kms_hsm.headers"
BODY_KEY = "kms_hsm.body"


def header(request: Request, name: str) -> str | None:
    """A request header by lower-case name (latin-1, as HTTP has it)."""
    headers = request.scope.get(HEADERS_KEY)
    if headers is None:
        return request.headers.get(name)
    value = headers.get(name.encode("latin-1"))
    return None if value is None else value.decode("latin-1")


async def read_body(receive: Receive) -> bytes:
    """The whole body, refused as soon as it grows past the cap (chunked bodies too)."""
    chunks = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise InvalidArgument(f"request body must be at most {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def json_body(request: Request) -> dict[str, Any]:
    """The body as a JSON object, read with a size cap (chunked bodies included)."""
    content_type = header(request, "content-type") or "application/json"
    if content_type.split(";")[0].strip().lower() not in ("application/json", ""):
        raise InvalidArgument("content-type must be application/json")
    raw = request.scope.get(BODY_KEY)
    if raw is None:
        raw = await read_body(request.receive)
    return wire.parse_json_object(raw)
