"""The one place a ``KmsError`` becomes a gRPC status: REST's code and message, as details.

The status code is the error's canonical ``code`` (what REST puts in its body), the status
message is its ``message`` (identical to REST's), and ``grpc-status-details-bin`` carries a
``google.rpc.Status`` with a ``RequestInfo`` (and a ``BadRequest`` naming the field, and a
``RetryInfo`` when the error says when to retry), as Yandex's servers send them. Nothing
else of an unexpected exception leaves the server: "internal error", traceback in the log.
"""

from __future__ import annotations

import logging
import os
from typing import Any, NoReturn

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

from kms_hsm.errors import KmsError, StatusCode

log = logging.getLogger("kms_hsm.grpc")

DETAILS_KEY = "grpc-status-details-bin"

_GRPC_CODE: dict[int, Any] = {int(c.value[0]): c for c in grpc.StatusCode}


def grpc_code(code: int) -> Any:
    """``grpc.StatusCode`` member of a canonical code number."""
    return _GRPC_CODE.get(code, grpc.StatusCode.UNKNOWN)


def _packed(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def status_details(
    code: int,
    message: str,
    request_id: str,
    field: str | None = None,
    retry_after: int | None = None,
) -> bytes:
    """A serialized ``google.rpc.Status`` with RequestInfo (BadRequest, RetryInfo)."""
    details = [_packed(error_details_pb2.RequestInfo(request_id=request_id))]
    if field:
        violation = error_details_pb2.BadRequest.FieldViolation(field=field, description=message)
        details.append(_packed(error_details_pb2.BadRequest(field_violations=[violation])))
    if retry_after is not None:
        delay = duration_pb2.Duration(seconds=retry_after)
        details.append(_packed(error_details_pb2.RetryInfo(retry_delay=delay)))
    status = status_pb2.Status(code=code, message=message, details=details)
    return bytes(status.SerializeToString())


async def abort(
    context: grpc.aio.ServicerContext,
    code: int,
    message: str,
    request_id: str,
    *,
    field: str | None = None,
    retry_after: int | None = None,
) -> NoReturn:
    """End the call with ``code`` and ``message`` (raises, as ``context.abort`` does)."""
    trailing: list[tuple[str, str | bytes]] = [
        ("x-request-id", request_id),
        ("x-kms-worker", str(os.getpid())),
        (DETAILS_KEY, status_details(code, message, request_id, field, retry_after)),
    ]
    if retry_after is not None:
        trailing.append(("retry-after", str(retry_after)))
    await context.abort(grpc_code(code), message, trailing_metadata=tuple(trailing))
    raise AssertionError("context.abort returned")  # it raises; for the type checker


async def abort_with(
    context: grpc.aio.ServicerContext, exc: KmsError, request_id: str, rpc: str
) -> NoReturn:
    """Render ``exc`` as the call's status; its ``log_detail`` goes to the log only."""
    code = int(exc.code)
    level = (
        logging.WARNING if code in (StatusCode.INTERNAL, StatusCode.UNAVAILABLE) else logging.INFO
    )
    log.log(
        level,
        "gRPC %s -> %s %s%s",
        rpc,
        code,
        type(exc).__name__,
        f" ({exc.log_detail})" if exc.log_detail else "",
        extra={"request_id": request_id},
    )
    await abort(
        context,
        code,
        exc.message,
        request_id,
        field=getattr(exc, "field", None),
        retry_after=exc.retry_after,
    )


async def abort_internal(context: grpc.aio.ServicerContext, request_id: str, rpc: str) -> NoReturn:
    """An unexpected exception (being handled): logged with its traceback, never sent."""
    log.exception("unhandled error in gRPC %s", rpc, extra={"request_id": request_id})
    await abort(context, int(StatusCode.INTERNAL), "internal error", request_id)
