"""``--scale``: 10,000 software keys and 10,000 HSM keys in one kms-hsm.

1. a fresh server (1 worker) gets 10 keys of each kind; encrypt against a key chosen at
   random among them is measured with wrk (the 10-key run);
2. the keys are filled up to 10,000 of each kind with concurrent create requests;
3. the server is restarted: start-up = process start to the first successful encrypt;
4. every key is encrypted with once (first touch: material unwrap, HSM handle lookup),
   then random-key encrypt is measured again, as a ratio to the 10-key run;
5. on the same server, random-key encrypt over the first 10 keys and over all keys is
   measured in turn (``--rounds`` slices each): the target's ratio. Steps 1 and 4 lie
   minutes apart, and on a shared virtual machine the cores' speed drifts that much
   (the ratio of step 4 to step 1 is printed too).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol, TypeVar

import report
from apiclient import ApiClient, RequestFailed
from loadgen import (
    KEY_PLACEHOLDER,
    Load,
    LoadError,
    LoadResult,
    combine,
    run_wrk,
    slice_seconds,
)
from scenarios import encrypt_body
from servers import Server, ServerError, read_token, rss_bytes, start_kms

T = TypeVar("T")
R = TypeVar("R")
KINDS = {"sw-key": "AES_256", "hsm-key": "AES_256_HSM"}
SMALL = 10
CLIENT_THREADS = 16
BATCH = 1000
ENCRYPT_BODY = encrypt_body()


def _encrypt(client: ApiClient, key_id: str) -> None:
    client.post(f"/kms/v1/keys/{key_id}:encrypt", ENCRYPT_BODY)


def _encrypt_ok(client: ApiClient, key_id: str) -> bool:
    try:
        _encrypt(client, key_id)
    except RequestFailed:
        return False
    return True


def _in_pool(what: str, items: Sequence[T], call: Callable[[T], R]) -> tuple[list[R], float]:
    """``call`` on every item from a thread pool, with a progress line every ``BATCH``.

    All items are queued at once, so that no connection idles past uvicorn's keep-alive
    timeout while others finish. Returns the results in order and items per second.
    """
    results: list[R] = []
    started = time.monotonic()
    with ThreadPoolExecutor(CLIENT_THREADS) as pool:
        for result in pool.map(call, items):
            results.append(result)
            if len(results) % BATCH == 0 or len(results) == len(items):
                rate = len(results) / (time.monotonic() - started)
                print(f"  {what}: {len(results):>6,} of {len(items):,} ({rate:,.0f}/s)", flush=True)
    return results, len(items) / (time.monotonic() - started)


def create_keys(
    client: ApiClient, kind: str, count: int, offset: int = 0
) -> tuple[list[str], float]:
    """``count`` keys of ``kind`` created by concurrent requests; (ids, keys per second)."""
    algorithm = KINDS[kind]
    numbers = range(offset, offset + count)
    return _in_pool(
        f"create {kind}s", numbers, lambda n: client.create_key(f"scale-{kind}-{n}", algorithm)
    )


def touch_all(client: ApiClient, kind: str, ids: list[str]) -> tuple[float, list[str]]:
    """Encrypt once with every key (concurrently); (keys per second, failed requests)."""

    def touch(key_id: str) -> str | None:
        try:
            _encrypt(client, key_id)
        except RequestFailed as exc:
            return str(exc)
        return None

    results, rate = _in_pool(f"first encrypt, {kind}s", ids, touch)
    return rate, [failure for failure in results if failure is not None]


def _rss_mib(server: Server) -> list[float]:
    return [round(rss_bytes(pid) / 2**20, 1) for pid in server.worker_pids()]


def _token_objects(data_dir: Path) -> int:
    return sum(1 for _ in (data_dir / "tokens").glob("*/*.object"))


class ScaleRun:
    """The four steps of the module docstring, and their report."""

    def __init__(self, args: argparse.Namespace, work_dir: Path) -> None:
        self.args = args
        self.work_dir = work_dir
        self.data_dir = work_dir / "data"
        self.log_dir = work_dir / "logs"
        self.connections = max(args.concurrency)
        self.keys = args.scale_keys
        self.ids: dict[str, list[str]] = {}
        self.small: dict[str, dict[str, Any]] = {}
        self.large: dict[str, dict[str, Any]] = {}
        # kind -> {"10": ..., "10000": ...}: the two working sets measured in turn.
        self.paired: dict[str, dict[str, dict[str, Any]]] = {}
        self.creation: dict[str, float] = {}
        self.startup: dict[str, float] = {}
        self.failures: list[str] = []

    def run(self) -> None:
        """Fresh server, 10-key run, fill up, restart, large run."""
        server = start_kms(self.data_dir, 1, self.log_dir)
        try:
            self.startup["empty"] = server.wait_ready(ApiClient(server.base_url).responds)
            client = ApiClient(server.base_url, read_token(self.data_dir))
            for kind in KINDS:
                self.ids[kind] = create_keys(client, kind, SMALL)[0]
            for kind in KINDS:
                self.small[kind] = self._random_encrypt(server, client, kind)
            for kind in KINDS:
                self._fill(client, kind)
        finally:
            server.stop()
        server = start_kms(self.data_dir, 1, self.log_dir)
        try:
            client = ApiClient(server.base_url, read_token(self.data_dir))
            probe_key = self.ids["hsm-key"][-1]
            self.startup["full"] = server.wait_ready(
                lambda: _encrypt_ok(client, probe_key), timeout=600
            )
            for kind in KINDS:
                self.large[kind] = self._random_encrypt(server, client, kind)
            for kind in KINDS:
                self.paired[kind] = self._in_turn(server, client, kind)
        finally:
            server.stop()

    def _fill(self, client: ApiClient, kind: str) -> None:
        more, rate = create_keys(client, kind, self.keys - SMALL, offset=SMALL)
        self.ids[kind] += more
        self.creation[kind] = rate

    def _random_encrypt(self, server: Server, client: ApiClient, kind: str) -> dict[str, Any]:
        """First touch of every key, then wrk against a random key per request."""
        ids = self.ids[kind]
        ids_file = self.work_dir / f"{kind}-{len(ids)}.ids"
        ids_file.write_text("\n".join(ids) + "\n", encoding="utf-8")
        first_touch, failed = touch_all(client, kind, ids)
        if failed:
            self.failures.append(
                f"first encrypt of {len(ids):,} {kind}s: {len(failed)} request(s) failed; "
                f"the first:\n{failed[0]}"
            )
        url = f"{server.base_url}/kms/v1/keys/{KEY_PLACEHOLDER}:encrypt"
        load = Load(url, ENCRYPT_BODY, client.authorization, ids_file)
        result = run_wrk(
            load,
            connections=self.connections,
            seconds=self.args.duration,
            threads=self.args.wrk_threads,
            work_dir=self.work_dir,
        )
        line = (
            f"  {kind} random encrypt over {len(ids):,} keys: {result.rps:,.0f} req/s, "
            f"p99 {result.p99_ms:.2f} ms, errors {result.error_count} "
            f"(first touch {first_touch:,.0f} keys/s)"
        )
        print(line, flush=True)
        if result.error_count:
            self.failures.append(f"{kind} random encrypt ({len(ids)} keys): {result.errors}")
        return {
            "keys": len(ids),
            "first_touch_keys_per_s": first_touch,
            "first_touch_failures": len(failed),
            "rps": result.rps,
            "p50_ms": result.p50_ms,
            "p99_ms": result.p99_ms,
            "errors": result.error_count,
            "error_detail": result.errors,
            "rss_mib": _rss_mib(server),
            "token_objects": _token_objects(self.data_dir),
        }

    def _in_turn(self, server: Server, client: ApiClient, kind: str) -> dict[str, dict[str, Any]]:
        """Random encrypt over 10 keys and over all keys, in alternating slices."""
        url = f"{server.base_url}/kms/v1/keys/{KEY_PLACEHOLDER}:encrypt"
        loads = {}
        for ids in (self.ids[kind][:SMALL], self.ids[kind]):
            ids_file = self.work_dir / f"{kind}-{len(ids)}.ids"
            ids_file.write_text("\n".join(ids) + "\n", encoding="utf-8")
            loads[str(len(ids))] = Load(url, ENCRYPT_BODY, client.authorization, ids_file)
        slices: dict[str, list[LoadResult]] = {name: [] for name in loads}
        for seconds in slice_seconds(self.args.duration, self.args.rounds):
            for name, load in loads.items():
                slices[name].append(
                    run_wrk(
                        load,
                        connections=self.connections,
                        seconds=seconds,
                        threads=self.args.wrk_threads,
                        work_dir=self.work_dir,
                    )
                )
        out = {}
        for name, results in slices.items():
            result = combine(results)
            if result.error_count:
                self.failures.append(
                    f"{kind} random encrypt in turn ({name} keys): {result.errors}"
                )
            out[name] = {
                "keys": int(name),
                "rps": result.rps,
                "p99_ms": result.p99_ms,
                "errors": result.error_count,
            }
        small, large = out[str(SMALL)], out[str(len(self.ids[kind]))]
        print(
            f"  {kind} in turn: {SMALL} keys {small['rps']:,.0f} req/s, "
            f"{large['keys']:,} keys {large['rps']:,.0f} req/s",
            flush=True,
        )
        return out

    def targets(self) -> list[report.Target]:
        """Throughput ratio per kind (the runs in turn) and start-up time."""
        out = []
        for kind in KINDS:
            paired = self.paired.get(kind)
            ratio = None
            if paired and len(paired) == 2:
                small, large = paired[str(SMALL)], paired[str(len(self.ids[kind]))]
                ratio = large["rps"] / small["rps"] if small["rps"] else None
            name = f"{self.keys:,} {kind}s: random encrypt / 10-key run"
            out.append(report.at_least(name, ratio, 0.9))
        startup = self.startup.get("full")
        out.append(report.at_most("start-up seconds with all keys", startup, 10))
        return out

    def summary(self) -> dict[str, Any]:
        """JSON-ready results."""
        return {
            "scale": {
                "keys_per_kind": self.keys,
                "connections": self.connections,
                "seconds": self.args.duration,
                "startup_seconds": self.startup,
                "create_keys_per_s": self.creation,
                "ten_key_run": self.small,
                "large_run": self.large,
                "in_turn": self.paired,
            },
            "targets": [vars(t) for t in self.targets()],
            "failures": self.failures,
        }

    def print_report(self) -> None:
        """Start-up, creation rate, both runs and the targets."""
        print("\n== Scale")
        for name, seconds in self.startup.items():
            print(f"start-up ({name} token): {seconds:.2f} s to the first successful request")
        for kind, rate in self.creation.items():
            print(f"create {kind}s: {rate:,.0f} keys/s")
        for run in (self.small, self.large):
            for kind, r in run.items():
                print(
                    f"{kind}s, {r['keys']:>6,} keys: random encrypt {r['rps']:>6,.0f} req/s, "
                    f"p99 {r['p99_ms']:7.2f} ms; first encrypt per key "
                    f"{r['first_touch_keys_per_s']:,.0f} keys/s; RSS {r['rss_mib']} MiB"
                )
        for kind, paired in self.paired.items():
            small, large = self.small.get(kind), self.large.get(kind)
            apart = (
                f"{large['rps'] / small['rps']:.2f}" if small and large and small["rps"] else "-"
            )
            rates = ", ".join(f"{r['keys']:,} keys {r['rps']:,.0f} req/s" for r in paired.values())
            print(f"{kind}s in turn on the full token: {rates}; minutes apart (above): {apart}")
        print("\n== Targets (issue 6, scale)")
        print("\n".join(report.target_table(self.targets())))
        report.print_failures(self.failures)


class Mode(Protocol):
    """A measurement mode: runs, collects failures, prints, summarises."""

    failures: list[str]

    def run(self) -> None: ...
    def print_report(self) -> None: ...
    def summary(self) -> dict[str, Any]: ...


def run_mode(mode: Mode, name: str) -> tuple[dict[str, Any], bool]:
    """Run ``mode``, print its report; returns (results, failed)."""
    try:
        mode.run()
    except (ServerError, RequestFailed, LoadError) as exc:
        mode.failures.append(f"{name} run aborted: {exc}")
    mode.print_report()
    return mode.summary(), bool(mode.failures)


def run_scale(args: argparse.Namespace, work_dir: Path) -> tuple[dict[str, Any], bool]:
    """The scale mode; returns (results, failed)."""
    return run_mode(ScaleRun(args, work_dir), "scale")
