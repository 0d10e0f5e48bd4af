"""The one error hierarchy of kms-hsm.

Every error raised by the domain, crypto, store and service layers is a ``KmsError``.
Each carries a short ``message`` that is safe to show a client and an optional
``log_detail`` that goes only to the server log. Status codes (gRPC and HTTP) are
assigned in exactly one place: ``kms_hsm.api.status``.
"""

from __future__ import annotations


class KmsError(Exception):
    """Base of every error kms-hsm raises on purpose."""

    default_message = "internal error"

    def __init__(self, message: str | None = None, *, log_detail: str | None = None) -> None:
        self.message = message or self.default_message
        self.log_detail = log_detail
        super().__init__(self.message)


class InvalidArgument(KmsError):
    """A request field is malformed or out of range; the message names the field."""

    default_message = "invalid argument"


class NotFound(KmsError):
    """The named resource does not exist (or the caller may not know that it does)."""

    default_message = "not found"


class AlreadyExists(KmsError):
    """A resource with the same identity exists already."""

    default_message = "already exists"


class FailedPrecondition(KmsError):
    """The resource is in a state that forbids the request (inactive key, destroyed version)."""

    default_message = "failed precondition"


class DecryptionFailed(InvalidArgument):
    """Any authentication failure while decrypting; one message whatever check failed."""

    default_message = "ciphertext is invalid or was not produced with this key and context"

    def __init__(self, *, log_detail: str | None = None) -> None:
        super().__init__(self.default_message, log_detail=log_detail)


class Unauthenticated(KmsError):
    """No credentials, or credentials that are not valid."""

    default_message = "authentication required: send Authorization: Bearer <token>"


class PermissionDenied(KmsError):
    """A known principal lacks the role the request needs."""

    default_message = "permission denied"


class ResourceExhausted(KmsError):
    """A quota or capacity limit was reached."""

    default_message = "resource exhausted"


class Aborted(KmsError):
    """A concurrent change won; the caller may retry."""

    default_message = "concurrent modification, retry"


class BackendUnavailable(KmsError):
    """The HSM or the database cannot serve now; the caller should retry later."""

    default_message = "the key store is temporarily unavailable, retry later"


class Internal(KmsError):
    """A bug or an unexpected state; details only in the server log."""

    default_message = "internal error"
