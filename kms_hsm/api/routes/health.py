"""Liveness and readiness probes (no authentication: they reveal nothing but health)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from fastapi import APIRouter, Request, Response

from kms_hsm.api import wire
from kms_hsm.api.deps import runtime
from kms_hsm.errors import KmsError

router = APIRouter(tags=["Health"])


@router.get("/healthz", summary="Liveness: the process serves requests", include_in_schema=False)
async def healthz() -> Response:
    """Always 200 while the event loop runs."""
    return Response(wire.dumps({"status": "ok"}), media_type="application/json")


@router.get(
    "/readyz",
    summary="Readiness: database reachable and a real token round-trip",
    include_in_schema=False,
)
async def readyz(request: Request) -> Response:
    """200 when both checks pass within the deadline; 503 naming what failed."""
    rt = runtime(request)
    deadline = rt.settings.call_timeout
    checks: dict[str, str] = {}
    # The token round-trip takes the data plane's own path (this worker's HSM agent):
    # ready means that encrypt and decrypt can reach the token.
    checks_to_run: tuple[tuple[str, Callable[[], Awaitable[None]]], ...] = (
        ("database", lambda: asyncio.to_thread(rt.check_database)),
        ("hsm", rt.check_hsm),
    )
    for name, check in checks_to_run:
        try:
            await asyncio.wait_for(check(), timeout=deadline)
            checks[name] = "ok"
        except TimeoutError:
            checks[name] = f"no answer within {deadline:g}s"
        except KmsError as exc:
            checks[name] = exc.message
    ready = all(v == "ok" for v in checks.values())
    body = {"status": "ready" if ready else "unavailable", "checks": checks}
    return Response(
        wire.dumps(body), status_code=200 if ready else 503, media_type="application/json"
    )
