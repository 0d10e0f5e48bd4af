"""StateCache: a value is only ever served under the state version it was loaded at."""

from __future__ import annotations

import threading
from typing import Any

from kms_hsm.service.cache import StateCache


class _PinnedVersions:
    """What StateWatch.current() answers: the version pinned for this thread's request."""

    def __init__(self) -> None:
        self._local = threading.local()

    def pin(self, version: int) -> None:
        self._local.version = version

    def current(self) -> int:
        return int(self._local.version)


def test_hits_until_the_version_moves() -> None:
    watch = _PinnedVersions()
    cache: StateCache[str] = StateCache(watch)  # type: ignore[arg-type]
    loads: list[int] = []

    def load(tag: int) -> str:
        loads.append(tag)
        return f"v{tag}"

    watch.pin(1)
    assert cache.get("k", lambda: load(1)) == "v1"
    assert cache.get("k", lambda: load(99)) == "v1"
    watch.pin(2)
    assert cache.get("k", lambda: load(2)) == "v2"
    assert loads == [1, 2]


def test_threads_on_different_versions_never_see_each_others_values() -> None:
    watch = _PinnedVersions()
    cache: StateCache[int] = StateCache(watch, max_entries=8)  # type: ignore[arg-type]
    wrong: list[Any] = []

    def reader(version: int) -> None:
        watch.pin(version)
        for n in range(20_000):
            got = cache.get(n % 16, lambda: version)
            if got != version:
                wrong.append((version, got))

    threads = [threading.Thread(target=reader, args=(v,)) for v in (1, 2, 3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert wrong == []


def test_without_a_watch_every_get_loads() -> None:
    cache: StateCache[int] = StateCache(None)
    calls = iter(range(10))
    assert [cache.get("k", lambda: next(calls)) for _ in range(3)] == [0, 1, 2]
