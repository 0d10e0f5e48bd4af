"""running_loop(): asyncio's answer, without a system call once known."""

from __future__ import annotations

import asyncio
import threading

import pytest
import uvloop

from kms_hsm.loops import current_loop, running_loop


def test_no_loop_outside_one() -> None:
    assert running_loop() is None
    with pytest.raises(RuntimeError):
        current_loop()


def test_each_new_loop_in_a_thread_is_seen() -> None:
    async def seen() -> bool:
        return running_loop() is asyncio.get_running_loop() is current_loop()

    assert asyncio.run(seen())
    assert uvloop.run(seen())  # a new loop of another kind, same thread
    assert asyncio.run(seen())
    assert running_loop() is None  # the last one has stopped


def test_threads_see_their_own_loops() -> None:
    results: list[bool] = []

    async def seen() -> None:
        await asyncio.sleep(0.05)  # both loops run at once
        results.append(running_loop() is asyncio.get_running_loop())

    threads = [threading.Thread(target=asyncio.run, args=(seen(),)) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [True, True]
