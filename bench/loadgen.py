"""The load generator: Debian's ``wrk`` driven by bench/request.lua.

wrk keeps ``connections`` requests in flight for ``seconds`` and measures latency from
the moment a request is written to the moment its response is complete. The Lua
``done()`` hook prints one ``BENCH_RESULT {json}`` line that ``parse_output`` reads.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from servers import BENCH_DIR

LUA_SCRIPT = BENCH_DIR / "request.lua"
KEY_PLACEHOLDER = "KEYID"
_RESULT_PREFIX = "BENCH_RESULT "


class LoadError(Exception):
    """wrk could not run or printed no result."""


@dataclass(frozen=True)
class Load:
    """What to send: one URL and body; with ``key_ids_file`` a random key per request."""

    url: str
    body: bytes
    authorization: str | None = None
    key_ids_file: Path | None = None


@dataclass
class LoadResult:
    """One wrk run. Latencies in milliseconds; ``errors`` are wrk's counters."""

    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    errors: dict[str, int] = field(default_factory=dict)
    # CPU seconds the load generator itself used over ``seconds``, and the server under
    # test (its whole process tree; 0 when not measured).
    client_cpu_seconds: float = 0.0
    server_cpu_seconds: float = 0.0

    @property
    def error_count(self) -> int:
        """Socket errors, timeouts and responses with status >= 400, added up."""
        return sum(self.errors.values())


def slice_seconds(seconds: int, rounds: int) -> list[int]:
    """``seconds`` split into at most ``rounds`` whole slices of at least 1 s (rest first)."""
    rounds = max(1, min(rounds, seconds))
    return [seconds // rounds + (1 if i < seconds % rounds else 0) for i in range(rounds)]


def combine(slices: list[LoadResult]) -> LoadResult:
    """Slices of one load as one result: totals, request-weighted mean percentiles, max."""
    requests = sum(r.requests for r in slices)
    seconds = sum(r.seconds for r in slices)

    def weighted(field_name: str) -> float:
        if not requests:
            return max(getattr(r, field_name) for r in slices)
        return sum(getattr(r, field_name) * r.requests for r in slices) / requests

    errors: dict[str, int] = {}
    for result in slices:
        for name, count in result.errors.items():
            errors[name] = errors.get(name, 0) + count
    return LoadResult(
        requests=requests,
        seconds=seconds,
        rps=requests / seconds if seconds else 0.0,
        p50_ms=weighted("p50_ms"),
        p90_ms=weighted("p90_ms"),
        p99_ms=weighted("p99_ms"),
        max_ms=max(r.max_ms for r in slices),
        errors=errors,
        client_cpu_seconds=sum(r.client_cpu_seconds for r in slices),
        server_cpu_seconds=sum(r.server_cpu_seconds for r in slices),
    )


def ensure_wrk() -> str:
    """Path of ``wrk``; installs Debian's package when it is missing."""
    found = shutil.which("wrk")
    if found:
        return found
    print("wrk not found: apt-get install -y wrk", flush=True)
    install = ["apt-get", "install", "-y", "-q", "wrk"]
    if subprocess.run(install, check=False).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], check=False)
        subprocess.run(install, check=True)
    found = shutil.which("wrk")
    if not found:
        raise LoadError("wrk is not installed and apt-get could not install it")
    return found


def parse_output(text: str) -> LoadResult:
    """The ``BENCH_RESULT`` line printed by request.lua's ``done()``."""
    for line in text.splitlines():
        if line.startswith(_RESULT_PREFIX):
            raw = json.loads(line[len(_RESULT_PREFIX) :])
            break
    else:
        raise LoadError(f"wrk printed no result:\n{text}")
    seconds = raw["duration_us"] / 1e6
    errors = {name: raw[name] for name in ("connect", "read", "write", "status", "timeout")}
    return LoadResult(
        requests=raw["requests"],
        seconds=seconds,
        rps=raw["requests"] / seconds if seconds else 0.0,
        p50_ms=raw["p50_us"] / 1000,
        p90_ms=raw["p90_us"] / 1000,
        p99_ms=raw["p99_us"] / 1000,
        max_ms=raw["max_us"] / 1000,
        errors=errors,
    )


def run_wrk(
    load: Load, *, connections: int, seconds: int, threads: int, work_dir: Path
) -> LoadResult:
    """Run wrk once against ``load`` and return what it measured."""
    body_file = work_dir / "body.json"
    body_file.write_bytes(load.body)
    env = dict(os.environ, BENCH_BODY_FILE=str(body_file))
    if load.authorization:
        env["BENCH_AUTH"] = load.authorization
    if load.key_ids_file:
        env["BENCH_KEY_IDS"] = str(load.key_ids_file)
    argv = [
        ensure_wrk(),
        "--threads",
        str(min(threads, connections)),
        "--connections",
        str(connections),
        "--duration",
        f"{seconds}s",
        "--timeout",
        "10s",
        "--script",
        str(LUA_SCRIPT),
        load.url,
    ]
    cpu_before = _children_cpu_seconds()
    done = subprocess.run(
        argv, env=env, capture_output=True, text=True, check=False, timeout=seconds + 60
    )
    if done.returncode != 0:
        raise LoadError(f"wrk exited with {done.returncode}:\n{done.stdout}{done.stderr}")
    result = parse_output(done.stdout)
    result.client_cpu_seconds = _children_cpu_seconds() - cpu_before
    return result


def _children_cpu_seconds() -> float:
    # Counts only children already waited for: here, wrk runs one at a time.
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime
