"""The gRPC load generator: several client processes making one kind of call, results summed.

wrk speaks only HTTP/1.1, so gRPC load comes from Python: ``processes`` client processes
(``bench/grpc_client.py``), each with its share of the ``concurrency`` calls in flight on
``grpc.aio`` (uvloop) over a few plaintext channels of the generated stub
(``SymmetricCryptoServiceStub`` Encrypt, or the asymmetric Sign / Decrypt). The bench
measures the server, not the SDK: no discovery, no IAM token exchange, the bearer token
as ``authorization`` metadata. A closed loop like wrk's: each in-flight slot sends its
next call when the previous answer is complete.

The processes connect, make one call, report ready, and start together when the harness
writes ``go``. Each counts the calls that started and completed in its measured window and
keeps their latencies in a log histogram (1 % buckets); the harness adds the counts and
histograms up, so the percentiles are those of all calls, not a mean of per-process ones.
Each process also reports its CPU seconds: the clients run on the same cores as the
server under test, and what they take is printed beside the numbers.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_client import (
    READY,
    RESULT,
    TOKEN_ENV,
    bearer,
    bucket_upper_us,
    describe,
    make_request,
    rpc,
)
from loadgen import LoadError, LoadResult

CLIENT_SCRIPT = Path(__file__).resolve().with_name("grpc_client.py")


@dataclass(frozen=True)
class GrpcLoad:
    """What to send: ``method`` (grpc_client.CALLS) with ``payload`` under ``key_id`` at ``target``.

    ``payload`` is Encrypt's plaintext, Sign's message or Decrypt's ciphertext.
    """

    target: str
    key_id: str
    payload: bytes
    token: str | None = None
    method: str = "encrypt"


@dataclass
class GrpcLoadResult:
    """The summed result (with the client processes' CPU) and a few failed calls."""

    result: LoadResult
    error_examples: list[str] = field(default_factory=list)


def probe(load: GrpcLoad, timeout: float = 10.0) -> Any:
    """One call with the sync stub; returns the response; grpc.RpcError propagates."""
    with grpc.insecure_channel(load.target) as channel:
        request = make_request(load.method, load.key_id, load.payload)
        return rpc(load.method, channel)(request, metadata=bearer(load.token), timeout=timeout)


def wait_serving(load: GrpcLoad, timeout: float) -> str | None:
    """Probe until a call succeeds; None, or the last error after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last = "no attempt"
    while time.monotonic() < deadline:
        try:
            probe(load, timeout=2.0)
            return None
        except grpc.RpcError as exc:
            last = describe(exc)
        time.sleep(0.1)
    return last


def split(total: int, parts: int) -> list[int]:
    """``total`` in-flight calls over at most ``parts`` processes, each at least one."""
    parts = max(1, min(parts, total))
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def run_grpc_load(
    load: GrpcLoad,
    *,
    concurrency: int,
    seconds: float,
    warmup: float,
    processes: int,
    server_cpu: Callable[[], float] | None = None,
) -> GrpcLoadResult:
    """Start the client processes, release them together, add their results up.

    ``server_cpu`` (the server's CPU seconds so far) is read when the measured seconds
    begin and end; the difference lands in the result's ``server_cpu_seconds``.
    """
    env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
    if load.token:
        env[TOKEN_ENV] = load.token
    children: list[subprocess.Popen[str]] = []
    try:
        for share in split(concurrency, processes):
            argv = [
                sys.executable,
                str(CLIENT_SCRIPT),
                "--target",
                load.target,
                "--key-id",
                load.key_id,
                "--method",
                load.method,
                "--payload-hex",
                load.payload.hex(),
                "--concurrency",
                str(share),
                "--seconds",
                str(seconds),
                "--warmup",
                str(warmup),
            ]
            children.append(
                subprocess.Popen(
                    argv,
                    env=env,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
        for child in children:
            _await_ready(child)
        # Released together, after every process has connected: start-up is not measured.
        for child in children:
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        server_seconds = _server_window(server_cpu, time.monotonic() + warmup, seconds)
        outputs = [_finish(child, seconds + warmup + 60) for child in children]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    done = merge([_parse(out, err) for out, err in outputs])
    done.result.server_cpu_seconds = server_seconds
    return done


def _server_window(read: Callable[[], float] | None, start: float, seconds: float) -> float:
    # The clients start their clocks within milliseconds of "go"; so does this one.
    if read is None:
        return 0.0
    time.sleep(max(0.0, start - time.monotonic()))
    before = read()
    time.sleep(seconds)
    return read() - before


def _await_ready(child: subprocess.Popen[str]) -> None:
    assert child.stdout is not None
    line = child.stdout.readline()
    if line.strip() != READY:
        out, err = _finish(child, 10)
        raise LoadError(f"gRPC client did not start: {line}{out}{err}".rstrip())


def _finish(child: subprocess.Popen[str], timeout: float) -> tuple[str, str]:
    try:
        out, err = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        child.kill()
        out, err = child.communicate()
        raise LoadError(f"gRPC client did not finish in {timeout:.0f} s:\n{err}") from None
    if child.returncode != 0:
        raise LoadError(f"gRPC client exited with {child.returncode}: {out}{err}".rstrip())
    return out, err


def _parse(out: str, err: str) -> dict[str, Any]:
    for line in out.splitlines():
        if line.startswith(RESULT):
            parsed: dict[str, Any] = json.loads(line[len(RESULT) :])
            return parsed
    raise LoadError(f"gRPC client printed no result:\n{out}{err}".rstrip())


def percentile_us(histogram: Counter[int], fraction: float) -> float:
    """The latency (us) that ``fraction`` of the calls stayed under (a bucket's upper bound)."""
    total = sum(histogram.values())
    if not total:
        return 0.0
    rank = max(1, math.ceil(fraction * total))
    seen = 0
    for bucket in sorted(histogram):
        seen += histogram[bucket]
        if seen >= rank:
            return bucket_upper_us(bucket)
    return bucket_upper_us(max(histogram))


def merge(parts: list[dict[str, Any]]) -> GrpcLoadResult:
    """The processes' results as one: counts and histograms added, over the same seconds."""
    histogram: Counter[int] = Counter()
    errors: Counter[str] = Counter()
    examples: list[str] = []
    for part in parts:
        histogram.update({int(bucket): count for bucket, count in part["histogram"].items()})
        errors.update(part["errors"])
        examples += part["error_examples"]
    requests = sum(int(part["requests"]) for part in parts)
    # The processes measure the same window (released together), so their rates add up.
    seconds = max(float(part["seconds"]) for part in parts)
    result = LoadResult(
        requests=requests,
        seconds=seconds,
        rps=requests / seconds if seconds else 0.0,
        p50_ms=percentile_us(histogram, 0.50) / 1000,
        p90_ms=percentile_us(histogram, 0.90) / 1000,
        p99_ms=percentile_us(histogram, 0.99) / 1000,
        max_ms=max(float(part["max_us"]) for part in parts) / 1000,
        errors=dict(errors),
    )
    result.client_cpu_seconds = sum(float(part["cpu_seconds"]) for part in parts)
    return GrpcLoadResult(result, examples[:3])
