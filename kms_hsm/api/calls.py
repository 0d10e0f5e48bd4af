"""The REST side of an API call: the caller's facts from the HTTP request, then the pipeline.

Authentication, the audit event and the fail-closed rule are decided by
``kms_hsm.service.pipeline``, the same for every transport; this module only reads the
``Authorization`` header, the request id and the client address from the request.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Request, Response

from kms_hsm.api import wire
from kms_hsm.api.deps import runtime
from kms_hsm.service import pipeline
from kms_hsm.service.methods import Method
from kms_hsm.service.pipeline import Call

Work = Callable[[Call], Awaitable[dict[str, Any]]]


def authorization(request: Request) -> str | None:
    """The one ``Authorization`` header's value; None when there is none or more than one.

    Two of them were read differently by different routes (the first by FastAPI's, the
    last by the data plane's): a request that sends two is unauthenticated (401/16).
    """
    found = [v for k, v in request.scope["headers"] if k == b"authorization"]
    return found[0].decode("latin-1") if len(found) == 1 else None


def transport(request: Request) -> pipeline.Transport:
    """The caller's facts as HTTP gives them."""
    # From the scope, not ``request.client``: that builds a new Address on every access.
    client = request.scope.get("client")
    # Both ids are set by the app's admission step (api/app.py) for every HTTP request.
    state = request.scope["state"]
    return pipeline.Transport(
        authorization(request),
        state["request_id"],
        str(client[0]) if client else "",
        state.get("client_request_id", ""),
        "rest",
    )


async def run(request: Request, method: Method, work: Work, *, key_id: str = "") -> dict[str, Any]:
    """Run ``work`` as ``method`` through the pipeline; the answer's message."""
    return await pipeline.run(runtime(request), method, transport(request), work, key_id=key_id)


async def handle(request: Request, method: Method, work: Work, *, key_id: str = "") -> Response:
    """Run ``work`` as ``method`` and answer with its message as JSON."""
    return json_response(await run(request, method, work, key_id=key_id))


def json_response(message: dict[str, Any]) -> Response:
    """A 200 answer carrying ``message``."""
    return Response(wire.dumps(message), media_type="application/json")
