"""The one table from kms-hsm errors to gRPC codes and HTTP statuses."""

from __future__ import annotations

from kms_hsm import errors

# gRPC status code -> HTTP status, as Yandex Cloud publishes it.
HTTP_STATUS_BY_GRPC_CODE: dict[int, int] = {
    1: 499,
    2: 500,
    3: 400,
    4: 504,
    5: 404,
    6: 409,
    7: 403,
    8: 429,
    9: 400,
    10: 409,
    11: 400,
    12: 501,
    13: 500,
    14: 503,
    15: 500,
    16: 401,
}

# Most specific class first: DecryptionFailed is an InvalidArgument.
GRPC_CODE_BY_ERROR: dict[type[errors.KmsError], int] = {
    errors.DecryptionFailed: 3,
    errors.InvalidArgument: 3,
    errors.NotFound: 5,
    errors.AlreadyExists: 6,
    errors.PermissionDenied: 7,
    errors.ResourceExhausted: 8,
    errors.FailedPrecondition: 9,
    errors.Aborted: 10,
    errors.Internal: 13,
    errors.BackendUnavailable: 14,
    errors.Unauthenticated: 16,
    errors.KmsError: 13,
}


def grpc_code(error: errors.KmsError) -> int:
    """The gRPC code for ``error`` (walks the class hierarchy)."""
    for klass in type(error).__mro__:
        code = GRPC_CODE_BY_ERROR.get(klass)
        if code is not None:
            return code
    return 13


def http_status(code: int) -> int:
    """The HTTP status Yandex uses for gRPC ``code``."""
    return HTTP_STATUS_BY_GRPC_CODE.get(code, 500)
