"""The FastAPI application: built by ``create_app(settings)``, nothing at import."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kms_hsm import __version__
from kms_hsm.api.deps import MAX_BODY_BYTES
from kms_hsm.api.errors import error_response, install_error_handlers, kms_error_response
from kms_hsm.api.openapi import install_openapi
from kms_hsm.api.routes import access, crypto, health, keys
from kms_hsm.config import Settings
from kms_hsm.errors import KmsError
from kms_hsm.service.runtime import Runtime

log = logging.getLogger(__name__)


class RequestGuard:
    """Pure ASGI middleware: request id, worker id, and the body-size cap by Content-Length.

    (Starlette's BaseHTTPMiddleware would cost a task and a queue per request.)
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.worker = str(os.getpid()).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        rid = headers.get(b"x-request-id", b"")[:100].decode("latin-1") or str(uuid.uuid4())
        scope.setdefault("state", {})["request_id"] = rid
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            response = error_response(
                Request(scope), 3, f"request body must be at most {MAX_BODY_BYTES} bytes"
            )
            await response(scope, receive, send)
            return
        extra = [(b"x-request-id", rid.encode("latin-1")), (b"x-kms-worker", self.worker)]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [
                    *[(k, v) for k, v in message.get("headers", []) if k != b"x-request-id"],
                    *extra,
                ]
            await send(message)

        fast = _fast_route(scope)
        if fast is not None:
            handler, key_id = fast
            request = Request(scope, receive)
            try:
                response = await handler(key_id, request)
            except KmsError as exc:
                response = kms_error_response(request, exc)
            except Exception:
                log.exception("unhandled error in %s", scope["path"])
                response = error_response(request, 13, "internal error")
            await response(scope, receive, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)


# The data plane skips FastAPI's router and dependency machinery: these handlers parse
# their own bodies and raise KmsError, rendered exactly as the app's handlers would.
_FAST_VERBS: dict[str, Callable[[str, Request], Awaitable[Response]]] = {
    "encrypt": crypto.encrypt,
    "decrypt": crypto.decrypt,
    "reEncrypt": crypto.re_encrypt,
    "generateDataKey": crypto.generate_data_key,
}
_KEYS_PREFIX = "/kms/v1/keys/"


def _fast_route(scope: Scope) -> tuple[Callable[[str, Request], Awaitable[Response]], str] | None:
    if scope["method"] != "POST":
        return None
    path: str = scope["path"]
    if not path.startswith(_KEYS_PREFIX):
        return None
    key_id, sep, verb = path[len(_KEYS_PREFIX) :].rpartition(":")
    handler = _FAST_VERBS.get(verb) if sep and "/" not in key_id else None
    return (handler, key_id) if handler is not None else None


def create_app(settings: Settings | None = None, runtime: Runtime | None = None) -> FastAPI:
    """The app; it opens its own Runtime in lifespan unless one is handed in (tests)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = runtime is None
        app.state.runtime = runtime or Runtime.start(settings or Settings())
        if owned:
            app.state.runtime.scheduler.start()
        try:
            yield
        finally:
            if owned:
                app.state.runtime.close()

    app = FastAPI(
        title="kms-hsm",
        version=__version__,
        description="Yandex Cloud KMS v1 (symmetric keys) on premises, keys in a PKCS#11 HSM",
        lifespan=lifespan,
    )
    install_error_handlers(app)

    app.add_middleware(RequestGuard)
    # Verb routes on {resourceId} must come before the catch-all GET /kms/v1/keys/{keyId}.
    app.include_router(access.router)
    app.include_router(crypto.router)
    app.include_router(keys.router)
    app.include_router(health.router)
    install_openapi(app)
    return app
