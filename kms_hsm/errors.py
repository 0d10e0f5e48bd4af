"""The one error hierarchy of kms-hsm.

Every error raised by the domain, crypto, store and service layers is a ``KmsError``.
Each carries a short ``message`` that is safe to show a client, an optional
``log_detail`` that goes only to the server log, and its canonical gRPC status ``code``
(what a gRPC client sees, and what the audit trail records as the outcome). The HTTP
status for each code is decided in one place: ``kms_hsm.api.status``.
"""

from __future__ import annotations

from enum import IntEnum
from typing import ClassVar


class StatusCode(IntEnum):
    """The canonical gRPC status codes (google.rpc.Code)."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class KmsError(Exception):
    """Base of every error kms-hsm raises on purpose."""

    default_message = "internal error"
    code: ClassVar[StatusCode] = StatusCode.INTERNAL
    # Whole seconds after which a retry may succeed (HTTP Retry-After); None: not known.
    retry_after: int | None = None

    def __init__(self, message: str | None = None, *, log_detail: str | None = None) -> None:
        self.message = message or self.default_message
        self.log_detail = log_detail
        super().__init__(self.message)


class InvalidArgument(KmsError):
    """A request field is malformed or out of range; the message names the field."""

    default_message = "invalid argument"
    code = StatusCode.INVALID_ARGUMENT


class NotFound(KmsError):
    """The named resource does not exist (or the caller may not know that it does)."""

    default_message = "not found"
    code = StatusCode.NOT_FOUND


class AlreadyExists(KmsError):
    """A resource with the same identity exists already."""

    default_message = "already exists"
    code = StatusCode.ALREADY_EXISTS


class FailedPrecondition(KmsError):
    """The resource is in a state that forbids the request (inactive key, destroyed version)."""

    default_message = "failed precondition"
    code = StatusCode.FAILED_PRECONDITION


class KeyMaterialMissing(FailedPrecondition):
    """The token holds no object for a version that the database says exists."""

    default_message = "the key version's material is not present in the HSM"


class DecryptionFailed(InvalidArgument):
    """Any authentication failure while decrypting; one message whatever check failed."""

    default_message = "ciphertext is invalid or was not produced with this key and context"

    def __init__(self, *, log_detail: str | None = None) -> None:
        super().__init__(self.default_message, log_detail=log_detail)


class Unauthenticated(KmsError):
    """No credentials, or credentials that are not valid."""

    default_message = "authentication required: send Authorization: Bearer <token>"
    code = StatusCode.UNAUTHENTICATED


class PermissionDenied(KmsError):
    """A known principal lacks the role the request needs."""

    default_message = "permission denied"
    code = StatusCode.PERMISSION_DENIED


class ResourceExhausted(KmsError):
    """A quota or capacity limit was reached; ``retry_after`` says when it lets go."""

    default_message = "resource exhausted"
    code = StatusCode.RESOURCE_EXHAUSTED

    def __init__(
        self,
        message: str | None = None,
        *,
        retry_after: int | None = None,
        log_detail: str | None = None,
    ) -> None:
        super().__init__(message, log_detail=log_detail)
        self.retry_after = retry_after


class Aborted(KmsError):
    """A concurrent change won; the caller may retry."""

    default_message = "concurrent modification, retry"
    code = StatusCode.ABORTED


class BackendUnavailable(KmsError):
    """The HSM or the database cannot serve now; the caller should retry later."""

    default_message = "the key store is temporarily unavailable, retry later"
    code = StatusCode.UNAVAILABLE


class LoginRefused(BackendUnavailable):
    """The token refused the PIN: retrying would only burn PIN attempts (HSMs lock or
    zeroise after a few), so nothing logs in again until the PIN is fixed and the service
    restarted."""


class Internal(KmsError):
    """A bug or an unexpected state; details only in the server log."""

    default_message = "internal error"
    code = StatusCode.INTERNAL
