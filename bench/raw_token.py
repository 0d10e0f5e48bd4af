"""The harness's side of ``asym_raw.py --serve``: the token's own rate, in slices, on request.

One process for the whole run (its key pairs are made once): it first measures every
mechanism (``summary``), then times a slice of one mechanism whenever ``measure`` asks,
so that the token's rate is taken in turn with the service's rows it is compared with.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from servers import BENCH_DIR

# Making three key pairs (two RSA-2048) and the first measurement: seconds, even on a
# loaded machine.
_START_TIMEOUT = 120.0


class RawTokenError(Exception):
    """asym_raw.py failed, answered nothing in time, or answered something else."""


class RawToken:
    """A running ``asym_raw.py --serve`` on ``data_dir``'s token."""

    def __init__(self, data_dir: Path, seconds: float, log_path: Path) -> None:
        env = dict(os.environ, SOFTHSM2_CONF=str(data_dir / "softhsm2.conf"))
        argv = [
            sys.executable,
            str(BENCH_DIR / "asym_raw.py"),
            str(data_dir),
            "--seconds",
            str(seconds),
            "--serve",
        ]
        self._log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("wb") as log:
            self._process = subprocess.Popen(
                argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True
            )
        # Lines arrive on a thread so that every wait has a deadline.
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        try:
            self.summary: dict[str, Any] = self._answer(_START_TIMEOUT)
        except RawTokenError:
            self.close()
            raise

    def _pump(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _answer(self, timeout: float) -> dict[str, Any]:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise RawTokenError(f"asym_raw.py answered nothing in {timeout:.0f} s") from None
        if line is None:
            self._process.wait()
            stderr = self._log_path.read_text(encoding="utf-8", errors="replace").strip()
            raise RawTokenError(f"asym_raw.py exited with {self._process.returncode}: {stderr}")
        try:
            answer: dict[str, Any] = json.loads(line)
        except ValueError:
            raise RawTokenError(f"asym_raw.py printed {line!r}") from None
        return answer

    def measure(self, row: str, seconds: float) -> tuple[int, float, float]:
        """One slice of ``row``'s mechanism: (calls, seconds, CPU seconds of the process)."""
        assert self._process.stdin is not None
        try:
            self._process.stdin.write(f"{row}\t{seconds}\n")
            self._process.stdin.flush()
        except OSError as exc:
            raise RawTokenError(f"asym_raw.py is gone: {exc}") from None
        answer = self._answer(seconds + 30)
        if answer.get("row") != row:
            raise RawTokenError(f"asym_raw.py answered {answer} for {row}")
        return int(answer["ops"]), float(answer["seconds"]), float(answer["cpu_seconds"])

    def close(self) -> None:
        """EOF: the process destroys its key pairs and exits (killed after 30 s)."""
        if self._process.stdin is not None:
            with contextlib.suppress(OSError):
                self._process.stdin.close()
        try:
            self._process.wait(30)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
