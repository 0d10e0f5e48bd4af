"""Unknown key ids are cached apart from known keys, in a bounded LRU (issue 15, L2).

Before: a miss (None) went into the same 100k-entry cache as known keys, which is emptied
when full, so a client sending random ids flushed the cache for everyone.
"""

from __future__ import annotations

import pytest

from kms_hsm.errors import NotFound
from kms_hsm.service.access import Permission
from kms_hsm.service.runtime import Runtime


def test_unknown_key_ids_never_enter_the_cache_of_known_keys(runtime: Runtime) -> None:
    admin = runtime.auth.list_principals()[0].id
    before = len(runtime.access._folders._current[1])
    for i in range(50):
        with pytest.raises(NotFound):
            runtime.access.authorize_key(admin, Permission.GET, f"abjnokey{i:012d}")
    assert len(runtime.access._folders._current[1]) == before  # was: before + 50


def test_the_miss_cache_evicts_its_oldest_miss() -> None:
    from kms_hsm.service.cache import MissCache

    class Watch:
        def current(self) -> int:
            return 1

    loads: list[str] = []
    misses = MissCache(Watch(), max_entries=3)  # type: ignore[arg-type]

    def get(key: str) -> None:
        misses.get(key, lambda: loads.append(key))

    for key in "abcd":
        get(key)
    get("d")  # cached
    get("a")  # evicted by "d": loaded again
    assert loads == ["a", "b", "c", "d", "a"]
