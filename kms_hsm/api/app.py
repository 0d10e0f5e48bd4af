"""The FastAPI application: built by ``create_app(settings)``, nothing at import."""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kms_hsm import __version__
from kms_hsm.api import wire
from kms_hsm.api.deps import BODY_KEY, HEADERS_KEY, MAX_BODY_BYTES, read_body
from kms_hsm.api.errors import error_response, install_error_handlers, kms_error_response
from kms_hsm.api.openapi import bindings, install_openapi
from kms_hsm.api.rest import verb_guard
from kms_hsm.api.routes import access, asymmetric, health, iam, keys
from kms_hsm.config import Settings
from kms_hsm.errors import KmsError
from kms_hsm.service.request_ids import request_ids
from kms_hsm.service.runtime import Runtime

log = logging.getLogger(__name__)


# (gen0 allocations, gen0 passes per gen1 pass, gen1 passes per full pass); CPython's
# defaults are (700, 10, 10). Measured with 10,000 keys: p99 44 ms -> 10 ms.
GC_THRESHOLDS = (50_000, 20, 20)


def _too_large(headers: dict[bytes, bytes]) -> bool:
    length = headers.get(b"content-length")
    return length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES)


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
        admitted = await _admit(scope, receive, send)
        if admitted is None:
            return
        _headers, rid = admitted
        extra = [(b"x-request-id", rid.encode("latin-1")), (b"x-kms-worker", self.worker)]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [
                    *[(k, v) for k, v in message.get("headers", []) if k != b"x-request-id"],
                    *extra,
                ]
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def _admit(
    scope: Scope, receive: Receive, send: Send
) -> tuple[dict[bytes, bytes], str] | None:
    """Headers and request id of an HTTP request; None when it was refused (too large)."""
    headers = dict(scope["headers"])
    rid, client_rid = request_ids(headers.get(b"x-request-id"))
    state = scope.setdefault("state", {})
    state["request_id"] = rid
    state["client_request_id"] = client_rid
    if _too_large(headers):
        response = error_response(
            Request(scope), 3, f"request body must be at most {MAX_BODY_BYTES} bytes"
        )
        await response(scope, receive, send)
        return None
    return headers, rid


# The data plane's handlers: the path's key id and the request in, the answer's message out.
Handler = Callable[[str, Request], Awaitable[dict[str, Any]]]


def _fast_verbs() -> dict[str, dict[str, Handler]]:
    """``POST <collection>/{keyId}:<verb>``: collection -> verb -> handler.

    From the bindings FastAPI does not serve: the SymmetricCrypto verbs, Sign, SignHash and
    the asymmetric Decrypt.
    """
    verbs: dict[str, dict[str, Handler]] = {}
    for binding in bindings():
        if binding.served:
            continue
        prefix, _, verb = binding.path.rpartition(":")
        collection, _, parameter = prefix.rpartition("/")
        assert binding.verb == "post" and parameter == "{keyId}", binding.path
        verbs.setdefault(collection, {})[verb] = binding.endpoint
    return verbs


class KmsApp:
    """The served ASGI app: the data plane in front, the FastAPI control plane behind it.

    The data plane's verbs (SymmetricCrypto's, Sign, SignHash, the asymmetric Decrypt)
    skip FastAPI's middleware stack, router and dependency machinery: their handlers parse
    their own bodies and raise KmsError, rendered exactly as the control plane's handlers
    would, and the answer goes out as two ASGI messages built here. Every other request
    (and the lifespan) goes to ``control_plane``.
    """

    def __init__(self, control_plane: FastAPI) -> None:
        self.control_plane = control_plane
        self.worker = str(os.getpid()).encode()
        self._verbs = _fast_verbs()

    def _route(self, scope: Scope) -> tuple[Handler, str] | None:
        if scope["type"] != "http" or scope["method"] != "POST":
            return None
        path: str = scope["path"]
        collection, slash, last = path.rpartition("/")
        verbs = self._verbs.get(collection) if slash else None
        if verbs is None:
            return None
        key_id, sep, verb = last.rpartition(":")
        handler = verbs.get(verb) if sep else None
        return (handler, key_id) if handler is not None else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        fast = self._route(scope)
        if fast is None:
            await self.control_plane(scope, receive, send)
            return
        scope["app"] = self.control_plane  # where the handlers find the runtime
        admitted = await _admit(scope, receive, send)
        if admitted is None:
            return
        headers, rid = admitted
        scope[HEADERS_KEY] = headers
        handler, key_id = fast
        request = Request(scope, receive)
        try:
            scope[BODY_KEY] = await read_body(receive)
            body = wire.dumps(await handler(key_id, request))
        except ClientDisconnect:
            return  # nobody to answer
        except KmsError as exc:
            response = kms_error_response(request, exc)
        except Exception:
            log.exception("unhandled error in %s", scope["path"])
            response = error_response(request, 13, "internal error")
        else:
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", b"%d" % len(body)),
                        (b"x-request-id", rid.encode("latin-1")),
                        (b"x-kms-worker", self.worker),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        response.headers["x-kms-worker"] = self.worker.decode()
        await response(scope, receive, send)


# What else serves the Runtime beside REST, composed by the cli (gRPC: ``kms_hsm.grpc``,
# which this package may not import): entered once the Runtime is open, left before it
# closes, in reverse order.
Service = Callable[[Runtime], AbstractAsyncContextManager[object]]


def create_app(
    settings: Settings | None = None,
    runtime: Runtime | None = None,
    services: Sequence[Service] = (),
) -> KmsApp:
    """The app; it opens its own Runtime in lifespan unless one is handed in (tests).

    ``services`` start after the Runtime opens (a failure stops start-up) and stop first.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = runtime is None
        rt = app.state.runtime = runtime or Runtime.start(settings or Settings())
        # This worker's HSM agent logs in now, not under the first requests: a login
        # rewrites the token file that other workers' agents may be reading (SoftHSM2).
        try:
            await rt.open()
        except BaseException:
            if owned:
                rt.close()
            raise
        rt.scheduler.start()
        started = AsyncExitStack()
        try:
            for service in services:
                await started.enter_async_context(service(rt))
        except BaseException:
            await started.aclose()
            await rt.scheduler.stop()
            rt.agents.close_current()
            if owned:
                rt.close()
            raise
        # Everything made so far lives as long as the process: out of the collector's
        # sight, a full collection walks only what requests create. Measured at 12k req/s:
        # full collections of 36-73 ms every ~1.1 s (p99 44 ms) became 1.5 ms (p99 10 ms).
        gc.freeze()
        # Caches filled later (10,000 keys) still made full collections of 40-50 ms every
        # 0.75 s (p99 44 ms), each collecting nothing: objects of requests in flight were
        # promoted to the oldest generation by every second-generation pass. Rarer young
        # passes promote far fewer of them; cycles are still collected young.
        gc.set_threshold(*GC_THRESHOLDS)
        try:
            async with started:
                yield
        finally:
            await rt.scheduler.stop()
            rt.agents.close_current()
            if owned:
                rt.close()

    # KMS_HSM_DOCS=1 turns on /docs and /redoc (see Settings.docs); /openapi.json stays.
    docs = (settings or (runtime.settings if runtime else None) or Settings()).docs
    app = FastAPI(
        title="kms-hsm",
        version=__version__,
        description=(
            "Yandex Cloud KMS v1 (symmetric and asymmetric keys) on premises, keys in a PKCS#11 HSM"
        ),
        lifespan=lifespan,
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
    )
    install_error_handlers(app)

    app.add_middleware(RequestGuard)
    # No trailing-slash redirect: Starlette built its Location from the client's Host
    # header (an open redirect), and API clients call exact paths; "/kms/v1/keys/" is 404.
    app.router.redirect_slashes = False
    # Verb routes on {resourceId} must come before the catch-all GET /kms/v1/keys/{keyId}.
    app.include_router(verb_guard(bindings()))
    app.include_router(access.routes.router)
    app.include_router(keys.routes.router)
    for routes in asymmetric.ROUTES:
        app.include_router(routes.router)
    app.include_router(iam.routes.router)
    app.include_router(health.router)
    install_openapi(app)
    return KmsApp(app)
