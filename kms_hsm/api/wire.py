"""Proto3 JSON in and out: the only place that knows base64, camelCase and wire enums.

Input follows the proto3 JSON mapping as a transcoder applies it: camelCase or the
snake_case proto name, bytes as standard or URL-safe base64 (padding optional), enums by
name or number, int64 as a number or a string; unknown fields are rejected. Output uses
camelCase, standard padded base64, enum names, RFC 3339 UTC timestamps with ``Z``,
durations as ``"<seconds>s"``, and leaves out default-valued fields.
"""

from __future__ import annotations

import base64
import binascii
import enum
import functools
import json
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import orjson

from kms_hsm.domain import validation
from kms_hsm.domain.asymmetric import AsymmetricKey, KeyFamily
from kms_hsm.domain.fields import FieldError, check_identifier, check_text
from kms_hsm.domain.model import Key, KeyVersion
from kms_hsm.errors import InvalidArgument

E = TypeVar("E", bound=enum.IntEnum)
_B64_CHARS = re.compile(rb"[A-Za-z0-9+/_-]*={0,2}\Z")
# ASCII digits only: ``\d`` alone also takes other scripts' digits (Arabic-Indic "12s"
# was read as 12 s).
_DURATION = re.compile(r"(-?)([0-9]{1,12})(?:\.([0-9]{1,9}))?s\Z", re.ASCII)
_CAMEL = re.compile(r"_([a-z])")


def camel(name: str) -> str:
    """snake_case -> lowerCamelCase."""
    return _CAMEL.sub(lambda m: m.group(1).upper(), name)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for name, _ in pairs:
            if name in seen:
                raise FieldError(name, "given twice")
            seen.add(name)
    return obj


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object; empty body means ``{}``.

    orjson parses (and bounds nesting); a second pass refuses duplicate member names, as
    proto3 JSON parsers do, instead of silently keeping the last one.
    """
    if not raw.strip():
        return {}
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidArgument("request body is not valid JSON") from None
    if not isinstance(value, dict):
        raise InvalidArgument("request body must be a JSON object")
    # Before any recursive walk (the duplicate check below recurses; ~1,000 levels of
    # nesting with an escape in a name ran out of stack: 500). A body cannot nest deeper
    # than it has brackets, so the usual small body is not walked at all.
    if raw.count(b"{") + raw.count(b"[") > MAX_JSON_DEPTH:
        _check_depth(value)
    if _may_repeat_a_name(raw, value):
        json.loads(raw, object_pairs_hook=_no_duplicates)
    return value


# The deepest message any method takes nests 5 levels (UpdateAccessBindings' deltas).
MAX_JSON_DEPTH = 32


def _check_depth(value: Any) -> None:
    """InvalidArgument when ``value`` nests deeper than ``MAX_JSON_DEPTH`` (iteratively)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise InvalidArgument(f"request body nests deeper than {MAX_JSON_DEPTH} levels")
        if isinstance(item, dict):
            stack.extend((member, depth + 1) for member in item.values())
        elif isinstance(item, list):
            stack.extend((member, depth + 1) for member in item)


def _may_repeat_a_name(raw: bytes, value: Any) -> bool:
    """False only when no object in ``raw`` can hold a member name twice.

    Without backslashes every member name appears in ``raw`` exactly as ``"name"``, so a
    name found once cannot have been given twice; anything else gets the full check.
    """
    if b"\\" in raw:
        return True
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for name, member in item.items():
                if raw.count(b'"' + name.encode() + b'"') > 1:
                    return True
                stack.append(member)
        elif isinstance(item, list):
            stack.extend(item)
    return False


class Fields:
    """Typed, named access to the fields of one request message."""

    def __init__(self, data: dict[str, Any], names: tuple[str, ...]) -> None:
        allowed = _accepted_names(names)
        values: dict[str, Any] = {}
        for key, value in data.items():
            canonical = allowed.get(key)
            if canonical is None:
                raise FieldError(key, "unknown field")
            if canonical in values:
                raise FieldError(canonical, "given twice")
            values[canonical] = value
        self._values = values

    def _get(self, name: str, required: bool) -> Any:
        value = self._values.get(name)
        if value is None and required:
            raise FieldError(name, "is required")
        return value

    def string(self, name: str, *, required: bool = False, max_len: int | None = None) -> str:
        """A string field ("" when absent)."""
        value = self._get(name, required)
        if value is None:
            return ""
        if not isinstance(value, str):
            raise FieldError(name, "must be a string")
        if required and not value:
            raise FieldError(name, "is required")
        return check_text(name, value, max_len)

    def identifier(
        self, name: str, *, required: bool = False, max_len: int = validation.MAX_ID
    ) -> str:
        """An id field ("" when absent): 1..``max_len`` of ``[A-Za-z0-9_-]``."""
        return check_identifier(name, self.string(name, required=required), max_len)

    def bytes_(self, name: str, *, required: bool = False, max_len: int | None = None) -> bytes:
        """A base64 bytes field (b"" when absent)."""
        value = self._get(name, required)
        if value is None:
            return b""
        if not isinstance(value, str):
            raise FieldError(name, "must be a base64 string")
        decoded = decode_base64(name, value)
        if required and not decoded:
            raise FieldError(name, "is required")
        if max_len is not None and len(decoded) > max_len:
            raise FieldError(name, f"must be at most {max_len} bytes")
        return decoded

    def boolean(self, name: str) -> bool:
        """A bool field (False when absent)."""
        value = self._get(name, False)
        if value is None:
            return False
        if not isinstance(value, bool):
            raise FieldError(name, "must be true or false")
        return value

    def enum(self, name: str, enum_type: type[E], *, required: bool = False) -> E:
        """An enum field by name or number (the zero value when absent)."""
        value = self._get(name, required)
        if value is None:
            return enum_type(0)
        try:
            if isinstance(value, str):
                return enum_type[value]
            if isinstance(value, int) and not isinstance(value, bool):
                return enum_type(value)
        except (KeyError, ValueError):
            pass
        names = ", ".join(m.name for m in enum_type)
        raise FieldError(name, f"must be one of {names}")

    def labels(self, name: str) -> dict[str, str]:
        """A map<string,string> field."""
        value = self._get(name, False)
        if value is None:
            return {}
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            raise FieldError(name, "must be an object of string values")
        for k, v in value.items():
            check_text(name, k)
            check_text(name, v)
        return dict(value)

    def duration(self, name: str) -> timedelta | None:
        """A google.protobuf.Duration field ("86400s"), None when absent."""
        value = self._get(name, False)
        if value is None:
            return None
        if not isinstance(value, str):
            raise FieldError(name, 'must be a duration string such as "86400s"')
        return parse_duration(name, value)

    def list_(self, name: str, *, required: bool = False) -> list[Any]:
        """A repeated field ([] when absent)."""
        value = self._get(name, required)
        if value is None:
            return []
        if not isinstance(value, list):
            raise FieldError(name, "must be an array")
        if required and not value:
            raise FieldError(name, "is required")
        return value

    def present(self, name: str) -> bool:
        """True when the field was sent (even as its default value)."""
        return name in self._values


class Query:
    """Typed, named access to query parameters (List requests)."""

    def __init__(self, params: Mapping[str, str], names: Iterable[str]) -> None:
        allowed = {}
        for name in names:
            allowed[name] = name
            allowed[_snake(name)] = name
        self._values: dict[str, str] = {}
        for key, value in params.items():
            canonical = allowed.get(key)
            if canonical is None:
                raise FieldError(key, "unknown query parameter")
            self._values[canonical] = value

    def string(self, name: str, *, required: bool = False, max_len: int | None = None) -> str:
        """A string parameter ("" when absent)."""
        value = self._values.get(name, "")
        if required and not value:
            raise FieldError(name, "is required")
        return check_text(name, value, max_len)

    def identifier(
        self, name: str, *, required: bool = False, max_len: int = validation.MAX_ID
    ) -> str:
        """An id parameter ("" when absent): 1..``max_len`` of ``[A-Za-z0-9_-]``."""
        return check_identifier(name, self.string(name, required=required), max_len)

    def integer(self, name: str) -> int:
        """An int64 parameter (0 when absent)."""
        value = self._values.get(name, "")
        if not value:
            return 0
        if not re.fullmatch(r"-?[0-9]{1,18}", value):
            raise FieldError(name, "must be an integer")
        return int(value)


@functools.cache
def _accepted_names(names: tuple[str, ...]) -> dict[str, str]:
    """Each accepted JSON name (camelCase and snake_case) -> the field's camelCase name."""
    accepted = {}
    for name in names:
        accepted[name] = name
        accepted[_snake(name)] = name
    return accepted


def _snake(name: str) -> str:
    return re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), name)


def decode_base64(field: str, value: str) -> bytes:
    """Standard or URL-safe base64, padding optional, as proto3 JSON parsers accept."""
    # Standard padded base64, what clients send, in one strict call (a fifth of the
    # general path's cost); it accepts padding beyond a full group, which the general
    # path refuses, hence the "===" test. Anything else takes the general path.
    if not value.endswith("==="):
        try:
            return binascii.a2b_base64(value, strict_mode=True)
        except (binascii.Error, ValueError):
            pass
    return decode_any_base64(field, value)


def decode_any_base64(field: str, value: str) -> bytes:
    """``decode_base64`` without its fast path for standard padded base64."""
    raw = value.encode("ascii", "replace")
    if not _B64_CHARS.match(raw):
        raise FieldError(field, "is not valid base64")
    raw = raw.replace(b"-", b"+").replace(b"_", b"/").rstrip(b"=")
    raw += b"=" * (-len(raw) % 4)
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise FieldError(field, "is not valid base64") from None


def parse_duration(field: str, value: str) -> timedelta:
    """A proto3 JSON Duration: decimal seconds with an ``s`` suffix."""
    match = _DURATION.match(value)
    if not match:
        raise FieldError(field, 'must be a duration string such as "86400s"')
    sign, seconds, fraction = match.groups()
    nanos = (fraction or "").ljust(9, "0")
    if nanos[6:] != "000":
        # Kept in microseconds: a finer duration is refused, never silently cut.
        raise FieldError(field, "must not be finer than a microsecond")
    micros = int(nanos[:6])
    delta = timedelta(seconds=int(seconds), microseconds=micros)
    return -delta if sign else delta


def b64(data: bytes) -> str:
    """Standard padded base64."""
    return base64.b64encode(data).decode("ascii")


def timestamp(value: datetime) -> str:
    """RFC 3339 in UTC with ``Z`` and 0, 3 or 6 fractional digits."""
    value = value.astimezone(UTC)
    text = value.strftime("%Y-%m-%dT%H:%M:%S")
    if value.microsecond:
        frac = f"{value.microsecond:06d}"
        text += "." + (frac[:3] if frac.endswith("000") else frac)
    return text + "Z"


def duration(value: timedelta) -> str:
    """``"<seconds>s"``, with a fraction only when there is one."""
    total = value.total_seconds()
    return f"{int(total)}s" if total == int(total) else f"{total:.6f}".rstrip("0") + "s"


def compact(message: dict[str, Any]) -> dict[str, Any]:
    """Leave out default-valued fields, as proto3 JSON printers do."""
    return {k: v for k, v in message.items() if v not in (None, "", False, 0, {}, [])}


def version_json(version: KeyVersion) -> dict[str, Any]:
    """``SymmetricKeyVersion``."""
    return compact(
        {
            "id": version.id,
            "keyId": version.key_id,
            "status": version.status.name,
            "algorithm": version.algorithm.name,
            "createdAt": timestamp(version.created_at),
            "primary": version.primary,
            "destroyAt": timestamp(version.destroy_at) if version.destroy_at else None,
            "hostedByHsm": version.hosted_by_hsm,
        }
    )


def key_json(key: Key) -> dict[str, Any]:
    """``SymmetricKey``."""
    return compact(
        {
            "id": key.id,
            "folderId": key.folder_id,
            "createdAt": timestamp(key.created_at),
            "name": key.name,
            "description": key.description,
            "labels": key.labels,
            "status": key.status.name,
            "primaryVersion": version_json(key.primary_version) if key.primary_version else None,
            "defaultAlgorithm": key.default_algorithm.name,
            "rotatedAt": timestamp(key.rotated_at) if key.rotated_at else None,
            "rotationPeriod": duration(key.rotation_period) if key.rotation_period else None,
            "deletionProtection": key.deletion_protection,
        }
    )


def key_pair_json(key: AsymmetricKey) -> dict[str, Any]:
    """``AsymmetricSignatureKey`` or ``AsymmetricEncryptionKey``: the algorithm field by family."""
    algorithm_field = (
        "signatureAlgorithm"
        if key.family is KeyFamily.ASYMMETRIC_SIGNATURE
        else "encryptionAlgorithm"
    )
    return compact(
        {
            "id": key.id,
            "folderId": key.folder_id,
            "createdAt": timestamp(key.created_at),
            "name": key.name,
            "description": key.description,
            "labels": key.labels,
            "status": key.status.name,
            algorithm_field: key.algorithm.name,
            "deletionProtection": key.deletion_protection,
        }
    )


def dumps(message: dict[str, Any]) -> bytes:
    """Serialize a JSON message."""
    return orjson.dumps(message)
