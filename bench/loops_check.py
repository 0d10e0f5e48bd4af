"""Was ``kms_hsm/loops.py`` (a cached event loop) worth having? Issue 14 says no: dropped.

Measures, in one run and inside a running event loop (uvloop's, as the service runs, and
asyncio's default loop), the cost per call of:

* ``asyncio.get_running_loop()``: what the data plane would call without ``loops.py``;
* ``kms_hsm.loops.running_loop()`` and ``kms_hsm.loops.current_loop()``: its cached
  replacements;
* two references: ``os.getpid()`` (the system call CPython 3.11's ``get_running_loop()``
  makes) and the bare ``for`` loop every measurement includes.

Each variant is called ``--calls`` times in a row, per loop kind, in ``--rounds`` rounds; the
variants and the loop kinds are interleaved (the order rotates every round) so that a
slow stretch of a shared machine hits all of them alike, and the median of the rounds is
printed, with its ratio to ``asyncio.get_running_loop()`` on the same loop. Then, when
``strace`` is installed, each variant runs in a child process under
``strace -f -c -e trace=getpid`` with ``--strace-calls`` calls and with none, and the
difference gives the ``getpid`` system calls per call. Last, the gain per request: the
saving per call on uvloop times the call sites an encrypt request passes (2 for a software
key, 4 for an HSM key) against ``--request-us`` of CPU per request (bench/README.md).

Run it with the project's interpreter, or with Debian 12's python3 (uvloop from the venv)::

    .venv/bin/python bench/loops_check.py
    PYTHONPATH=.:.venv/lib/python3.11/site-packages /usr/bin/python3 bench/loops_check.py

Stdlib and uvloop only. The module was dropped after this measurement (0.2-0.35 % of a
request; bench/README.md), so its recipe, kept here, is what is measured. ~30 s on 2 cores
with the defaults.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from importlib import import_module
from importlib.metadata import version
from itertools import repeat
from pathlib import Path

import uvloop

_cache = threading.local()


def _copy_running_loop() -> asyncio.AbstractEventLoop | None:
    """kms_hsm/loops.py's ``running_loop``, copied for when that module is gone."""
    loop: asyncio.AbstractEventLoop | None = getattr(_cache, "loop", None)
    if loop is not None and loop.is_running():
        return loop
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return None
    _cache.loop = loop
    return loop


def _copy_current_loop() -> asyncio.AbstractEventLoop:
    loop = _copy_running_loop()
    if loop is None:
        raise RuntimeError("no running event loop")
    return loop


def _cached_variants() -> tuple[Callable[[], object], Callable[[], object], str]:
    try:
        loops = import_module("kms_hsm.loops")
    except ImportError:
        source = "kms_hsm.loops not importable: a copy of its recipe (this file) is measured"
        return _copy_running_loop, _copy_current_loop, source
    return loops.running_loop, loops.current_loop, f"loops = {loops.__file__}"


RUNNING_LOOP, CURRENT_LOOP, LOOPS_SOURCE = _cached_variants()
LOOP_KINDS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "uvloop": uvloop.new_event_loop,
    "asyncio": asyncio.new_event_loop,
}
VARIANTS: dict[str, Callable[[], object] | None] = {
    "asyncio.get_running_loop()": asyncio.get_running_loop,
    "loops.running_loop()": RUNNING_LOOP,
    "loops.current_loop()": CURRENT_LOOP,
    "os.getpid() [reference]": os.getpid,
    "empty for loop [reference]": None,
}
STRACED = ["asyncio.get_running_loop()", "loops.running_loop()", "loops.current_loop()"]
# Call sites an encrypt request passes (grep current_loop / running_loop in kms_hsm):
# store/state.py _turn_version (the request's pin), AuditBatcher.record (kms_hsm/audit/), and
# for an HSM key also crypto/agent/client.py AgentClients.client and AgentClient._send.
CALL_SITES = {"software-key encrypt": 2, "HSM-key encrypt": 4}


def _ns_per_call(fn: Callable[[], object] | None, calls: int) -> float:
    if fn is None:
        start = time.perf_counter_ns()
        for _ in repeat(None, calls):
            pass
        return (time.perf_counter_ns() - start) / calls
    start = time.perf_counter_ns()
    for _ in repeat(None, calls):
        fn()
    return (time.perf_counter_ns() - start) / calls


def _run_in_loop(kind: str, work: Callable[[], object]) -> object:
    async def inside() -> object:
        return work()

    loop = LOOP_KINDS[kind]()
    try:
        return loop.run_until_complete(inside())
    finally:
        loop.close()


def _measure(calls: int, rounds: int) -> dict[tuple[str, str], list[float]]:
    results: dict[tuple[str, str], list[float]] = {}
    names = list(VARIANTS)
    kinds = list(LOOP_KINDS)
    for kind in kinds:  # warm-up: caches filled, code paths hot
        _run_in_loop(kind, lambda: [_ns_per_call(VARIANTS[n], 20_000) for n in names])
    gc.disable()
    try:
        for r in range(rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for kind in kinds[r % 2 :] + kinds[: r % 2]:

                def one_round(order: list[str] = order) -> dict[str, float]:
                    return {name: _ns_per_call(VARIANTS[name], calls) for name in order}

                timings = _run_in_loop(kind, one_round)
                assert isinstance(timings, dict)
                for name, ns in timings.items():
                    results.setdefault((kind, name), []).append(ns)
    finally:
        gc.enable()
    return results


def _child(kind: str, name: str, calls: int) -> None:
    fn = VARIANTS[name]
    assert fn is not None

    def work() -> None:
        for _ in repeat(None, calls):
            fn()

    _run_in_loop(kind, work)


def _getpid_calls(kind: str, name: str, calls: int) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "strace.txt"
        cmd = ["strace", "-f", "-c", "-o", str(out), "-e", "trace=getpid", sys.executable]
        cmd += [__file__, "--child", kind, name, str(calls)]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        for line in out.read_text().splitlines():
            fields = line.split()
            if fields and fields[-1] == "getpid":
                return int(fields[3])
    return 0


def _syscalls(calls: int) -> dict[tuple[str, str], float]:
    per_call: dict[tuple[str, str], float] = {}
    for kind in LOOP_KINDS:
        for name in STRACED:
            without = _getpid_calls(kind, name, 0)
            per_call[(kind, name)] = (_getpid_calls(kind, name, calls) - without) / calls
    return per_call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1_000_000, help="calls per measurement")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median)")
    parser.add_argument("--strace-calls", type=int, default=100_000, help="0: no strace")
    parser.add_argument("--request-us", type=float, default=80.0, help="CPU per request")
    parser.add_argument("--child", nargs=3, metavar=("KIND", "VARIANT", "CALLS"))
    args = parser.parse_args()
    if args.child:
        _child(args.child[0], args.child[1], int(args.child[2]))
        return

    print(
        f"{platform.python_implementation()} {platform.python_version()} "
        f"({sys.executable}), uvloop {version('uvloop')}, {os.cpu_count()} CPUs, "
        f"load {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    print(LOOPS_SOURCE)
    print(f"{args.calls:,} calls per measurement, {args.rounds} interleaved rounds, median")
    results = _measure(args.calls, args.rounds)
    med = {key: statistics.median(values) for key, values in results.items()}
    kinds = list(LOOP_KINDS)
    width = max(map(len, VARIANTS)) + 2
    print()
    header = "".join(f"{k + ' ns':>12}{'ratio':>8}{'spread':>9}" for k in kinds)
    print(f"{'per call, in a running loop':<{width}}{header}")
    for name in VARIANTS:
        row = f"{name:<{width}}"
        for kind in kinds:
            values = results[(kind, name)]
            ratio = med[(kind, name)] / med[(kind, "asyncio.get_running_loop()")]
            spread = (max(values) - min(values)) / med[(kind, name)]
            row += f"{med[(kind, name)]:>12.1f}{ratio:>8.2f}{spread:>8.0%} "
        print(row)
    print("(ratio: to asyncio.get_running_loop() on the same loop; spread: (max-min)/median)")

    if args.strace_calls and shutil.which("strace"):
        print()
        print(f"getpid system calls per call (strace -f -c -e trace=getpid, {args.strace_calls:,}")
        print("calls minus a run with none)")
        per_call = _syscalls(args.strace_calls)
        print(f"{'':<{width}}" + "".join(f"{k:>12}" for k in kinds))
        for name in STRACED:
            print(f"{name:<{width}}" + "".join(f"{per_call[(k, name)]:>12.3f}" for k in kinds))
    elif args.strace_calls:
        print("\nstrace not found: system calls not counted (apt-get install -y strace)")

    saving = med[("uvloop", "asyncio.get_running_loop()")] - med[("uvloop", "loops.current_loop()")]
    print()
    print(f"gain per request on uvloop: {saving:.1f} ns saved per call, against")
    print(f"~{args.request_us:g} us of CPU per software-key encrypt (bench/README.md)")
    for what, sites in CALL_SITES.items():
        total = saving * sites
        share = total / (args.request_us * 1000)
        print(f"  {what:<22}{sites} calls  {total:>7.1f} ns  {share:>7.2%}")


if __name__ == "__main__":
    main()
