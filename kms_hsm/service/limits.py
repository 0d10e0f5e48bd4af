"""Failure budgets: at most ``limit`` failures per key in any ``window`` seconds.

Used for failed authentication (per source address and per principal). Only failures are
recorded, so the callers' success path never touches this. Memory is bounded: a table
keeps at most ``max_keys`` keys, and a flood of new keys evicts the key whose last failure
is the oldest. An evicted key starts again with a clean budget; that is the price of a
bound, and a flood large enough to evict a key still pays ``limit`` failures per key.
"""

from __future__ import annotations

import ipaddress
import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable

# Keys each table keeps: every key holds up to ``limit`` timestamps.
DEFAULT_MAX_KEYS = 10_000


class FailureWindow:
    """A sliding window of failure times per key (exact: the last ``limit`` times are kept)."""

    def __init__(
        self,
        limit: int,
        window: float,
        *,
        max_keys: int = DEFAULT_MAX_KEYS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if limit < 1 or window <= 0 or max_keys < 1:
            raise ValueError("limit and max_keys must be at least 1, window positive")
        self._limit = limit
        self._window = window
        self._max_keys = max_keys
        self._clock = clock
        # Least recently failed first.
        self._failures: OrderedDict[Hashable, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._failures)

    def retry_after(self, key: Hashable) -> int | None:
        """Whole seconds (at least 1) until ``key`` may fail again; None if it may now."""
        with self._lock:
            return self._retry_after(key, self._clock())

    def record(self, key: Hashable) -> None:
        """Count one failure of ``key`` now."""
        with self._lock:
            self._record(key, self._clock())

    def _retry_after(self, key: Hashable, now: float) -> int | None:
        times = self._failures.get(key)
        if times is None or len(times) < self._limit:
            return None
        wait = times[0] + self._window - now
        if wait <= 0:
            return None
        return max(1, math.ceil(wait))

    def _record(self, key: Hashable, now: float) -> None:
        times = self._failures.get(key)
        if times is None:
            times = self._failures[key] = deque(maxlen=self._limit)
            if len(self._failures) > self._max_keys:
                self._failures.popitem(last=False)
        else:
            self._failures.move_to_end(key)
        times.append(now)


def source_key(source: str) -> str:
    """What one client's failures count against: its IPv4 address, or its IPv6 /64.

    One IPv6 host usually holds a whole /64, so counting single IPv6 addresses would give it
    2**64 budgets. Anything that is not an IP address (a Unix socket peer, "") is its own key.
    """
    if ":" not in source:
        return source
    try:
        address = ipaddress.IPv6Address(source.partition("%")[0])
    except ValueError:
        return source
    if address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(ipaddress.IPv6Network((address, 64), strict=False))
