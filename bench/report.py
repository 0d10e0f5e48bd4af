"""Ratios against the baselines of the same run, issue 6's targets, the asymmetric rows
against the token's own rate (issue 17), and the printed tables."""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from scenarios import (
    ASYMMETRIC,
    ASYMMETRIC_GRPC,
    BASE_F,
    BASE_G,
    BASE_R,
    DEC_OAEP,
    ENC_HSM,
    ENC_SW,
    GDKH_HSM,
    GDKH_SW,
    GRPC_HSM,
    GRPC_SW,
    RAW_ROW,
    Measurement,
)

PASS, MISS, NA = "PASS", "MISS", "n/a"
# One request at a time through R takes well under a millisecond; ~40 ms means Nagle's
# algorithm waits for a delayed ACK (TCP_NODELAY off on the accepted sockets).
STALL_MS = 20.0
STALL_NOTE = (
    "TCP_NODELAY is off: uvicorn's multi-worker listener socket has proto 0, so asyncio "
    "never sets it on accepted connections (Kludex/uvicorn#3149) and every keep-alive "
    "response waits ~40 ms for a delayed ACK. Numbers at this worker count measure that "
    "stall, for kms-hsm and the baselines alike."
)


@dataclass
class Ratio:
    """A named ratio at one (workers, concurrency) point; ``value`` None when not measured."""

    name: str
    workers: int
    concurrency: int
    value: float | None


@dataclass
class Target:
    """One target of issue 6 and how this run did against it."""

    name: str
    goal: str
    value: float | None
    status: str
    note: str = ""


class Results:
    """Measurements indexed by (scenario, workers, concurrency)."""

    def __init__(self, measurements: Iterable[Measurement]) -> None:
        self.items = list(measurements)
        self._index = {(m.scenario, m.workers, m.concurrency): m for m in self.items}
        self.workers = sorted({m.workers for m in self.items})
        self.concurrency = sorted({m.concurrency for m in self.items})

    def get(self, scenario: str, workers: int, concurrency: int) -> Measurement | None:
        """The measurement, or None when that point was not run (or failed)."""
        return self._index.get((scenario, workers, concurrency))

    def rps_ratio(self, a: str, b: str, workers: int, concurrency: int) -> float | None:
        """req/s of ``a`` over req/s of ``b`` at the same point."""
        return _div(self.get(a, workers, concurrency), self.get(b, workers, concurrency), "rps")

    def p99_ratio(self, a: str, b: str, workers: int, concurrency: int) -> float | None:
        """p99 of ``a`` over p99 of ``b`` at the same point."""
        return _div(self.get(a, workers, concurrency), self.get(b, workers, concurrency), "p99_ms")

    def cpu_ratio(self, a: str, b: str, workers: int, concurrency: int) -> float | None:
        """Server CPU per request of ``a`` over that of ``b`` at the same point."""
        return _div(
            self.get(a, workers, concurrency), self.get(b, workers, concurrency), "server_us"
        )

    def scaling(self, scenario: str, concurrency: int) -> float | None:
        """req/s at the most workers over req/s at the fewest, same concurrency."""
        if len(self.workers) < 2:
            return None
        many = self.get(scenario, self.workers[-1], concurrency)
        one = self.get(scenario, self.workers[0], concurrency)
        return _div(many, one, "rps")


def _div(a: Measurement | None, b: Measurement | None, attr: str) -> float | None:
    if a is None or b is None or a.errors or b.errors:
        return None
    denominator = getattr(b, attr)
    return getattr(a, attr) / denominator if denominator else None


# name -> how to compute it at (workers, concurrency)
_POINT_RATIOS: dict[str, Callable[[Results, int, int], float | None]] = {
    "sw encrypt / F": lambda r, w, c: r.rps_ratio(ENC_SW, BASE_F, w, c),
    "sw encrypt / R": lambda r, w, c: r.rps_ratio(ENC_SW, BASE_R, w, c),
    "F / R": lambda r, w, c: r.rps_ratio(BASE_F, BASE_R, w, c),
    "HSM encrypt / sw encrypt": lambda r, w, c: r.rps_ratio(ENC_HSM, ENC_SW, w, c),
    "gdk AES_256_HSM: HSM key / sw key": lambda r, w, c: r.rps_ratio(GDKH_HSM, GDKH_SW, w, c),
    "p99 sw encrypt / p99 F": lambda r, w, c: r.p99_ratio(ENC_SW, BASE_F, w, c),
    "p99 HSM encrypt / p99 F": lambda r, w, c: r.p99_ratio(ENC_HSM, BASE_F, w, c),
}
# gRPC (issue 16): against G, the bare grpc.aio servicer of the same run.
_GRPC_RATIOS: dict[str, Callable[[Results, int, int], float | None]] = {
    "gRPC sw encrypt / G": lambda r, w, c: r.rps_ratio(GRPC_SW, BASE_G, w, c),
    "gRPC HSM encrypt / G": lambda r, w, c: r.rps_ratio(GRPC_HSM, BASE_G, w, c),
    "gRPC HSM encrypt / gRPC sw encrypt": lambda r, w, c: r.rps_ratio(GRPC_HSM, GRPC_SW, w, c),
    "p99 gRPC sw encrypt / p99 G": lambda r, w, c: r.p99_ratio(GRPC_SW, BASE_G, w, c),
    "p99 gRPC HSM encrypt / p99 G": lambda r, w, c: r.p99_ratio(GRPC_HSM, BASE_G, w, c),
    # CPU per request of the server alone: the Python clients take about as much CPU as the
    # server, so req/s ratios on 2 cores understate the gap between servers.
    "server us/req: gRPC sw encrypt / G": lambda r, w, c: r.cpu_ratio(GRPC_SW, BASE_G, w, c),
    "server us/req: gRPC HSM encrypt / G": lambda r, w, c: r.cpu_ratio(GRPC_HSM, BASE_G, w, c),
    "gRPC sw encrypt / REST sw encrypt": lambda r, w, c: r.rps_ratio(GRPC_SW, ENC_SW, w, c),
    "G / R": lambda r, w, c: r.rps_ratio(BASE_G, BASE_R, w, c),
}
_SCALING = {
    "sw encrypt": ENC_SW,
    "HSM encrypt": ENC_HSM,
    "F": BASE_F,
    "R": BASE_R,
    "gRPC sw encrypt": GRPC_SW,
    "gRPC HSM encrypt": GRPC_HSM,
    "G": BASE_G,
}


def ratios(results: Results) -> list[Ratio]:
    """Every ratio at every measured point, then the worker scaling per concurrency.

    The gRPC ratios only when the run measured gRPC (``--grpc-clients 0`` does not).
    """
    grpc = {GRPC_SW, GRPC_HSM, BASE_G}
    measured_grpc = bool(grpc & {m.scenario for m in results.items})
    computed = dict(_POINT_RATIOS)
    if measured_grpc:
        computed.update(_GRPC_RATIOS)
    out = [
        Ratio(name, w, c, compute(results, w, c))
        for name, compute in computed.items()
        for w in results.workers
        for c in results.concurrency
    ]
    if len(results.workers) > 1:
        many, one = results.workers[-1], results.workers[0]
        for label, scenario in _SCALING.items():
            if scenario in grpc and not measured_grpc:
                continue
            for c in results.concurrency:
                name = f"{many}w/{one}w {label}"
                out.append(Ratio(name, many, c, results.scaling(scenario, c)))
    return out


def at_least(name: str, value: float | None, goal: float, note: str = "") -> Target:
    """PASS when ``value >= goal``; n/a when it was not measured."""
    status = NA if value is None else PASS if value >= goal else MISS
    return Target(name, f">= {goal}", value, status, note)


def at_most(name: str, value: float | None, goal: float, note: str = "") -> Target:
    """PASS when ``value <= goal``; n/a when it was not measured."""
    status = NA if value is None else PASS if value <= goal else MISS
    return Target(name, f"<= {goal}", value, status, note)


def stalled_workers(stack_p50_ms: dict[int, float]) -> set[int]:
    """Worker counts at which the HTTP stack shows the ~40 ms Nagle stall."""
    return {workers for workers, p50 in stack_p50_ms.items() if p50 > STALL_MS}


def _worker_scaling_target(results: Results, c: int, stalled: set[int]) -> Target:
    name = f"2 workers / 1 worker, sw encrypt (c{c})"
    if results.workers[:2] != [1, 2]:
        return Target(name, ">= 1.6 when F does", None, NA, "needs --workers 1,2")
    if 2 in stalled:
        value = results.scaling(ENC_SW, c)
        note = "2 workers stall ~40 ms per request (uvicorn#3149, see HTTP stack)"
        return Target(name, ">= 1.6 when F does", value, NA, note)
    kms, base = results.scaling(ENC_SW, c), results.scaling(BASE_F, c)
    target = at_least(name, kms, 1.6)
    f_note = "not measured" if base is None else f"{base:.2f}"
    target.goal = ">= 1.6 when F does"
    target.note = f"F shows {f_note}"
    if target.status == MISS and (base is None or base < 1.6):
        target.status = NA
        target.note += ": the machine does not scale either"
    return target


def targets(results: Results, stalled: set[int]) -> list[Target]:
    """Issue 6's ratio targets at its reference point: 1 worker, the highest concurrency."""
    w, c = results.workers[0], results.concurrency[-1]
    at = f"(w{w} c{c})"
    return [
        at_least(f"sw-key encrypt / F {at}", results.rps_ratio(ENC_SW, BASE_F, w, c), 1.5),
        at_least(f"sw-key encrypt / R {at}", results.rps_ratio(ENC_SW, BASE_R, w, c), 0.6),
        at_least(
            f"HSM-key encrypt / sw-key encrypt {at}",
            results.rps_ratio(ENC_HSM, ENC_SW, w, c),
            0.85,
        ),
        at_least(
            f"gdk AES_256_HSM: HSM key / sw key {at}",
            results.rps_ratio(GDKH_HSM, GDKH_SW, w, c),
            0.5,
        ),
        at_most(f"p99 sw-key encrypt / F p99 {at}", results.p99_ratio(ENC_SW, BASE_F, w, c), 1.5),
        at_most(f"p99 HSM-key encrypt / F p99 {at}", results.p99_ratio(ENC_HSM, BASE_F, w, c), 1.5),
        _worker_scaling_target(results, c, stalled),
    ]


def not_run_targets() -> list[Target]:
    """The targets this mode does not measure, so that the table names them anyway."""
    return [
        Target("10k keys: encrypt throughput / 10-key run", ">= 0.9", None, NA, "run --scale"),
        Target("10k keys: start-up seconds", "<= 10", None, NA, "run --scale"),
        Target(
            "memory per worker after 1M requests / after 10k", "<= 1.1", None, NA, "run --memory"
        ),
    ]


# ---------------------------------------------------------------------------- printing


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def measurement_table(results: Results) -> list[str]:
    """One line per measurement: req/s as a multiple of F, R and G at that point, and CPU.

    ``srv us`` is the CPU of the server under test (its process tree) per request; ``load``
    is the cores the load generator used (wrk, or the gRPC client processes) on the same
    cores as the server, so taken from it.
    """
    head = f"{'w':>2} {'conc':>4}  {'scenario':<38}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}"
    lines = [head + f"{'errors':>7}{'xF':>7}{'xR':>7}{'xG':>7}{'srv us':>8}{'load':>6}"]
    for m in results.items:
        x_f = results.rps_ratio(m.scenario, BASE_F, m.workers, m.concurrency)
        x_r = results.rps_ratio(m.scenario, BASE_R, m.workers, m.concurrency)
        x_g = results.rps_ratio(m.scenario, BASE_G, m.workers, m.concurrency)
        lines.append(
            f"{m.workers:>2} {m.concurrency:>4}  {m.scenario:<38}{m.rps:>9,.0f}"
            f"{m.p50_ms:>9.2f}{m.p99_ms:>9.2f}{m.errors:>7}{_fmt(x_f):>7}{_fmt(x_r):>7}"
            f"{_fmt(x_g):>7}{m.server_us:>8.0f}{m.client_cores:>6.2f}"
        )
    return lines


def ratio_table(items: list[Ratio]) -> list[str]:
    """Ratios as rows, measured (workers, concurrency) points as columns."""
    points = sorted({(r.workers, r.concurrency) for r in items})
    values = {(r.name, r.workers, r.concurrency): r.value for r in items}
    lines = [f"{'ratio':<38}" + "".join(f"{f'w{w} c{c}':>10}" for w, c in points)]
    for name in dict.fromkeys(r.name for r in items):
        cells = (_fmt(values[name, w, c]) if (name, w, c) in values else "" for w, c in points)
        lines.append(f"{name:<38}" + "".join(f"{cell:>10}" for cell in cells))
    return lines


def target_table(items: list[Target]) -> list[str]:
    """PASS/MISS/n/a per target with the measured value and the goal."""
    lines = [f"{'':<5} {'target':<48}{'measured':>9}  {'goal':<20} note"]
    for t in items:
        lines.append(f"{t.status:<5} {t.name:<48}{_fmt(t.value):>9}  {t.goal:<20} {t.note}")
    return lines


def stack_lines(stack_p50_ms: dict[int, float]) -> list[str]:
    """p50 per worker count, with the stall explained where it shows."""
    if not stack_p50_ms:
        return ["not measured"]
    lines = [f"w{w}: p50 {p50:.2f} ms" for w, p50 in sorted(stack_p50_ms.items())]
    if stalled_workers(stack_p50_ms):
        lines += textwrap.wrap("WARNING: " + STALL_NOTE, 92)
    return lines


def hsm_lines(hsm: dict[str, Any] | None, results: Results) -> list[str]:
    """The token's own rate, and HSM-key encrypt over the API as a share of it."""
    if not hsm:
        return ["raw PKCS#11 rate: not measured"]
    raw = hsm["raw"]
    lines = [
        f"raw python-pkcs11 AES-GCM encrypt, 1 thread, 1 session: {raw['ops_per_s']:,.0f} ops/s "
        f"({raw['us_per_op']:.1f} us/op, {hsm['plaintext_bytes']}-byte plaintext, session copy)"
    ]
    token_object = hsm.get("raw_token_object")
    if token_object:
        lines.append(
            f"the same with the token object: {token_object['ops_per_s']:,.0f} ops/s "
            f"({token_object['us_per_op']:.1f} us/op)"
        )
    for threads, rate in hsm["threads"].items():
        lines.append(
            f"HsmCrypto.encrypt (one call at a time), {threads} thread(s): {rate:,.0f} ops/s"
        )
    for scenario, over in ((ENC_HSM, "HTTP"), (GRPC_HSM, "gRPC")):
        best = max(
            (m for m in results.items if m.scenario == scenario), key=lambda m: m.rps, default=None
        )
        if best is not None:
            lines.append(
                f"best HSM-key encrypt over {over} (w{best.workers} c{best.concurrency}): "
                f"{best.rps / raw['ops_per_s']:.2f} x the raw token rate"
            )
    return lines


# The raw rate of the start is that of the token object, since the service signs and
# decrypts with the private key's token object (asym_raw.py measures the session copy
# too, printed beside it); so are the slices taken in turn with the rows.
RAW_BASIS = "token_object"


@dataclass
class AsymmetricRow:
    """One asymmetric service row beside the token's rate for the same mechanism.

    ``raw_ops_per_s``, ``raw_cpu_us``: the token's rate and the CPU per call of the
    process making the calls, in the slices taken in turn with the rows at this point
    (``raw_in_turn``), else as measured at the start. ``x_raw``: the service's req/s over
    that rate (one session, one thread); ``cpu_x_raw``: the server's CPU per request (its
    whole process tree, HSM agents included) over the raw call's CPU: other load on the
    machine slows both down, but inflates neither's CPU time much.
    """

    scenario: str
    transport: str
    workers: int
    concurrency: int
    rps: float
    p50_ms: float
    p99_ms: float
    server_us: float
    raw_ops_per_s: float | None
    raw_cpu_us: float | None
    x_raw: float | None
    cpu_x_raw: float | None
    raw_in_turn: bool = False


def asymmetric_rows(
    results: Results,
    raw: dict[str, Any] | None,
    in_turn: dict[tuple[int, int], dict[str, dict[str, float]]] | None = None,
) -> list[AsymmetricRow]:
    """Every measured asymmetric scenario with its raw rate and the two ratios.

    ``in_turn``: (workers, concurrency) -> mechanism row -> ``ops_per_s`` and
    ``cpu_us_per_op`` of the slices taken in turn with that point's rows; preferred to
    the measurement of the start.
    """
    rows = []
    raw_rows = (raw or {}).get("rows", {})
    for m in results.items:
        if m.scenario not in ASYMMETRIC:
            continue
        row_name = RAW_ROW[m.scenario]
        timing = (in_turn or {}).get((m.workers, m.concurrency), {}).get(row_name)
        turn = timing is not None
        if timing is None:
            timing = (raw_rows.get(row_name) or {}).get(RAW_BASIS)
        ops = timing["ops_per_s"] if timing else None
        us = timing["cpu_us_per_op"] if timing else None
        rows.append(
            AsymmetricRow(
                m.scenario,
                "gRPC" if m.scenario in ASYMMETRIC_GRPC else "REST",
                m.workers,
                m.concurrency,
                m.rps,
                m.p50_ms,
                m.p99_ms,
                m.server_us,
                ops,
                us,
                m.rps / ops if ops and not m.errors else None,
                m.server_us / us if us and not m.errors else None,
                turn,
            )
        )
    return rows


def asymmetric_lines(rows: list[AsymmetricRow], raw: dict[str, Any] | None) -> list[str]:
    """The token's own rates at the start, then each service row with its ratios."""
    if not raw and not rows:
        return ["not measured"]
    lines: list[str] = []
    if raw:
        lines.append(
            f"raw token at the start: python-pkcs11, 1 session logged in, 1 thread, back to "
            f"back, {raw['seconds']:g} s each (token object; its session copy beside it)"
        )
        for name, row in raw["rows"].items():
            copy = row.get("session_copy")
            copy_text = f"copy {copy['ops_per_s']:>7,.0f}" if copy else "no copy"
            timing = row[RAW_BASIS]
            lines.append(
                f"  {name:<30}{timing['ops_per_s']:>9,.0f} ops/s {timing['us_per_op']:>7.1f} us"
                f" ({timing['cpu_us_per_op']:.1f} us CPU)  ({copy_text})  {row['mechanism']}"
                f" on a {row['input']}"
            )
        decode = raw["rows"].get(DEC_OAEP, {}).get("host_decode_us")
        decode_text = f" ({decode:.0f} us here, measured alone)" if decode is not None else ""
        lines.append(
            "  decrypt: the raw row times CKM_RSA_X_509 alone (SoftHSM2 2.6 has no OAEP-SHA256);"
        )
        lines.append(
            f"  the service's agent then decodes EME-OAEP on the host{decode_text}: not in the "
            "raw figure."
        )
    else:
        lines.append("raw token: not measured")
    if not rows:
        return [*lines, "service rows: not measured"]
    head = (
        f"{'w':>2} {'conc':>4}  {'scenario':<34}{'req/s':>8}{'p50 ms':>8}{'p99 ms':>8}"
        f"{'srv us':>8}{'raw/s':>8}{'raw us':>8}{'x raw':>7}{'cpu/raw':>8}"
    )
    lines += ["", head]
    for r in rows:
        lines.append(
            f"{r.workers:>2} {r.concurrency:>4}  {r.scenario:<34}{r.rps:>8,.0f}{r.p50_ms:>8.2f}"
            f"{r.p99_ms:>8.2f}{r.server_us:>8.0f}"
            f"{_fmt(r.raw_ops_per_s, 0) + ('' if r.raw_in_turn else '*'):>8}"
            f"{_fmt(r.raw_cpu_us, 0):>8}{_fmt(r.x_raw):>7}{_fmt(r.cpu_x_raw):>8}"
        )
    lines.append(
        "raw/s, raw us: the token object's rate and CPU per call in slices taken in turn with "
        "the rows of the same point (*: at the start)."
    )
    lines.append(
        "x raw: req/s over raw/s; cpu/raw: server CPU per request (workers and HSM "
        "agents) over raw us."
    )
    lines.append(
        "The raw rate is one session in one process; with N workers the service has N HSM "
        "agents, each with its own session, so x raw can pass 1."
    )
    return lines


def print_failures(failures: list[str]) -> None:
    """Every failure in full (requests and responses included)."""
    if not failures:
        return
    print(f"\n== FAILURES ({len(failures)})")
    for failure in failures:
        print(failure, end="\n\n")
