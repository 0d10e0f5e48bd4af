"""Process-wide logging set-up, shared by the CLI and the uvicorn workers it spawns."""

from __future__ import annotations

import json
import logging
import sys
import time
from types import TracebackType

import orjson

# Request paths, ids and other client strings reach log messages. Each control character
# (C0, DEL, C1 and Unicode's line and paragraph separators) is written as an escape, and
# so is the backslash, so that no client can end a line, forge the next one or recolour a
# terminal, and an escape in the log always means the byte was sent.
_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))}
_ESCAPES.update({0x5C: "\\\\", 0x2028: "\\u2028", 0x2029: "\\u2029"})
_ESCAPES_KEEPING_NEWLINES = {c: e for c, e in _ESCAPES.items() if c != 0x0A}

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]


def escape(text: str) -> str:
    """``text`` on one line: control characters and backslashes escaped."""
    return text.translate(_ESCAPES)


class EscapingFormatter(logging.Formatter):
    """One record, one line; tracebacks follow as lines indented by two spaces.

    A traceback's own lines are kept, but every one of them is indented, so that a line
    starting in the first column is always the start of a record.
    """

    def formatMessage(self, record: logging.LogRecord) -> str:
        """The record's line with every control character escaped."""
        return escape(super().formatMessage(record))

    def formatException(self, ei: ExcInfo | tuple[None, None, None]) -> str:
        """The traceback, control characters escaped and every line indented."""
        return _indented(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        """The stack, control characters escaped and every line indented."""
        return _indented(super().formatStack(stack_info))


def _indented(text: str) -> str:
    return "\n".join("  " + line for line in text.translate(_ESCAPES_KEEPING_NEWLINES).split("\n"))


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, pid, message, and a call's fields.

    JSON escapes every control character (and, ASCII only, U+2028/U+2029 and C1); DEL is
    escaped here too, so a record is always exactly one line. A traceback is a string
    field of the same object.
    """

    def format(self, record: logging.LogRecord) -> str:
        """The record as one JSON line."""
        entry: dict[str, object] = {
            "time": _utc(record.created),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        fields = getattr(record, "call", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        try:
            text = orjson.dumps(entry, default=str).decode()
        except TypeError:  # what orjson cannot write (a huge int, a non-str key)
            text = ""
        if not text.isascii():  # orjson writes UTF-8 as is: U+2028, C1 and the rest
            text = json.dumps(entry, ensure_ascii=True, default=str)
        return text.replace("\x7f", "\\u007f")


_second: tuple[int, str] = (-1, "")


def _utc(created: float) -> str:
    global _second
    seconds = int(created)
    if _second[0] != seconds:  # formatted once a second
        _second = (seconds, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)))
    return f"{_second[1]}.{int((created - seconds) * 1000):03d}Z"


# One record per finished API call. In JSON it is the access log (INFO); in text, where a
# line per call would crowd out everything else, it appears only at DEBUG.
CALLS = logging.getLogger("kms_hsm.calls")
_call_level = logging.DEBUG
_json_calls = False


def log_call(
    *,
    request_id: str,
    principal: str,
    method: str,
    transport: str,
    key_id: str,
    outcome: str,
    seconds: float,
) -> None:
    """The record of one finished API call: ids, outcome (gRPC code name) and duration.

    Never a request's payload: no plaintext, ciphertext, AAD, data key or credential.
    """
    level = _call_level
    if not CALLS.isEnabledFor(level):
        return
    duration_ms = round(seconds * 1000, 3)
    transport = transport or "direct"
    args: tuple[object, ...]
    if _json_calls:
        # The fields carry the facts; the message only names the call.
        message, args = "%s %s", (method, outcome)
    else:
        message = "%s %s %s %.3fms key=%s principal=%s request=%s"
        args = (
            method,
            transport,
            outcome,
            duration_ms,
            key_id or "-",
            principal or "-",
            request_id,
        )
    # Built directly: Logger.log would walk the stack for a caller nobody prints (one call
    # record per request: this is the hot path of the JSON format).
    record = logging.LogRecord(CALLS.name, level, __file__, 0, message, args, None)
    record.call = {
        "request_id": request_id,
        "principal": principal,
        "method": method,
        "transport": transport,
        "key_id": key_id,
        "outcome": outcome,
        "duration_ms": duration_ms,
    }
    CALLS.handle(record)


def configure_logging(level: str, log_format: str = "text") -> None:
    """Log to stderr, one record a line with the process id (workers told apart):
    escaped text, or with ``log_format="json"`` one JSON object a line."""
    global _call_level, _json_calls
    root = logging.getLogger()
    if any(getattr(h, "_kms_hsm", False) for h in root.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
        _call_level = logging.INFO
        _json_calls = True
    else:
        handler.setFormatter(
            EscapingFormatter("%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s")
        )
    handler._kms_hsm = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())
