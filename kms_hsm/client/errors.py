"""The server's errors, raised on the client side by their gRPC code.

The REST error body is ``google.rpc.Status`` JSON: ``{"code", "message", "details"}``. The
class is chosen by ``code`` (not by the HTTP status, which several codes share), from
``kms_hsm.errors`` where the server has one, else from the few classes below. Every error
raised here also carries ``http_status``, ``request_id`` (the server's ``x-request-id``, for
its log) and ``field`` (the field a BadRequest detail names) as attributes, None when unknown.
"""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

from kms_hsm.errors import (
    Aborted,
    AlreadyExists,
    BackendUnavailable,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    KmsError,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    StatusCode,
    Unauthenticated,
)

__all__ = [
    "Cancelled",
    "DataLoss",
    "DeadlineExceeded",
    "OutOfRange",
    "Unimplemented",
    "Unknown",
    "error_for",
    "error_from_response",
    "retry_after_seconds",
]


class Cancelled(KmsError):
    """The server says the call was cancelled."""

    default_message = "cancelled"
    code = StatusCode.CANCELLED


class Unknown(KmsError):
    """An error the server did not classify (or an HTTP error without a Status body)."""

    default_message = "unknown error"
    code = StatusCode.UNKNOWN


class OutOfRange(KmsError):
    """A value is past the valid range."""

    default_message = "out of range"
    code = StatusCode.OUT_OF_RANGE


class Unimplemented(KmsError):
    """The server does not serve this method (or this HTTP method on this path)."""

    default_message = "not implemented"
    code = StatusCode.UNIMPLEMENTED


class DataLoss(KmsError):
    """Unrecoverable data loss or corruption."""

    default_message = "data loss"
    code = StatusCode.DATA_LOSS


class DeadlineExceeded(BackendUnavailable):
    """The call's deadline (the client's ``timeout``) passed before an answer came.

    A ``BackendUnavailable`` so that one ``except BackendUnavailable`` covers every "the KMS
    did not answer in time" case; its code is DEADLINE_EXCEEDED. For a call that changes
    state the change may or may not have happened.
    """

    default_message = "deadline exceeded"
    code = StatusCode.DEADLINE_EXCEEDED


_BY_CODE: dict[int, type[KmsError]] = {
    StatusCode.CANCELLED: Cancelled,
    StatusCode.UNKNOWN: Unknown,
    StatusCode.INVALID_ARGUMENT: InvalidArgument,
    StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    StatusCode.NOT_FOUND: NotFound,
    StatusCode.ALREADY_EXISTS: AlreadyExists,
    StatusCode.PERMISSION_DENIED: PermissionDenied,
    StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    StatusCode.ABORTED: Aborted,
    StatusCode.OUT_OF_RANGE: OutOfRange,
    StatusCode.UNIMPLEMENTED: Unimplemented,
    StatusCode.INTERNAL: Internal,
    StatusCode.UNAVAILABLE: BackendUnavailable,
    StatusCode.DATA_LOSS: DataLoss,
    StatusCode.UNAUTHENTICATED: Unauthenticated,
}

# When a body is not a Status (a proxy's HTML page, an empty 502): the code by HTTP status.
_CODE_BY_HTTP = {
    400: StatusCode.INVALID_ARGUMENT,
    401: StatusCode.UNAUTHENTICATED,
    403: StatusCode.PERMISSION_DENIED,
    404: StatusCode.NOT_FOUND,
    405: StatusCode.UNIMPLEMENTED,
    409: StatusCode.ALREADY_EXISTS,
    412: StatusCode.FAILED_PRECONDITION,
    413: StatusCode.INVALID_ARGUMENT,
    429: StatusCode.RESOURCE_EXHAUSTED,
    499: StatusCode.CANCELLED,
    500: StatusCode.INTERNAL,
    501: StatusCode.UNIMPLEMENTED,
    502: StatusCode.UNAVAILABLE,
    503: StatusCode.UNAVAILABLE,
    504: StatusCode.DEADLINE_EXCEEDED,
}


def error_for(
    code: int,
    message: str,
    *,
    retry_after: int | None = None,
    http_status: int | None = None,
    request_id: str | None = None,
    details: Sequence[Mapping[str, Any]] = (),
) -> KmsError:
    """The ``KmsError`` subclass for gRPC ``code``, with the server's message."""
    cls = _BY_CODE.get(code, Unknown)
    err = cls(message or None)
    if retry_after is not None:
        err.retry_after = retry_after
    field = None
    for d in details:
        if str(d.get("@type", "")).endswith("google.rpc.BadRequest"):
            violations = d.get("fieldViolations") or []
            if violations and isinstance(violations[0], Mapping):
                field = violations[0].get("field")
        if request_id is None and str(d.get("@type", "")).endswith("google.rpc.RequestInfo"):
            request_id = d.get("requestId")
    # Plain attributes, so that the classes stay the server's own.
    vars(err).update(http_status=http_status, request_id=request_id, field=field)
    return err


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """An HTTP ``Retry-After`` (delta-seconds or HTTP-date) as seconds from now; None if absent."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def error_from_response(
    http_status: int, headers: Mapping[str, str], body: bytes, *, secret: str | None = None
) -> KmsError:
    """The error of a non-2xx answer; ``secret`` (the bearer token) never reaches the message."""
    parsed: Any = None
    try:
        parsed = json.loads(body) if body else None
    except ValueError:
        parsed = None
    retry = retry_after_seconds(headers.get("retry-after"))
    retry_after = int(retry + 0.999) if retry is not None else None
    request_id = headers.get("x-request-id")
    if isinstance(parsed, dict) and isinstance(parsed.get("code"), int):
        code = parsed["code"]
        message = str(parsed.get("message", ""))
        details = [d for d in parsed.get("details") or () if isinstance(d, Mapping)]
    else:
        fallback = StatusCode.INTERNAL if http_status >= 500 else StatusCode.UNKNOWN
        code = _CODE_BY_HTTP.get(http_status, fallback)
        message = f"HTTP {http_status} without a Status body from the server"
        details = []
    if secret and secret in message:
        message = message.replace(secret, "***")
    return error_for(
        code,
        message,
        retry_after=retry_after,
        http_status=http_status,
        request_id=request_id,
        details=details,
    )
