"""Error responses: ``{"code", "message", "details"}`` with Yandex's code -> status table."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from kms_hsm.api import status, wire
from kms_hsm.errors import KmsError

log = logging.getLogger("kms_hsm.api")

_CODE_BY_HTTP = {400: 3, 401: 16, 403: 7, 404: 5, 405: 12, 409: 6, 413: 3, 415: 3, 429: 8}


def request_id(request: Request) -> str:
    """The request id (also sent back as ``x-request-id``)."""
    rid = getattr(request.state, "request_id", None)
    if rid is None:
        rid = str(uuid.uuid4())
        request.state.request_id = rid
    return rid


def error_response(
    request: Request,
    code: int,
    message: str,
    field: str | None = None,
    http_status: int | None = None,
) -> Response:
    """A ``google.rpc.Status`` body with RequestInfo (and BadRequest for a named field)."""
    rid = request_id(request)
    details: list[dict[str, Any]] = [
        {"@type": "type.googleapis.com/google.rpc.RequestInfo", "requestId": rid}
    ]
    if field:
        details.append(
            {
                "@type": "type.googleapis.com/google.rpc.BadRequest",
                "fieldViolations": [{"field": field, "description": message}],
            }
        )
    body = {"code": code, "message": message, "details": details}
    return Response(
        wire.dumps(body),
        status_code=http_status or status.http_status(code),
        media_type="application/json",
        headers={"x-request-id": rid},
    )


def kms_error_response(request: Request, exc: KmsError) -> Response:
    """Render a ``KmsError``; its ``log_detail`` goes to the log only."""
    code = status.grpc_code(exc)
    level = logging.WARNING if code in (13, 14) else logging.INFO
    log.log(
        level,
        "%s %s -> %s %s%s",
        request.method,
        # The path as received (escaped by the log formatter); ``request.url`` drops CR,
        # LF and tab on its way through urllib, so the line would not show what was sent.
        request.scope["path"],
        code,
        type(exc).__name__,
        f" ({exc.log_detail})" if exc.log_detail else "",
        extra={"request_id": request_id(request)},
    )
    response = error_response(request, code, exc.message, getattr(exc, "field", None))
    if exc.retry_after is not None:
        response.headers["retry-after"] = str(exc.retry_after)
    return response


def install_error_handlers(app: FastAPI) -> None:
    """Every failure leaves as the same JSON shape; never a traceback in a body."""

    async def on_kms_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, KmsError)
        return kms_error_response(request, exc)

    async def on_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
        field = ".".join(loc) or None
        message = f"{field}: {first.get('msg', 'invalid')}" if field else "invalid request"
        return error_response(request, 3, message, field)

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        code = _CODE_BY_HTTP.get(exc.status_code, 2)
        if exc.status_code == 405:
            # The HTTP answer is 405 (the path exists, the method does not), with the
            # gRPC code a transcoder gives an unknown method: 12 UNIMPLEMENTED.
            response = error_response(request, 12, "method not allowed on this path", None, 405)
            if exc.headers and "Allow" in exc.headers:
                response.headers["Allow"] = exc.headers["Allow"]
            return response
        return error_response(request, code, str(exc.detail))

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        log.exception(
            "unhandled error in %s %s",
            request.method,
            request.scope["path"],
            extra={"request_id": request_id(request)},
        )
        return error_response(request, 13, "internal error")

    app.add_exception_handler(KmsError, on_kms_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_unexpected)
