"""A cache that is emptied whenever the state version moves (see store.state)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar, cast

from kms_hsm.store.state import StateWatch

V = TypeVar("V")

_MISSING = object()


class StateCache(Generic[V]):
    """Values loaded from the database, valid until the next authoritative change.

    Each ``get`` first reads the state version; a value is stored under the version read
    *before* it was loaded, so a change committed during the load still empties it.
    """

    def __init__(self, watch: StateWatch | None, max_entries: int = 100_000) -> None:
        self._watch = watch
        self._max = max_entries
        # (state version, the values loaded under it): replaced as one object, never
        # emptied in place, so a lookup without the lock sees one version's values only.
        self._current: tuple[int, dict[Hashable, V]] = (-1, {})
        self._lock = threading.Lock()

    def get(self, key: Hashable, load: Callable[[], V]) -> V:
        """The value for ``key``, loading it when absent or stale."""
        if self._watch is None:
            return load()
        version = self._watch.current()
        current_version, values = self._current
        if current_version == version:
            # A hit takes no lock: ``values`` belongs to exactly this version.
            found = values.get(key, _MISSING)
            if found is not _MISSING:
                return cast(V, found)
        value = load()
        with self._lock:
            current_version, values = self._current
            if current_version != version or len(values) >= self._max:
                values = {}
                self._current = (version, values)
            values[key] = value
        return value


class MissCache:
    """Keys known to be absent, valid until the next state change: a bounded LRU.

    Kept apart from the ``StateCache`` of hits so that a flood of random ids evicts only
    other misses (the least recently used), never flushes the values everyone uses.
    """

    def __init__(self, watch: StateWatch | None, max_entries: int = 10_000) -> None:
        self._watch = watch
        self._max = max_entries
        self._version = -1
        self._keys: OrderedDict[Hashable, None] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable, load: Callable[[], V | None]) -> V | None:
        """``load()``'s value, or None without loading when ``key`` is a known miss."""
        if self._watch is None:
            return load()
        version = self._watch.current()
        with self._lock:
            if self._version == version and key in self._keys:
                self._keys.move_to_end(key)
                return None
        value = load()
        if value is None:
            with self._lock:
                if self._version != version:
                    self._keys.clear()
                    self._version = version
                self._keys[key] = None
                if len(self._keys) > self._max:
                    self._keys.popitem(last=False)
        return value
