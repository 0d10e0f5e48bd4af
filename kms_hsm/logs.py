"""Process-wide logging set-up, shared by the CLI and the uvicorn workers it spawns."""

from __future__ import annotations

import json
import logging
import sys
import time
from types import TracebackType

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
        return json.dumps(entry, ensure_ascii=True, default=str).replace("\x7f", "\\u007f")


def _utc(created: float) -> str:
    seconds = int(created)
    millis = int((created - seconds) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


# One record per finished API call. In JSON it is the access log (INFO); in text, where a
# line per call would crowd out everything else, it appears only at DEBUG.
CALLS = logging.getLogger("kms_hsm.calls")
_call_level = logging.DEBUG


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
    CALLS.log(
        level,
        "%s %s %s %.3fms key=%s principal=%s request=%s",
        method,
        transport or "direct",
        outcome,
        duration_ms,
        key_id or "-",
        principal or "-",
        request_id,
        extra={
            "call": {
                "request_id": request_id,
                "principal": principal,
                "method": method,
                "transport": transport or "direct",
                "key_id": key_id,
                "outcome": outcome,
                "duration_ms": duration_ms,
            }
        },
    )


def configure_logging(level: str, log_format: str = "text") -> None:
    """Log to stderr, one record a line with the process id (workers told apart):
    escaped text, or with ``log_format="json"`` one JSON object a line."""
    global _call_level
    root = logging.getLogger()
    if any(getattr(h, "_kms_hsm", False) for h in root.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
        _call_level = logging.INFO
    else:
        handler.setFormatter(
            EscapingFormatter("%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s")
        )
    handler._kms_hsm = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())
