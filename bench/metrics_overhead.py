"""What /metrics and JSON call records cost on the encrypt fast path (issue 18 §5, §6).

    .venv/bin/python bench/metrics_overhead.py [--rounds 3] [--seconds 4] [--before DIR]

Serves one worker per configuration, one after another, in interleaved rounds (a shared
machine drifts; interleaving spreads the drift over every configuration):

    before   the code in --before (a checkout without the instrumentation), if given
    off      this checkout, metrics off (the default): the instrumentation returns at once
    metrics  KMS_HSM_METRICS_PORT set: counters and histograms in the shared files
    json     metrics and KMS_HSM_LOG_FORMAT=json: one JSON record per call on stderr

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

sys.path.insert(0, str(Path(__file__).resolve().parent))

from apiclient import ApiClient
from loadgen import Load, run_wrk
from scenarios import encrypt_body
from servers import free_port, read_token, start_kms

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


def main() -> int:
    """Run the rounds and print one line per configuration."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=4)
    parser.add_argument("--before", type=Path, help="a checkout without the instrumentation")
    args = parser.parse_args()
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
