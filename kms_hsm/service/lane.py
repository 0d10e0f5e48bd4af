"""One thread that runs the event loop's blocking HSM work, in batches.

Why not ``loop.run_in_executor``: a thread pool wakes a thread and posts one result back
per call (two context switches and an eventfd write each), and several threads contend
for the one token lock and for the GIL. Measured on SoftHSM2, that cost ~550 us of CPU per
HSM request, against 20 us for the token's own AES-GCM call. The lane wakes its thread
once per batch (every call queued while it was busy joins the next batch) and hands the
results back in one loop callback per batch.

Deadlines (issue 5): a call that has not finished ``timeout`` seconds after it was queued
fails with ``BackendUnavailable`` (503) while the thread may still be stuck in the token;
while the call in progress has run longer than the timeout, new calls fail at once; calls
whose caller has already given up are skipped, never run late.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from kms_hsm.errors import BackendUnavailable

T = TypeVar("T")

# A batch's results go back to the loop at least this often, so that the first calls of
# a long batch do not wait for its last.
_POST_INTERVAL = 0.0005


@dataclass(slots=True)
class _Call(Generic[T]):
    work: Callable[[], T]
    context: contextvars.Context
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[T]


class WorkLane:
    """Runs blocking callables on one thread, in order, for any number of event loops."""

    def __init__(self, name: str, timeout: float) -> None:
        self._timeout = timeout
        self._queue: deque[_Call[Any]] = deque()
        self._signal = threading.Semaphore(0)
        self._sleeping = False
        self._closed = False
        # monotonic() when the call in progress started; None between calls.
        self._busy_since: float | None = None
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    async def run(self, work: Callable[[], T]) -> T:
        """Run ``work`` on the lane's thread (with the caller's context variables).

        Raises:
            BackendUnavailable: the lane is stuck in a call, or ``work`` did not finish
                within the timeout.
            Whatever ``work`` raises.
        """
        if self._closed:
            raise BackendUnavailable(log_detail="the HSM lane is closed")
        busy_since = self._busy_since
        if busy_since is not None and time.monotonic() - busy_since > self._timeout:
            raise BackendUnavailable(
                log_detail="an HSM call has been running longer than the timeout"
            )
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.append(_Call(work, contextvars.copy_context(), loop, future))
        # The lane sets _sleeping before it looks at the queue for the last time, so a
        # call appended here is either seen by that look or wakes the lane (a spare
        # release only costs one empty turn).
        if self._sleeping:
            self._sleeping = False
            self._signal.release()
        timer = loop.call_later(self._timeout, _expire, future, self._timeout)
        try:
            return await future
        finally:
            timer.cancel()

    def close(self) -> None:
        """Stop taking calls; the thread ends once the queue is empty."""
        self._closed = True
        self._signal.release()

    def _main(self) -> None:
        while True:
            self._sleeping = True
            if not self._queue:
                if self._closed:
                    return
                self._signal.acquire()
            self._sleeping = False
            self._drain()

    def _drain(self) -> None:
        done: list[tuple[_Call[Any], bool, Any]] = []
        posted_at = time.monotonic()
        while self._queue:
            call = self._queue.popleft()
            if call.future.done():  # expired or cancelled: its caller has moved on
                continue
            self._busy_since = time.monotonic()
            try:
                done.append((call, True, call.context.run(call.work)))
            except BaseException as exc:  # handed to the caller, who re-raises it
                done.append((call, False, exc))
            finally:
                self._busy_since = None
            if time.monotonic() - posted_at > _POST_INTERVAL:
                _post(done)
                done = []
                posted_at = time.monotonic()
        _post(done)


def _post(done: list[tuple[_Call[Any], bool, Any]]) -> None:
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Call[Any], bool, Any]]] = {}
    for item in done:
        by_loop.setdefault(item[0].loop, []).append(item)
    for loop, items in by_loop.items():
        # A closed loop raises RuntimeError: nobody waits for these any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_settle, items)


def _settle(items: list[tuple[_Call[Any], bool, Any]]) -> None:
    for call, ok, value in items:
        if call.future.done():
            continue
        if ok:
            call.future.set_result(value)
        else:
            call.future.set_exception(value)


def _expire(future: asyncio.Future[Any], timeout: float) -> None:
    if not future.done():
        future.set_exception(
            BackendUnavailable(log_detail=f"HSM call took longer than {timeout:g}s")
        )
