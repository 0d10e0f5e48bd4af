"""The one table from gRPC status codes (each error's canonical ``code``) to HTTP statuses."""

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


def grpc_code(error: errors.KmsError) -> int:
    """The gRPC code for ``error`` (the class's canonical code)."""
    return int(error.code)


def http_status(code: int) -> int:
    """The HTTP status Yandex uses for gRPC ``code``."""
    return HTTP_STATUS_BY_GRPC_CODE.get(code, 500)
