"""Process-wide logging set-up, shared by the CLI and the uvicorn workers it spawns."""

from __future__ import annotations

import logging
import sys


def configure_logging(level: str) -> None:
    """Log lines to stderr with the process id, so that workers can be told apart."""
    root = logging.getLogger()
    if any(getattr(h, "_kms_hsm", False) for h in root.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s")
    )
    handler._kms_hsm = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())
