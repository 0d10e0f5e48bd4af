"""Process-wide logging set-up, shared by the CLI and the uvicorn workers it spawns."""

from __future__ import annotations

import logging
import sys
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


def configure_logging(level: str) -> None:
    """Log lines to stderr with the process id, so that workers can be told apart."""
    root = logging.getLogger()
    if any(getattr(h, "_kms_hsm", False) for h in root.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        EscapingFormatter("%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s")
    )
    handler._kms_hsm = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())
