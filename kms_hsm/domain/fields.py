"""Request field rules whose messages name the field: the same answer on every transport.

A field is named as the proto3 JSON (camelCase) spelling has it, which is also what the REST
reference uses, so REST and gRPC refuse the same request with the same message.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from kms_hsm.domain import validation
from kms_hsm.errors import InvalidArgument


class FieldError(InvalidArgument):
    """A bad request field; ``field`` is its JSON name."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        super().__init__(f"{field}: {problem}")


def check_text(field: str, value: str, max_len: int | None = None) -> str:
    """A text value: within ``max_len`` characters and free of NUL (no database stores it)."""
    if max_len is not None and len(value) > max_len:
        raise FieldError(field, f"must be at most {max_len} characters")
    if "\x00" in value:
        raise FieldError(field, "must not contain NUL characters")
    return value


def check_identifier(field: str, value: str, max_len: int = validation.MAX_ID) -> str:
    """An id value ("" passes: required-ness is the caller's): ``validation.is_id``."""
    if value and not validation.is_id(value, max_len):
        raise FieldError(field, f"must be 1..{max_len} {validation.ID_RULE}")
    return value


def required_id(field: str, value: str, max_len: int = validation.MAX_ID) -> str:
    """An id that must be there: the resource a request is about (a REST path segment)."""
    if not validation.is_id(value, max_len):
        raise FieldError(field, f"must be 1..{max_len} {validation.ID_RULE}")
    return value


def required(field: str, value: str | bytes) -> None:
    """FieldError "is required" for an empty value (proto3 has no other absence)."""
    if not value:
        raise FieldError(field, "is required")


def field_mask(field: str, paths: Iterable[str], allowed: Mapping[str, str]) -> frozenset[str]:
    """FieldMask paths as service field names (``allowed``: path -> field name)."""
    names = set()
    for path in paths:
        path = path.strip()
        if path not in allowed:
            raise FieldError(field, f"unknown path {path!r}; allowed: {', '.join(allowed)}")
        names.add(allowed[path])
    if not names:
        raise FieldError(field, "is required")
    return frozenset(names)
