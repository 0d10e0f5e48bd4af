"""The one table from python-pkcs11 exceptions to what the session manager does about them.

Three kinds of failure matter to the service:

* ``DEVICE``: the module, token, session or login is gone. The session manager
  reinitialises the library once and retries once; if that fails the caller gets
  ``BackendUnavailable`` (503/14).
* ``OBJECT``: a cached handle points at nothing (the object was destroyed, maybe by another
  process). The handle is dropped and looked up again once.
* ``INPUT``: the token refused the data. On a decrypt path that is ``DecryptionFailed``.
  Note that SoftHSM2 reports a GCM tag/AAD mismatch as ``CKR_GENERAL_ERROR``, so
  ``GeneralError`` is an input failure only where the caller says it is decrypting
  (``translate(..., decrypting=True)``); elsewhere it is a device fault.

Anything not in the table is treated as a device fault: unknown means "retry later",
never a raw library error in a response.
"""

from __future__ import annotations

import enum

from pkcs11 import exceptions as p11

from kms_hsm.errors import BackendUnavailable, DecryptionFailed, KmsError


class FailureKind(enum.Enum):
    """What the session manager does with a failed call."""

    DEVICE = "device"
    OBJECT = "object"
    INPUT = "input"


FAILURE_KINDS: dict[type[p11.PKCS11Error], FailureKind] = {
    p11.DeviceRemoved: FailureKind.DEVICE,
    p11.DeviceError: FailureKind.DEVICE,
    p11.DeviceMemory: FailureKind.DEVICE,
    p11.TokenNotPresent: FailureKind.DEVICE,
    p11.TokenNotRecognised: FailureKind.DEVICE,
    p11.SessionHandleInvalid: FailureKind.DEVICE,
    p11.SessionClosed: FailureKind.DEVICE,
    p11.SessionCount: FailureKind.DEVICE,
    p11.UserNotLoggedIn: FailureKind.DEVICE,
    p11.NoSuchToken: FailureKind.DEVICE,
    p11.FunctionFailed: FailureKind.DEVICE,
    p11.HostMemory: FailureKind.DEVICE,
    p11.ObjectHandleInvalid: FailureKind.OBJECT,
    p11.KeyHandleInvalid: FailureKind.OBJECT,
    p11.WrappingKeyHandleInvalid: FailureKind.OBJECT,
    p11.UnwrappingKeyHandleInvalid: FailureKind.OBJECT,
    p11.NoSuchKey: FailureKind.OBJECT,
    p11.EncryptedDataInvalid: FailureKind.INPUT,
    p11.EncryptedDataLenRange: FailureKind.INPUT,
    p11.WrappedKeyInvalid: FailureKind.INPUT,
    p11.WrappedKeyLenRange: FailureKind.INPUT,
    p11.DataInvalid: FailureKind.INPUT,
    p11.DataLenRange: FailureKind.INPUT,
}


def failure_kind(exc: p11.PKCS11Error, *, decrypting: bool) -> FailureKind:
    """Classify ``exc``; ``GeneralError`` is an input failure only while decrypting."""
    if decrypting and isinstance(exc, p11.GeneralError):
        return FailureKind.INPUT
    for klass in type(exc).__mro__:
        kind = FAILURE_KINDS.get(klass)
        if kind is not None:
            return kind
    return FailureKind.DEVICE


def to_kms_error(exc: p11.PKCS11Error, *, decrypting: bool) -> KmsError:
    """The error a client sees for ``exc`` once retries are exhausted."""
    detail = f"{type(exc).__name__}: {exc}"
    if failure_kind(exc, decrypting=decrypting) is FailureKind.INPUT and decrypting:
        return DecryptionFailed(log_detail=detail)
    return BackendUnavailable(log_detail=detail)


def is_refusal(exc: p11.PKCS11Error) -> bool:
    """The token declined a request (a policy or template answer), not a device or handle fault."""
    return not any(
        isinstance(exc, known)
        for known, kind in FAILURE_KINDS.items()
        if kind is not FailureKind.INPUT
    )
