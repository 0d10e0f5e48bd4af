"""Field rules of the Yandex KMS v1 contract, checked again behind the API schemas."""

from __future__ import annotations

import re
from datetime import timedelta

from kms_hsm.domain.model import SUPPORTED_ALGORITHMS, Algorithm
from kms_hsm.errors import InvalidArgument

MAX_ID = 50
MAX_RESOURCE_ID = 64  # access.proto's resourceId
MAX_SUBJECT_ID = 100  # access.proto's Subject.id
MAX_NAME = 100
MAX_DESCRIPTION = 1024
MAX_LABELS = 64
MAX_PLAINTEXT = 32768
MAX_AAD = 8192
# Largest request any transport reads (REST body, gRPC message): base64 of 32 KiB plaintext
# plus two 8 KiB contexts, or a ciphertext of that size, with room to spare.
MAX_MESSAGE_BYTES = 256 * 1024
_LABEL_KEY = re.compile(r"[a-z][-_0-9a-z]{0,62}\Z")
_LABEL_VALUE = re.compile(r"[-_0-9a-z]{0,63}\Z")


# Yandex ids are Latin letters and digits; '_' and '-' keep client-chosen ids such as
# folder "b1g-demo" valid. Nothing else: '/' and ':' are URL syntax here, and control
# characters or spaces in an id would split or forge log and audit lines.
_ID = re.compile(r"[A-Za-z0-9_-]+")
ID_RULE = "characters of A-Z, a-z, 0-9, '_' and '-'"


def is_id(value: str, max_len: int = MAX_ID) -> bool:
    """True when ``value`` is a well-formed identifier of 1..``max_len`` characters."""
    return 0 < len(value) <= max_len and _ID.fullmatch(value) is not None


def check_id(field: str, value: str, *, required: bool = True, max_len: int = MAX_ID) -> str:
    """An id field: required unless told otherwise, 1..``max_len`` of ``[A-Za-z0-9_-]``."""
    if not value:
        if required:
            raise InvalidArgument(f"{field} is required")
        return value
    if not is_id(value, max_len):
        raise InvalidArgument(f"{field} must be 1..{max_len} {ID_RULE}")
    return value


def check_bytes(field: str, value: bytes | None, limit: int) -> bytes:
    """A bytes field of at most ``limit`` bytes; None means empty."""
    value = value or b""
    if len(value) > limit:
        raise InvalidArgument(f"{field} must be at most {limit} bytes")
    return value


def check_key_fields(name: str, description: str, labels: dict[str, str]) -> None:
    """Name, description and labels as the contract limits them."""
    if len(name) > MAX_NAME:
        raise InvalidArgument(f"name must be at most {MAX_NAME} characters")
    if len(description) > MAX_DESCRIPTION:
        raise InvalidArgument(f"description must be at most {MAX_DESCRIPTION} characters")
    if len(labels) > MAX_LABELS:
        raise InvalidArgument(f"labels must have at most {MAX_LABELS} entries")
    for k, v in labels.items():
        if not _LABEL_KEY.match(k):
            raise InvalidArgument(f"labels key {k!r} must match [a-z][-_0-9a-z]* (at most 63)")
        if not _LABEL_VALUE.match(v):
            raise InvalidArgument(f"labels value for {k!r} must match [-_0-9a-z]* (at most 63)")


def check_algorithm(field: str, algorithm: Algorithm) -> Algorithm:
    """An algorithm this service can create versions with."""
    if algorithm not in SUPPORTED_ALGORITHMS:
        raise InvalidArgument(
            f"{field} must be one of " + ", ".join(a.name for a in sorted(SUPPORTED_ALGORITHMS))
        )
    return algorithm


# The contract sets no maximum; ten years keeps every due date computable and storable.
MAX_ROTATION_PERIOD = timedelta(days=3650)


def check_rotation_period(period: timedelta | None) -> timedelta | None:
    """A positive whole number of seconds up to ten years, or None for no rotation."""
    if period is None:
        return None
    if period <= timedelta(0) or period.microseconds:
        raise InvalidArgument("rotationPeriod must be a positive whole number of seconds")
    if period > MAX_ROTATION_PERIOD:
        raise InvalidArgument(
            f"rotationPeriod must be at most {int(MAX_ROTATION_PERIOD.total_seconds())}s"
        )
    return period
