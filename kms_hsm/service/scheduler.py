"""Background lifecycle work: automatic rotation and destruction of due versions.

Every serving process runs one; they may overlap freely because each step is decided under
the key lock (rotation) or by a conditional status change (destruction). It catches up
after downtime: everything due is handled on the first pass.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from kms_hsm.errors import KmsError
from kms_hsm.service.keys import KeyService

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PassResult:
    """What one pass did."""

    rotated: list[str]
    destroyed: list[str]


class Scheduler:
    """Runs ``run_once`` every ``interval`` seconds on a daemon thread."""

    def __init__(self, keys: KeyService, interval: float) -> None:
        self._keys = keys
        self._interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> PassResult:
        """Rotate every due key and destroy every due version, now."""
        rotated = []
        for key_id in self._keys.due_rotations():
            try:
                if self._keys.rotate_if_due(key_id) is not None:
                    rotated.append(key_id)
            except KmsError as exc:
                log.warning("scheduled rotation of %s failed: %s", key_id, exc.message)
        destroyed = [v.id for v in self._keys.destroy_due_versions()]
        return PassResult(rotated, destroyed)

    def start(self) -> None:
        """Start the background thread (no-op for interval 0)."""
        if self._interval <= 0 or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._loop, name="kms-scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and wait for the pass in progress."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception:
                log.exception("scheduler pass failed")
            self._stop.wait(self._interval)
