"""kms-hsm benchmark harness (issues 6, 16, 17): kms-hsm and three baselines, REST and gRPC.

    .venv/bin/python bench/run.py                 # full run, ~6-8 minutes on 2 cores
    .venv/bin/python bench/run.py --smoke         # ~25 s: what CI runs
    .venv/bin/python bench/run.py --asymmetric    # only sign / OAEP decrypt vs the raw token
    .venv/bin/python bench/run.py --scale         # 10,000 + 10,000 keys; many minutes
    .venv/bin/python bench/run.py --memory        # worker RSS over 1,000,000 requests
    .venv/bin/python bench/run.py --envelope      # envelope MiB/s beside raw AES-GCM (issue 18)

REST load comes from wrk, gRPC load from several Python client processes (grpc_load.py).
Prints a table with every measurement, the ratios against the baselines measured in the
same run, issue 6's targets and the asymmetric rows (sign, OAEP decrypt) against the
token's own rate for the same mechanism; writes everything as JSON (bench/results/latest.json).
Exits 1 when any request failed or any scenario could not be measured. See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import envelope
import grpc
import memory
import report
import scale
import scenarios
from apiclient import ApiClient, RequestFailed
from grpc_client import describe
from grpc_load import GrpcLoad, probe, run_grpc_load, wait_serving
from loadgen import Load, LoadError, LoadResult, combine, ensure_wrk, run_wrk, slice_seconds
from raw_token import RawToken, RawTokenError
from scenarios import Measurement, Scenario
from servers import (
    BENCH_DIR,
    Server,
    ServerError,
    read_token,
    rss_bytes,
    start_baseline,
    start_grpc_baseline,
    start_kms,
)

RESULTS_DIR = BENCH_DIR / "results"
BASELINES = {"F": "baseline_fastapi", "R": "baseline_raw"}


@dataclass
class Config:
    """What one run measures."""

    seconds: int
    warmup: int
    concurrency: list[int]
    workers: list[int]
    wrk_threads: int
    hsm_seconds: float
    only: tuple[str, ...] | None
    stack_check: bool = True
    # Each scenario's seconds are measured in this many slices, in turn with the other
    # scenarios, so that a slow minute of the machine falls on all of them alike.
    rounds: int = 1
    # Client processes of the gRPC load (0: no gRPC scenarios).
    grpc_clients: int = 2
    # Seconds of each slice of the token's own sign/decrypt rate, taken in turn with the
    # asymmetric rows (one per mechanism per round, just before them).
    raw_slice: float = 1.0


def _int_list(text: str) -> list[int]:
    return sorted({int(part) for part in text.split(",") if part.strip()})


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--duration", type=int, default=6, help="seconds per scenario (6)")
    parser.add_argument(
        "--rounds", type=int, default=3, help="slices per scenario, taken in turn (3)"
    )
    parser.add_argument("--warmup", type=int, default=1, help="warm-up seconds (1)")
    parser.add_argument("--concurrency", type=_int_list, default=[16, 64], help="16,64")
    parser.add_argument("--workers", type=_int_list, default=[1, 2], help="1,2")
    parser.add_argument("--wrk-threads", type=int, default=1, help="wrk threads (1)")
    parser.add_argument(
        "--grpc-clients", type=int, default=2, help="gRPC client processes (2; 0: no gRPC)"
    )
    parser.add_argument("--smoke", action="store_true", help="~15 s: 1 worker, c16, 1 s each")
    parser.add_argument(
        "--asymmetric",
        action="store_true",
        help="only the sign / OAEP decrypt rows and the token's own rates (issue 17)",
    )
    parser.add_argument("--scale", action="store_true", help="10,000 keys of each kind")
    parser.add_argument("--scale-keys", type=int, default=10_000, help=argparse.SUPPRESS)
    parser.add_argument(
        "--memory", action="store_true", help="worker RSS over 1,000,000 requests (~2 min)"
    )
    parser.add_argument(
        "--memory-requests", type=int, default=1_000_000, help="requests for --memory"
    )
    parser.add_argument(
        "--envelope", action="store_true", help="envelope MiB/s beside raw AES-GCM, one core"
    )
    parser.add_argument("--json", type=Path, help="results file (bench/results/latest.json)")
    return parser.parse_args(argv)


def config_from(args: argparse.Namespace) -> Config:
    """Defaults, or the smoke subset."""
    if args.smoke:
        return Config(
            seconds=1,
            warmup=0,
            concurrency=[16],
            workers=[1],
            wrk_threads=args.wrk_threads,
            hsm_seconds=0.2,
            only=_without_grpc(scenarios.SMOKE, args.grpc_clients),
            stack_check=False,
            grpc_clients=args.grpc_clients,
            raw_slice=0.2,
        )
    return Config(
        seconds=args.duration,
        warmup=args.warmup,
        concurrency=args.concurrency,
        workers=args.workers,
        wrk_threads=args.wrk_threads,
        hsm_seconds=2.0,
        only=_only(args),
        rounds=args.rounds,
        grpc_clients=args.grpc_clients,
    )


def _only(args: argparse.Namespace) -> tuple[str, ...] | None:
    """The scenarios of a default run: all, or the asymmetric ones; gRPC ones only with clients."""
    if args.asymmetric:
        return _without_grpc(scenarios.ASYMMETRIC, args.grpc_clients)
    return None if args.grpc_clients else _without_grpc(scenarios.ALL, 0)


def _without_grpc(names: tuple[str, ...], grpc_clients: int) -> tuple[str, ...]:
    return names if grpc_clients else tuple(n for n in names if n not in scenarios.GRPC)


# ---------------------------------------------------------------------------- servers


@contextlib.contextmanager
def running_servers(
    data_dir: Path, workers: int, log_dir: Path, grpc: bool
) -> Iterator[dict[str, Server]]:
    """kms-hsm, F, R (and G) with ``workers`` workers each, started together, ready on entry.

    kms-hsm's gRPC port is only known to serve once a key exists (``_wait_grpc``).
    """
    servers = {"kms": start_kms(data_dir, workers, log_dir, grpc=grpc)}
    try:
        for name, module in BASELINES.items():
            servers[name] = start_baseline(module, workers, log_dir)
        if grpc:
            servers["G"] = start_grpc_baseline(workers, log_dir)
        for name, server in servers.items():
            if name == "G":
                server.wait_ready(_grpc_baseline_probe(server))
                continue
            http = ApiClient(server.base_url)
            server.wait_ready(http.responds)
            http.close()
        yield servers
    finally:
        for server in servers.values():
            server.stop()


def _grpc_baseline_probe(server: Server) -> Callable[[], bool]:
    load = GrpcLoad(server.grpc_target, "baseline", scenarios.PLAINTEXT)
    return lambda: wait_serving(load, 0.5) is None


def measure_hsm_raw(data_dir: Path, seconds: float) -> dict[str, Any]:
    """bench/hsm_raw.py in a subprocess, so that SOFTHSM2_CONF is set before the module loads."""
    env = dict(os.environ, SOFTHSM2_CONF=str(data_dir / "softhsm2.conf"))
    argv = [sys.executable, str(BENCH_DIR / "hsm_raw.py"), str(data_dir), "--seconds", str(seconds)]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"hsm_raw.py exited with {done.returncode}: {done.stderr.strip()}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


# ---------------------------------------------------------------------------- the run


class BenchRun:
    """One run: every scenario at every worker count and concurrency."""

    def __init__(self, config: Config, work_dir: Path) -> None:
        self.config = config
        self.work_dir = work_dir
        self.data_dir = work_dir / "data"
        self.log_dir = work_dir / "logs"
        self.measurements: list[Measurement] = []
        self.failures: list[str] = []
        self.memory: list[dict[str, Any]] = []
        self.hsm_raw: dict[str, Any] | None = None
        # The token's own sign / raw-RSA rates (asym_raw.py): measured once at the start
        # (``asym_raw``), then in slices in turn with the asymmetric rows (``raw_slices``:
        # (workers, concurrency) -> mechanism -> [calls, seconds, CPU seconds]), what the
        # rows are divided by.
        self.raw_token: RawToken | None = None
        self.asym_raw: dict[str, Any] | None = None
        self.raw_slices: dict[tuple[int, int], dict[str, list[float]]] = {}
        self.stack_p50_ms: dict[int, float] = {}
        self._kms_requests = 0
        self._token: str | None = None
        # Unmeasured seconds before the next slice (the first slice of a worker count).
        self._warmup = 0

    def run(self) -> None:
        """Start the servers for each worker count and measure everything."""
        plan: list[Scenario] | None = None
        grpc = self.config.grpc_clients > 0
        try:
            for workers in self.config.workers:
                with running_servers(self.data_dir, workers, self.log_dir, grpc) as servers:
                    clients = self._clients(servers)
                    try:
                        if plan is None:
                            plan = self._prepare(clients["kms"])
                        broken = self._wait_grpc(servers["kms"], plan)
                        self._measure_all(servers, clients, plan, workers, broken)
                    finally:
                        for client in clients.values():
                            client.close()
        finally:
            if self.raw_token is not None:
                self.raw_token.close()

    def _clients(self, servers: dict[str, Server]) -> dict[str, ApiClient]:
        token = self._token = read_token(self.data_dir)
        return {
            name: ApiClient(server.base_url, token if name == "kms" else None)
            for name, server in servers.items()
        }

    def _prepare(self, kms: ApiClient) -> list[Scenario]:
        """Create the keys, measure the idle token, build the request bodies."""
        sw_key = kms.create_key("bench-sw", "AES_256")
        hsm_key = kms.create_key("bench-hsm", "AES_256_HSM")
        try:
            asymmetric = scenarios.build_asymmetric(kms, self.config.only)
        except (RequestFailed, KeyError, TypeError, ValueError) as exc:
            # The symmetric rows still run; the failure fails the run.
            self.failures.append(f"asymmetric keys could not be set up: {exc}")
            asymmetric = []
        try:
            self.hsm_raw = measure_hsm_raw(self.data_dir, self.config.hsm_seconds)
        except (RuntimeError, subprocess.TimeoutExpired, ValueError) as exc:
            self.failures.append(f"raw PKCS#11 measurement: {exc}")
        if any(self.config.only is None or n in self.config.only for n in scenarios.ASYMMETRIC):
            try:
                log_path = self.log_dir / "asym_raw.log"
                self.raw_token = RawToken(self.data_dir, self.config.hsm_seconds, log_path)
                self.asym_raw = self.raw_token.summary
            except (RawTokenError, OSError) as exc:
                self.failures.append(f"raw PKCS#11 sign/decrypt measurement: {exc}")
        return scenarios.build(kms, sw_key, hsm_key, self.config.only) + asymmetric

    def _wait_grpc(self, kms: Server, plan: list[Scenario]) -> set[str]:
        """Wait for kms-hsm's gRPC port (the first gRPC scenario's call); the gRPC scenarios
        not to run when it never answers."""
        grpc_scenarios = [s for s in plan if s.is_grpc and s.server == "kms"]
        if not grpc_scenarios:
            return set()
        error = wait_serving(self._grpc_load(kms, grpc_scenarios[0]), 30.0)
        if error is None:
            return set()
        self.failures.append(
            f"kms-hsm (w{kms.workers}) gRPC {kms.grpc_target}: {grpc_scenarios[0].name} never "
            "succeeded "
            f"in 30 s, last answer {error}; its log ends:\n{kms.log_tail()}"
        )
        return {s.name for s in grpc_scenarios}

    def _grpc_load(self, server: Server, scenario: Scenario) -> GrpcLoad:
        assert scenario.grpc_key is not None
        token = self._token if scenario.server == "kms" else None
        return GrpcLoad(
            server.grpc_target,
            scenario.grpc_key,
            scenario.grpc_payload,
            token,
            scenario.grpc_method,
        )

    def _measure_all(
        self,
        servers: dict[str, Server],
        clients: dict[str, ApiClient],
        plan: list[Scenario],
        workers: int,
        broken: set[str],
    ) -> None:
        self._kms_requests = 0
        if self.config.stack_check:
            self._check_stack(clients["R"], workers)
        slices_of = slice_seconds(self.config.seconds, self.config.rounds)
        for index, concurrency in enumerate(self.config.concurrency):
            slices: dict[str, list[LoadResult]] = {}
            failed = set(broken)
            for round_index, seconds in enumerate(slices_of):
                self._warmup = self.config.warmup if index == 0 and round_index == 0 else 0
                raw_taken = False
                for scenario in plan:
                    if scenario.name in failed or not self._alive(servers[scenario.server]):
                        continue
                    if scenario.name in scenarios.ASYMMETRIC and not raw_taken:
                        raw_taken = True
                        self._raw_slices(plan, workers, concurrency)
                    point = f"{scenario.name} (w{workers} c{concurrency})"
                    server = servers[scenario.server]
                    if scenario.is_grpc:
                        result = self._grpc_slice(server, scenario, point, concurrency, seconds)
                    else:
                        client = clients[scenario.server]
                        result = self._slice(server, client, scenario, point, concurrency, seconds)
                    if result is None:
                        failed.add(scenario.name)
                        continue
                    slices.setdefault(scenario.name, []).append(result)
                    if index == 0 and round_index == 0 and scenario is plan[0]:
                        self._sample_memory(servers["kms"])  # after the first scenario
            for scenario in plan:
                if scenario.name in slices and scenario.name not in failed:
                    self._record(
                        servers[scenario.server],
                        clients.get(scenario.server),
                        scenario,
                        workers,
                        concurrency,
                        combine(slices[scenario.name]),
                    )
        self._sample_memory(servers["kms"])

    def _raw_slices(self, plan: list[Scenario], workers: int, concurrency: int) -> None:
        """One slice of the token's own rate for each mechanism of the asymmetric rows."""
        if self.raw_token is None:
            return
        point = self.raw_slices.setdefault((workers, concurrency), {})
        mechanisms = [scenarios.RAW_ROW[s.name] for s in plan if s.name in scenarios.RAW_ROW]
        for row in dict.fromkeys(mechanisms):
            try:
                taken = self.raw_token.measure(row, self.config.raw_slice)
            except RawTokenError as exc:
                self.failures.append(f"raw PKCS#11 {row} (w{workers} c{concurrency}): {exc}")
                self.raw_token.close()
                self.raw_token = None
                return
            totals = point.setdefault(row, [0.0, 0.0, 0.0])
            for i, value in enumerate(taken):
                totals[i] += value

    def _alive(self, server: Server) -> bool:
        """False (and one failure recorded) once a server has exited under the run."""
        if server.process.poll() is None:
            return True
        failure = f"{server.name} (w{server.workers}) exited with {server.process.returncode}"
        if not any(f.startswith(failure) for f in self.failures):
            self.failures.append(f"{failure} during the run; its log ends:\n{server.log_tail()}")
        return False

    def _slice(
        self,
        server: Server,
        client: ApiClient,
        scenario: Scenario,
        point: str,
        concurrency: int,
        seconds: int,
    ) -> LoadResult | None:
        """One slice of a scenario's load; None (and a failure recorded) if it broke."""
        try:
            client.post(scenario.path, scenario.body)
        except RequestFailed as exc:
            self.failures.append(f"{point}: probe request failed:\n{exc}")
            print(f"FAILED {point}: {exc}", flush=True)
            return None
        load = Load(client.base_url + scenario.path, scenario.body, client.authorization)
        warmup = self._warmup
        try:
            if warmup:
                self._count(scenario, self._wrk(load, concurrency, warmup))
            cpu_before = server.cpu_seconds()
            result = self._wrk(load, concurrency, seconds)
            result.server_cpu_seconds = server.cpu_seconds() - cpu_before
            return self._count(scenario, result)
        except (LoadError, subprocess.TimeoutExpired) as exc:
            self.failures.append(f"{point}: {exc}")
            return None

    def _grpc_slice(
        self,
        server: Server,
        scenario: Scenario,
        point: str,
        concurrency: int,
        seconds: int,
    ) -> LoadResult | None:
        """One slice of a gRPC scenario, from the client processes; None if it broke."""
        load = self._grpc_load(server, scenario)
        try:
            probe(load)
        except grpc.RpcError as exc:
            self.failures.append(
                f"{point}: probe {load.method} to {load.target} failed: {describe(exc)}"
            )
            print(f"FAILED {point}: {describe(exc)}", flush=True)
            return None
        try:
            done = run_grpc_load(
                load,
                concurrency=concurrency,
                seconds=seconds,
                warmup=self._warmup,
                processes=self.config.grpc_clients,
                server_cpu=server.cpu_seconds,
            )
        except LoadError as exc:
            self.failures.append(f"{point}: {exc}")
            return None
        if done.result.error_count:
            examples = "; ".join(done.error_examples)
            self.failures.append(f"{point}: failed calls {done.result.errors}, e.g. {examples}")
        return self._count(scenario, done.result)

    def _record(
        self,
        server: Server,
        client: ApiClient | None,
        scenario: Scenario,
        workers: int,
        concurrency: int,
        result: LoadResult,
    ) -> None:
        measurement = Measurement(
            scenario.name,
            scenario.server,
            workers,
            concurrency,
            result.rps,
            result.p50_ms,
            result.p90_ms,
            result.p99_ms,
            result.max_ms,
            result.requests,
            result.error_count,
            result.errors,
            result.client_cpu_seconds / result.seconds if result.seconds else 0.0,
            result.server_cpu_seconds / result.requests * 1e6 if result.requests else 0.0,
        )
        self.measurements.append(measurement)
        _print_progress(measurement)
        if result.error_count:
            point = f"{scenario.name} (w{workers} c{concurrency})"
            if scenario.is_grpc:
                self._explain_grpc_errors(self._grpc_load(server, scenario), point, result)
            elif client is not None:
                self._explain_errors(client, scenario, point, result)

    def _check_stack(self, client: ApiClient, workers: int) -> None:
        """R with one keep-alive connection: the latency floor of the HTTP stack."""
        load = Load(client.base_url + scenarios.BASELINE_PATH, scenarios.encrypt_body())
        try:
            self.stack_p50_ms[workers] = self._wrk(load, 1, 1).p50_ms
        except (LoadError, subprocess.TimeoutExpired) as exc:
            self.failures.append(f"HTTP stack check (w{workers}): {exc}")

    def _wrk(self, load: Load, concurrency: int, seconds: int) -> LoadResult:
        return run_wrk(
            load,
            connections=concurrency,
            seconds=seconds,
            threads=self.config.wrk_threads,
            work_dir=self.work_dir,
        )

    def _count(self, scenario: Scenario, result: LoadResult) -> LoadResult:
        if scenario.server == "kms":
            self._kms_requests += result.requests
        return result

    def _explain_errors(
        self, client: ApiClient, scenario: Scenario, point: str, result: LoadResult
    ) -> None:
        """wrk does not keep failed responses: send the request once more and show it."""
        try:
            client.post(scenario.path, scenario.body)
            again = "the same request sent again afterwards succeeded"
        except RequestFailed as exc:
            again = f"sent again afterwards:\n{exc}"
        self.failures.append(f"{point}: wrk counted errors {result.errors}; {again}")

    def _explain_grpc_errors(self, load: GrpcLoad, point: str, result: LoadResult) -> None:
        try:
            probe(load)
            again = "the same call made again afterwards succeeded"
        except grpc.RpcError as exc:
            again = f"made again afterwards: {describe(exc)}"
        self.failures.append(f"{point}: failed calls {result.errors}; {again}")

    def _sample_memory(self, server: Server) -> None:
        if server.process.poll() is not None:
            return
        rss = [round(rss_bytes(pid) / 2**20, 1) for pid in server.worker_pids()]
        self.memory.append(
            {"workers": server.workers, "after_requests": self._kms_requests, "rss_mib": rss}
        )

    def summary(self) -> dict[str, Any]:
        """Everything measured, with ratios and targets, as JSON-ready data."""
        results = report.Results(self.measurements)
        return {
            "config": asdict(self.config),
            "measurements": [asdict(m) for m in self.measurements],
            "ratios": [asdict(r) for r in report.ratios(results)] if self.measurements else [],
            "targets": [asdict(t) for t in self.targets(results)],
            "hsm_raw": self.hsm_raw,
            "asym_raw": self.asym_raw,
            "asym_raw_in_turn": [
                {"workers": w, "concurrency": c, "row": row, **rate}
                for (w, c), rows in sorted(self._raw_in_turn().items())
                for row, rate in rows.items()
            ],
            "asymmetric": [asdict(r) for r in self._asymmetric_rows(results)],
            "memory": self.memory,
            "stack_p50_ms": self.stack_p50_ms,
            "failures": self.failures,
        }

    def _raw_in_turn(self) -> dict[tuple[int, int], dict[str, dict[str, float]]]:
        """(workers, concurrency) -> mechanism -> ops/s and CPU us per op of its slices."""
        return {
            point: {
                row: {"ops_per_s": calls / seconds, "cpu_us_per_op": cpu / calls * 1e6}
                for row, (calls, seconds, cpu) in rows.items()
                if calls and seconds
            }
            for point, rows in self.raw_slices.items()
        }

    def _asymmetric_rows(self, results: report.Results) -> list[report.AsymmetricRow]:
        return report.asymmetric_rows(results, self.asym_raw, self._raw_in_turn())

    def targets(self, results: report.Results) -> list[report.Target]:
        """Issue 6's targets: measured ones, then the ones only --scale measures."""
        stalled = report.stalled_workers(self.stack_p50_ms)
        measured = report.targets(results, stalled) if self.measurements else []
        return measured + report.not_run_targets()

    def print_report(self) -> None:
        """The table, the ratios, the targets, the token's rate, memory and failures."""
        results = report.Results(self.measurements)
        _section("Measurements (req/s as a multiple of F, R and G at the same point; CPU)")
        _print_lines(report.measurement_table(results))
        if self.measurements:
            _section("Ratios (same run)")
            _print_lines(report.ratio_table(report.ratios(results)))
        _section("HTTP stack (R, one keep-alive connection)")
        _print_lines(report.stack_lines(self.stack_p50_ms))
        _section("HSM")
        _print_lines(report.hsm_lines(self.hsm_raw, results))
        _section("Asymmetric keys: service / raw token, same mechanism, same run (issue 17)")
        _print_lines(report.asymmetric_lines(self._asymmetric_rows(results), self.asym_raw))
        _section("Memory (kms-hsm RSS per worker)")
        _print_lines(memory_lines(self.memory))
        _section("Targets (issue 6; one run, the issue asks for the median of 3)")
        _print_lines(report.target_table(self.targets(results)))
        report.print_failures(self.failures)


def memory_lines(samples: list[dict[str, Any]]) -> list[str]:
    """RSS after the first scenario and at the end, per worker count."""
    return [
        f"w{s['workers']}: after {s['after_requests']:>9,} requests: "
        + ", ".join(f"{mib:.1f} MiB" for mib in s["rss_mib"])
        for s in samples
    ]


def _print_progress(m: Measurement) -> None:
    print(
        f"  w{m.workers} c{m.concurrency:<3} {m.scenario:<38} {m.rps:>8,.0f} req/s "
        f"p50 {m.p50_ms:6.2f} ms  p99 {m.p99_ms:6.2f} ms  errors {m.errors}  "
        f"server {m.server_us:5.0f} us/req  load {m.client_cores:.2f} cores",
        flush=True,
    )


def _section(title: str) -> None:
    print(f"\n== {title}")


def _print_lines(lines: list[str]) -> None:
    print("\n".join(lines), flush=True)


# ---------------------------------------------------------------------------- output


def meta(started: float) -> dict[str, Any]:
    """Where and with what the run happened."""
    packages = (
        "kms-hsm",
        "uvicorn",
        "fastapi",
        "starlette",
        "pydantic",
        "cryptography",
        "grpcio",
        "protobuf",
        "yandexcloud",
        "uvloop",
    )
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "wall_seconds": round(time.monotonic() - started, 1),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "packages": {name: _version(name) for name in packages},
        "uvicorn_uvloop": importlib.util.find_spec("uvloop") is not None,
        "uvicorn_httptools": importlib.util.find_spec("httptools") is not None,
    }


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` to ``path`` (parents created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    print(f"\nresults written to {path}")


def keep_logs(work_dir: Path, json_path: Path) -> None:
    """Copy the server logs next to the results (after a failure)."""
    target = json_path.with_name(json_path.stem + "-logs")
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(work_dir / "logs", target)
    print(f"server logs copied to {target}")


def run_bench(args: argparse.Namespace, work_dir: Path) -> tuple[dict[str, Any], bool]:
    """The default (or smoke) run; returns (results, failed)."""
    bench = BenchRun(config_from(args), work_dir)
    try:
        bench.run()
    except (ServerError, RequestFailed) as exc:
        bench.failures.append(f"run aborted: {exc}")
    bench.print_report()
    data = bench.summary()
    failed = bool(bench.failures) or any(m.errors for m in bench.measurements)
    return data, failed


def main(argv: list[str] | None = None) -> int:
    """Run, print, write JSON; 1 when any request failed."""
    args = parse_args(argv)
    started = time.monotonic()
    ensure_wrk()
    default_name = (
        "scale.json"
        if args.scale
        else "memory.json"
        if args.memory
        else "envelope.json"
        if args.envelope
        else "latest.json"
    )
    json_path: Path = args.json or RESULTS_DIR / default_name
    with tempfile.TemporaryDirectory(prefix="kms-bench-") as tmp:
        work_dir = Path(tmp)
        if args.scale:
            data, failed = scale.run_scale(args, work_dir)
        elif args.memory:
            data, failed = memory.run_memory(args, work_dir)
        elif args.envelope:
            data, failed = envelope.run_envelope(args, work_dir)
        else:
            data, failed = run_bench(args, work_dir)
            if args.smoke:
                more, more_failed = envelope.run_envelope(args, work_dir)
                data.update(more)
                failed = failed or more_failed
        data["meta"] = meta(started)
        write_json(json_path, data)
        if failed and (work_dir / "logs").is_dir():
            keep_logs(work_dir, json_path)
    print("FAILED: see FAILURES above" if failed else "OK: no request failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
