"""Prometheus metrics of kms-hsm (prometheus-client, multi-process mode); see issue 18 §5.

Every process that counts (the ``serve`` parent, each uvicorn worker, each HSM agent) writes
its own files in one directory, ``PROMETHEUS_MULTIPROC_DIR``; the ``serve`` parent alone
answers scrapes on ``KMS_HSM_METRICS_PORT`` and adds up what every process wrote.

prometheus-client picks how a value is stored (in memory, or in a shared file) when a metric
is built, from ``prometheus_client.values.ValueClass``, which it sets at its own import from
the environment. So nothing here imports it at module import: ``serve`` points the
environment at a fresh directory (``prepare_directory``) before anything builds a metric,
workers and agents inherit that environment, and each process builds its metrics in
``enable``. Without the directory every function here returns at once: metrics are off.

Labels are bounded enumerations only: the method's audit name, the transport, the gRPC code
name, the token operation, the state. No key, version, folder or principal id is ever a
label, so a scrape says how much is happening, never to whom.

Per-request work is kept to a few dictionary updates: what a thread's event loop counts is
written to the shared files at most every ``WRITE_INTERVAL`` seconds (``_Turn``), a few
file writes for hundreds of requests. A scrape therefore lags the calls by up to that
interval; counts of a process's last interval are lost if it dies.
"""

from __future__ import annotations

import asyncio
import bisect
import os
import shutil
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

ENV = "PROMETHEUS_MULTIPROC_DIR"

# Seconds. A software-key encrypt takes well under a millisecond; 503s come after 5 s.
REQUEST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
HSM_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1, 5, 30, 60)
COMMIT_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5, 5)
BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
# Seconds between writes of a loop's counts to the shared files. Written every loop turn
# instead, a software-key encrypt paid 2-15 us more (1-16 requests a turn), 2-10 %.
WRITE_INTERVAL = 0.05

# (kind, state, count) rows read from the database at scrape time.
StateCounts = Callable[[], Iterable[tuple[str, str, int]]]


def prepare_directory(directory: Path) -> None:
    """Make ``directory`` empty and the multi-process directory of this process and its
    children; before any metric is built (``serve`` calls it first)."""
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True, mode=0o700)
    os.environ[ENV] = str(directory)


def withdraw_directory() -> None:
    """Metrics off for this process and its children (a ``serve`` without a metrics port)."""
    os.environ.pop(ENV, None)


class _Metrics:
    """The metric objects of one process, built once the directory is set."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram, values

        # A module that imported prometheus-client before the directory was set left the
        # in-memory value class behind: choose again, now that the environment says so.
        if not getattr(values.ValueClass, "_multiprocess", False):
            values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
        self.requests = Counter(
            "kms_hsm_requests",
            "API calls by method (audit name), transport and outcome (gRPC code name)",
            ["method", "transport", "code"],
        )
        self.request_seconds = Histogram(
            "kms_hsm_request_seconds",
            "API call latency, authentication and audit commit included",
            ["method", "transport"],
            buckets=REQUEST_BUCKETS,
        )
        self.hsm_seconds = Histogram(
            "kms_hsm_hsm_call_seconds",
            "HSM (PKCS#11 agent) calls by token operation: latency, answered or failed",
            ["operation"],
            buckets=HSM_BUCKETS,
        )
        self.hsm_failures = Counter(
            "kms_hsm_hsm_call_failures",
            "HSM calls that failed: error (the token refused), unavailable (timeout, no agent)",
            ["operation", "reason"],
        )
        self.hsm_in_flight = Gauge(
            "kms_hsm_hsm_calls_in_flight",
            "HSM calls sent to the agents and not yet answered",
            multiprocess_mode="livesum",
        )
        self.agent_starts = Counter(
            "kms_hsm_hsm_agent_starts",
            "HSM agent processes started: first (one per worker and lane) or restart",
            ["kind"],
        )
        self.agent_start_failures = Counter(
            "kms_hsm_hsm_agent_start_failures", "HSM agent processes that could not open the token"
        )
        self.reinitialisations = Counter(
            "kms_hsm_pkcs11_reinitialisations",
            "PKCS#11 library reinitialisations in the agents, by result",
            ["result"],
        )
        self.commit_size = Histogram(
            "kms_hsm_audit_commit_events",
            "Audit events per group commit",
            buckets=BATCH_SIZES,
        )
        self.commit_seconds = Histogram(
            "kms_hsm_audit_commit_seconds",
            "Time to write one audit group commit",
            buckets=COMMIT_BUCKETS,
        )
        self.material_cache = Counter(
            "kms_hsm_material_cache_lookups",
            "Software key material cache lookups: hit, or miss (an unwrap in the HSM)",
            ["result"],
        )


class _Turn(threading.local):
    """What one thread's event loop counted since its last write to the shared files.

    Keys are (metric, label values); histogram entries are [sum, count per bucket].
    """

    def __init__(self) -> None:
        self.counts: dict[tuple[Any, tuple[str, ...]], float] = {}
        self.observed: dict[tuple[Any, tuple[str, ...]], list[float]] = {}
        self.scheduled = False


_metrics: _Metrics | None = None
_turn = _Turn()
_bounds: dict[int, tuple[float, ...]] = {}  # id(histogram) -> its upper bounds, +Inf last


def enable() -> bool:
    """Build this process's metrics if the multi-process directory is set; True if on."""
    global _metrics
    if _metrics is None and os.environ.get(ENV):
        _metrics = _Metrics()
        for histogram, buckets in (
            (_metrics.request_seconds, REQUEST_BUCKETS),
            (_metrics.hsm_seconds, HSM_BUCKETS),
            (_metrics.commit_size, BATCH_SIZES),
            (_metrics.commit_seconds, COMMIT_BUCKETS),
        ):
            _bounds[id(histogram)] = (*map(float, buckets), float("inf"))
    return _metrics is not None


# --- what the layers call; each returns at once when metrics are off ---


def request(method: str, transport: str, code: str, seconds: float) -> None:
    """One API call finished with ``code`` after ``seconds``."""
    m = _metrics
    if m is not None:
        _count(m.requests, (method, transport or "direct", code))
        _observe(m.request_seconds, (method, transport or "direct"), seconds)


def hsm_call(operation: str, seconds: float) -> None:
    """An HSM call was answered (with a result or the token's error) after ``seconds``."""
    m = _metrics
    if m is not None:
        _observe(m.hsm_seconds, (operation,), seconds)


def hsm_failure(operation: str, reason: str) -> None:
    """An HSM call failed: ``error`` (the token answered with one) or ``unavailable``."""
    m = _metrics
    if m is not None:
        _count(m.hsm_failures, (operation, reason))


def hsm_in_flight(calls: int) -> None:
    """This process has ``calls`` HSM calls waiting for an answer."""
    m = _metrics
    if m is not None:
        m.hsm_in_flight.set(calls)


def agent_started(restart: bool) -> None:
    """An HSM agent opened the token (``restart``: not the first of its client)."""
    m = _metrics
    if m is not None:
        m.agent_starts.labels("restart" if restart else "first").inc()


def agent_start_failed() -> None:
    """An HSM agent could not open the token."""
    m = _metrics
    if m is not None:
        m.agent_start_failures.inc()


def reinitialised(ok: bool) -> None:
    """A PKCS#11 reinitialisation ended (``ok``: the token is open again)."""
    m = _metrics
    if m is not None:
        m.reinitialisations.labels("ok" if ok else "failed").inc()


def audit_commit(events: int, seconds: float) -> None:
    """One audit group commit of ``events`` events took ``seconds``."""
    m = _metrics
    if m is not None:
        _observe(m.commit_size, (), float(events))
        _observe(m.commit_seconds, (), seconds)


def material_cache(hit: bool) -> None:
    """A lookup in the software material cache."""
    m = _metrics
    if m is not None:
        _count(m.material_cache, ("hit" if hit else "miss",))


# --- deferred writes: one loop turn's counts in one go ---


def _count(metric: Any, labels: tuple[str, ...]) -> None:
    turn = _turn
    key = (metric, labels)
    turn.counts[key] = turn.counts.get(key, 0.0) + 1.0
    if not turn.scheduled:
        _schedule(turn)


def _observe(metric: Any, labels: tuple[str, ...], value: float) -> None:
    turn = _turn
    key = (metric, labels)
    bounds = _bounds[id(metric)]
    slot = turn.observed.get(key)
    if slot is None:
        slot = turn.observed[key] = [0.0] * (len(bounds) + 1)
    slot[0] += value
    slot[1 + bisect.bisect_left(bounds, value)] += 1
    if not turn.scheduled:
        _schedule(turn)


def _schedule(turn: _Turn) -> None:
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # no loop in this thread: write now
        _write(turn)
        return
    turn.scheduled = True
    loop.call_later(WRITE_INTERVAL, _write, turn)


def _write(turn: _Turn) -> None:
    turn.scheduled = False
    counts, turn.counts = turn.counts, {}
    observed, turn.observed = turn.observed, {}
    for key, amount in counts.items():
        _child(key).inc(amount)
    for key, slot in observed.items():
        child = _child(key)
        # A histogram keeps its buckets unsummed (``observe`` adds 1 to one of them).
        child._sum.inc(slot[0])
        for index, count in enumerate(slot[1:]):
            if count:
                child._buckets[index].inc(count)


# (metric, label values) -> its child: ``labels()`` takes a lock and builds a key each time.
_children: dict[tuple[Any, tuple[str, ...]], Any] = {}


def _child(key: tuple[Any, tuple[str, ...]]) -> Any:
    child = _children.get(key)
    if child is None:
        metric, labels = key
        child = _children[key] = metric.labels(*labels) if labels else metric
    return child


def flush() -> None:
    """Write what this thread counted so far (at shutdown; tests)."""
    _write(_turn)


# --- the scrape endpoint, in the serve parent ---


class _StateCollector:
    """Keys and versions by state, counted in the database at scrape time."""

    def __init__(self, counts: StateCounts) -> None:
        self._counts = counts

    def collect(self) -> Iterator[Any]:
        """One gauge family: how many keys (by family) and versions are in each state."""
        from prometheus_client.core import GaugeMetricFamily

        family = GaugeMetricFamily(
            "kms_hsm_objects",
            "Keys (by family) and symmetric key versions in each state, deleted keys apart",
            labels=["kind", "state"],
        )
        for kind, state, count in self._counts():
            family.add_metric([kind, state], count)
        yield family


def serve(host: str, port: int, state_counts: StateCounts) -> Callable[[], None]:
    """Answer scrapes on ``host:port`` from a thread; the function that stops it.

    Sums what every process wrote into the directory, and counts keys at scrape time.
    Raises OSError when the port cannot be bound.
    """
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    registry.register(_StateCollector(state_counts))
    server, thread = start_http_server(port, addr=host, registry=registry)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return stop
