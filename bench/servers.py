"""Start, probe and stop the servers under test: kms-hsm and the three baselines.

Every server is a subprocess in its own process group, logging to a file, on a free
loopback port. kms-hsm runs as ``kms-hsm serve``; the baselines run under the uvicorn
command line with the settings ``kms-hsm serve`` passes to ``uvicorn.run`` (same host,
worker count and log level, access log off, default loop and HTTP implementation); the
gRPC baseline runs as ``python bench/baseline_grpc.py PORT --workers N``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kms_hsm.api.protocol import HTTP_PROTOCOL

BENCH_DIR = Path(__file__).resolve().parent
HOST = "127.0.0.1"
LOG_LEVEL = "info"
_STARTUP_LINE = b"Application startup complete"
GRPC_READY_LINE = b"baseline-grpc worker ready"  # baseline_grpc.READY_LINE


class ServerError(Exception):
    """A server did not come up (its log tail is in the message)."""


def free_port() -> int:
    """A loopback TCP port that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Server:
    """One running server process (and its uvicorn workers)."""

    name: str
    process: subprocess.Popen[bytes]
    port: int
    workers: int
    log_path: Path
    started_at: float
    # The line each worker logs once it serves; counted to know that all of them do.
    ready_line: bytes = _STARTUP_LINE
    grpc_port: int | None = None

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://{HOST}:{self.port}"

    @property
    def grpc_target(self) -> str:
        """``127.0.0.1:<gRPC port>`` (the baseline's only port, or kms-hsm's second one)."""
        return f"{HOST}:{self.grpc_port if self.grpc_port is not None else self.port}"

    def log_tail(self, lines: int = 25) -> str:
        """The last lines of the server's log."""
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def _workers_started(self) -> bool:
        return self.log_path.read_bytes().count(self.ready_line) >= self.workers

    def wait_ready(self, probe: Callable[[], bool], timeout: float = 60.0) -> float:
        """Wait until every worker has started and ``probe`` succeeds.

        Returns:
            Seconds from just before the process was spawned to the first successful probe.
        """
        deadline = self.started_at + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(
                    f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            if probe():
                ready_after = time.monotonic() - self.started_at
                self._wait_for_workers(deadline)
                return ready_after
            time.sleep(0.02)
        raise ServerError(f"{self.name} not ready after {timeout:.0f} s:\n{self.log_tail()}")

    def _wait_for_workers(self, deadline: float) -> None:
        while not self._workers_started():
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise ServerError(f"{self.name}: not every worker started:\n{self.log_tail()}")
            time.sleep(0.05)

    def worker_pids(self) -> list[int]:
        """The processes that serve requests: spawned workers, or the process itself."""
        if self.workers == 1:
            return [self.process.pid]
        return [pid for pid in _children(self.process.pid) if _is_spawned_worker(pid)]

    def cpu_seconds(self) -> float:
        """CPU time used so far by the server's process tree (workers and HSM agents too)."""
        return sum(_cpu_seconds(pid) for pid in _tree(self.process.pid))

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM (uvicorn shuts down gracefully), SIGKILL to the group after ``timeout``."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def _children(pid: int) -> list[int]:
    pids: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            pids += [int(p) for p in task.read_text().split()]
    return sorted(pids)


def _tree(pid: int) -> list[int]:
    pids = [pid]
    for child in _children(pid):
        pids += _tree(child)
    return pids


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    # The command name (field 2) may hold spaces: count fields after its closing bracket.
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def _is_spawned_worker(pid: int) -> bool:
    # uvicorn's supervisor also starts multiprocessing's resource tracker: not a worker.
    try:
        return b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def rss_bytes(pid: int) -> int:
    """Resident set size of a process (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _spawn(
    name: str,
    argv: list[str],
    env: dict[str, str],
    port: int,
    workers: int,
    log_dir: Path,
    ready_line: bytes = _STARTUP_LINE,
) -> Server:
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}-w{workers}-{port}.log"
    started_at = time.monotonic()
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    return Server(name, process, port, workers, log_path, started_at, ready_line)


def read_token(data_dir: Path) -> str:
    """The admin bearer token kms-hsm wrote on its first start."""
    return (data_dir / "admin-token").read_text(encoding="utf-8").strip()


def kms_executable() -> str:
    """The ``kms-hsm`` console script next to this interpreter, or the one on PATH."""
    beside = Path(sys.executable).parent / "kms-hsm"
    if beside.exists():
        return str(beside)
    found = shutil.which("kms-hsm")
    if found is None:
        raise ServerError("kms-hsm not found: install the project (pip install -e .)")
    return found


def start_kms(data_dir: Path, workers: int, log_dir: Path, *, grpc: bool = False) -> Server:
    """``kms-hsm serve`` with ``workers`` workers on ``data_dir`` (embedded SoftHSM2 token).

    With ``grpc`` it also serves plaintext gRPC (no TLS is configured) on a second port.
    """
    port = free_port()
    grpc_port = free_port() if grpc else None
    env = dict(os.environ)
    # Everything through the environment, so that the command line stays `kms-hsm serve`
    # (a `pkill -f "kms-hsm serve --workers"` elsewhere on the machine then spares it).
    env.update(
        KMS_HSM_DATA_DIR=str(data_dir),
        KMS_HSM_HOST=HOST,
        KMS_HSM_PORT=str(port),
        KMS_HSM_WORKERS=str(workers),
        KMS_HSM_LOG_LEVEL=LOG_LEVEL.upper(),
    )
    env.pop("KMS_HSM_GRPC_PORT", None)
    if grpc_port is not None:
        env["KMS_HSM_GRPC_PORT"] = str(grpc_port)
    argv = [kms_executable(), "serve"]
    server = _spawn("kms-hsm", argv, env, port, workers, log_dir)
    server.grpc_port = grpc_port
    return server


def start_baseline(module: str, workers: int, log_dir: Path) -> Server:
    """A baseline app from bench/ under uvicorn with kms-hsm's uvicorn settings."""
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "uvicorn",
        f"{module}:app",
        "--app-dir",
        str(BENCH_DIR),
        "--host",
        HOST,
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--log-level",
        LOG_LEVEL,
        "--no-access-log",
        # The same HTTP protocol class as `kms-hsm serve`: uvicorn's fastest available,
        # with TCP_NODELAY on every connection (see kms_hsm/api/protocol.py).
        "--http",
        HTTP_PROTOCOL,
    ]
    return _spawn(module, argv, dict(os.environ), port, workers, log_dir)


def start_grpc_baseline(workers: int, log_dir: Path) -> Server:
    """Baseline G (bench/baseline_grpc.py): ``workers`` processes on one plaintext gRPC port."""
    port = free_port()
    argv = [
        sys.executable,
        str(BENCH_DIR / "baseline_grpc.py"),
        str(port),
        "--workers",
        str(workers),
    ]
    return _spawn("baseline_grpc", argv, dict(os.environ), port, workers, log_dir, GRPC_READY_LINE)
