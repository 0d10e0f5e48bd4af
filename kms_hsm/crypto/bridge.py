"""Synchronous code that awaits on the event loop, without a thread: a greenlet bridge.

The crypto core is plain synchronous code. ``run_bridged(fn)`` runs ``fn`` on the event
loop's own thread, in a greenlet; when ``fn`` (however deep) calls ``await_in_bridge(x)``,
the greenlet hands ``x`` to ``run_bridged``, which awaits it like any coroutine and then
resumes ``fn`` with the result (or the exception). So an HSM call inside the core becomes a
message to the HSM agent process, and the loop serves other requests until its answer
comes, with no thread hop and no GIL hand-over.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

import greenlet  # type: ignore[import-untyped]

T = TypeVar("T")


class _Bridged(greenlet.greenlet):  # type: ignore[misc]
    """A greenlet started by ``run_bridged``; its parent is the awaiting coroutine's."""

    def __init__(self, fn: Callable[[], Any], driver: greenlet.greenlet) -> None:
        super().__init__(fn, driver)
        self.driver = driver
        # Context variables (the request's pinned state version) follow the work.
        self.gr_context = driver.gr_context


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
    bridged = _Bridged(fn, greenlet.getcurrent())
    request = bridged.switch()
    while not bridged.dead:
        try:
            value = await request
        except BaseException as exc:  # handed into fn, where it is raised
            request = bridged.throw(exc)
        else:
            request = bridged.switch(value)
    return cast(T, request)
