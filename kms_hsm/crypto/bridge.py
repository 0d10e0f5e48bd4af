"""Synchronous code that awaits on the event loop, without a thread: a greenlet bridge.

The crypto core is plain synchronous code. ``run_bridged(fn)`` runs ``fn`` on the event
loop's own thread, in a greenlet; when ``fn`` (however deep) calls ``await_in_bridge(x)``,
the greenlet hands ``x`` to ``run_bridged``, which awaits it like any coroutine and then
resumes ``fn`` with the result (or the exception). So an HSM call inside the core becomes a
message to the HSM agent process, and the loop serves other requests until its answer
comes, with no thread hop and no GIL hand-over.

The greenlets are reused: starting a new one costs ~8 us (CPython 3.11 gives each new
greenlet its own frame stack, allocated on first switch), switching into one that already
runs costs ~0.3 us. Idle ones wait in a per-thread pool (a greenlet belongs to the thread
that made it).
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

import greenlet  # type: ignore[import-untyped]

T = TypeVar("T")

# Idle greenlets kept per thread; more than this many at once are let go when done.
_POOL_LIMIT = 256


class _Finished:
    """What a bridged greenlet hands back when ``fn`` has returned or raised."""

    __slots__ = ("ok", "value")

    def __init__(self, ok: bool, value: Any) -> None:
        self.ok = ok
        self.value = value


class _Bridged(greenlet.greenlet):  # type: ignore[misc]
    """A reusable greenlet that runs one ``fn`` after another for ``run_bridged``."""

    def __init__(self, pool: list[_Bridged]) -> None:
        super().__init__(self._serve)
        self.pool = pool
        self.driver: Any = None

    def _serve(self, fn: Callable[[], Any]) -> None:
        while True:
            try:
                finished = _Finished(True, fn())
            except greenlet.GreenletExit:
                raise
            except BaseException as exc:  # handed to the driver, which raises it
                finished = _Finished(False, exc)
            fn = _nothing  # drop references to the finished work before idling
            driver, self.driver = self.driver, None
            if len(self.pool) < _POOL_LIMIT:
                self.pool.append(self)
                fn = driver.switch(finished)
            else:
                # Not pooled: ending returns ``finished`` to the parent, so make it the driver.
                self.parent = driver
                return finished  # type: ignore[return-value]


def _nothing() -> None:
    return None


_local = threading.local()


def _pool() -> list[_Bridged]:
    pool: list[_Bridged] | None = getattr(_local, "pool", None)
    if pool is None:
        pool = _local.pool = []
    return pool


def in_bridge() -> bool:
    """True inside ``run_bridged``: the caller may use ``await_in_bridge``."""
    return isinstance(greenlet.getcurrent(), _Bridged)


def await_in_bridge(awaitable: Awaitable[T]) -> T:
    """From synchronous code inside ``run_bridged``: the result of awaiting ``awaitable``."""
    current = greenlet.getcurrent()
    if not isinstance(current, _Bridged):
        raise RuntimeError("await_in_bridge outside run_bridged")
    return cast(T, current.driver.switch(awaitable))


async def run_bridged(fn: Callable[[], T]) -> T:
    """Run ``fn`` on this thread; every ``await_in_bridge`` inside it is awaited here."""
    pool = _pool()
    bridged = pool.pop() if pool else _Bridged(pool)
    driver = greenlet.getcurrent()
    bridged.driver = driver
    # Context variables (the request's pinned state version) follow the work.
    bridged.gr_context = driver.gr_context
    request = bridged.switch(fn)
    while type(request) is not _Finished:
        try:
            value = await request
        except BaseException as exc:  # handed into fn, where it is raised
            request = bridged.throw(exc)
        else:
            request = bridged.switch(value)
    if request.ok:
        return cast(T, request.value)
    raise request.value
