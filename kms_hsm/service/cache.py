"""A cache that is emptied whenever the state version moves (see store.state)."""

from __future__ import annotations

import threading
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
        self._version = -1
        self._values: dict[Hashable, V] = {}
        self._lock = threading.Lock()

    def get(self, key: Hashable, load: Callable[[], V]) -> V:
        """The value for ``key``, loading it when absent or stale."""
        if self._watch is None:
            return load()
        version = self._watch.current()
        if version == self._version:
            # The hit path takes no lock: under the GIL the lookup is atomic, and a value
            # stored meanwhile by another thread belongs to this version or a newer one.
            found = self._values.get(key, _MISSING)
            if found is not _MISSING:
                return cast(V, found)
        with self._lock:
            if version != self._version:
                self._values.clear()
                self._version = version
            if key in self._values:
                return self._values[key]
        value = load()
        with self._lock:
            if version == self._version:
                if len(self._values) >= self._max:
                    self._values.clear()
                self._values[key] = value
        return value
