"""What /metrics and JSON call records cost on the encrypt fast path (issue 18 §5, §6).

    .venv/bin/python bench/metrics_overhead.py [--rounds 3] [--seconds 4] [--before DIR]

Serves one worker per configuration, one after another, in interleaved rounds (a shared
machine drifts; interleaving spreads the drift over every configuration):

    before   the code in --before (a checkout without the instrumentation), if given
    off      this checkout, metrics off (the default): the instrumentation returns at once
    metrics  KMS_HSM_METRICS_PORT set: counters and histograms in the shared files
    json     metrics and KMS_HSM_LOG_FORMAT=json: one JSON record per call on stderr

With --micro it measures, in this process, only what the instrumentation adds to one
software-key encrypt (a request counter, its latency, a material-cache lookup, per
event-loop turn an audit commit, and the writes to the shared files), for turns of 1, 4
and 16 requests: steady figures where wrk on a shared machine is not.

Each round is a wrk run of AES_256 (software key) encrypts at 16 connections; printed: the
requests per second and the server's CPU time per request (its whole process tree), the
steadier of the two on a busy machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

# This checkout's kms_hsm (for --micro), then bench's own modules.
sys.path[:0] = [str(Path(__file__).resolve().parent.parent), str(Path(__file__).resolve().parent)]

from apiclient import ApiClient  # noqa: E402
from loadgen import Load, run_wrk  # noqa: E402
from scenarios import encrypt_body  # noqa: E402
from servers import free_port, read_token, start_kms  # noqa: E402

HERE = Path(__file__).resolve().parent.parent


def measure(name: str, env: dict[str, str], work: Path, seconds: int) -> tuple[float, float]:
    """(requests per second, server CPU microseconds per request) of one run."""
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        data_dir = work / name
        server = start_kms(data_dir, 1, work)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    try:
        http = ApiClient(server.base_url)
        server.wait_ready(http.responds)
        http.close()
        kms = ApiClient(server.base_url, read_token(data_dir))
        key = kms.create_key("overhead", "AES_256")
        load = Load(
            f"{server.base_url}/kms/v1/keys/{key}:encrypt", encrypt_body(), kms.authorization
        )
        run_wrk(load, connections=16, seconds=1, threads=1, work_dir=work)  # warm-up
        cpu_before = server.cpu_seconds()
        result = run_wrk(load, connections=16, seconds=seconds, threads=1, work_dir=work)
        cpu = server.cpu_seconds() - cpu_before
        kms.close()
        if result.error_count:
            raise SystemExit(f"{name}: {result.error_count} failed requests")
        return result.rps, cpu / result.requests * 1e6
    finally:
        server.stop()


def micro() -> None:
    """Microseconds the instrumentation adds per request, metrics on, by requests per turn."""
    import asyncio
    import time

    with tempfile.TemporaryDirectory(prefix="kms-metrics-micro-") as tmp:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tmp
        from kms_hsm import metrics

        metrics.enable()

        async def turns(per_turn: int, turns: int) -> float:
            started = time.perf_counter()
            for _ in range(turns):
                for _ in range(per_turn):
                    t0 = time.perf_counter()
                    metrics.material_cache(hit=True)
                    metrics.request(
                        "SymmetricCrypto.Encrypt", "rest", "OK", time.perf_counter() - t0
                    )
                metrics.audit_commit(per_turn, 0.0004)
                await asyncio.sleep(0)  # the turn ends
            metrics.flush()
            return (time.perf_counter() - started) / (per_turn * turns) * 1e6

        async def empty(per_turn: int, turns: int) -> float:
            started = time.perf_counter()
            for _ in range(turns):
                for _ in range(per_turn):
                    t0 = time.perf_counter()
                    time.perf_counter() - t0
                await asyncio.sleep(0)
            return (time.perf_counter() - started) / (per_turn * turns) * 1e6

        for per_turn in (1, 4, 16):
            n = 40_000 // per_turn
            cost = asyncio.run(turns(per_turn, n)) - asyncio.run(empty(per_turn, n))
            print(f"  {per_turn:2d} request(s) per loop turn: {cost:5.1f} us per request")


def main() -> int:
    """Run the rounds and print one line per configuration."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=4)
    parser.add_argument("--before", type=Path, help="a checkout without the instrumentation")
    parser.add_argument("--micro", action="store_true", help="the in-process cost only")
    args = parser.parse_args()
    if args.micro:
        micro()
        return 0
    configs: dict[str, dict[str, str]] = {}
    if args.before:
        configs["before"] = {"PYTHONPATH": str(args.before.resolve())}
    here = {"PYTHONPATH": str(HERE)}
    configs["off"] = here
    configs["metrics"] = {**here, "KMS_HSM_METRICS_PORT": str(free_port())}
    configs["json"] = {**configs["metrics"], "KMS_HSM_LOG_FORMAT": "json"}
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in configs}
    with tempfile.TemporaryDirectory(prefix="kms-metrics-bench-") as tmp:
        for round_ in range(args.rounds):
            for name, env in configs.items():
                rps, cpu_us = measure(f"{name}-{round_}", env, Path(tmp), args.seconds)
                results[name].append((rps, cpu_us))
                print(f"round {round_ + 1} {name:8s} {rps:8.0f} req/s {cpu_us:7.1f} us CPU/req")
    print("\nmedian of rounds (1 worker, AES_256 encrypt, 16 connections):")
    for name, runs in results.items():
        rps = statistics.median(r for r, _ in runs)
        cpu = statistics.median(c for _, c in runs)
        print(f"  {name:8s} {rps:8.0f} req/s  {cpu:7.1f} us CPU/request")
    return 0


if __name__ == "__main__":
    sys.exit(main())
