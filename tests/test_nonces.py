"""Buffered nonces: never the same bytes twice, across threads and across fork."""

from __future__ import annotations

import os
import threading

import pytest

from kms_hsm.crypto.nonces import NonceSource


def test_nonces_do_not_repeat_across_refills() -> None:
    source = NonceSource()
    nonces = [source(12) for _ in range(5000)]  # ~15 buffers
    assert all(len(n) == 12 for n in nonces)
    assert len(set(nonces)) == len(nonces)


def test_threads_draw_from_buffers_of_their_own() -> None:
    source = NonceSource()
    drawn: dict[int, list[bytes]] = {}

    def draw(worker: int) -> None:
        drawn[worker] = [source(12) for _ in range(1000)]

    threads = [threading.Thread(target=draw, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    everything = [n for nonces in drawn.values() for n in nonces]
    assert len(set(everything)) == 4000


def test_a_forked_child_does_not_reuse_the_parents_buffer() -> None:
    source = NonceSource()
    source(12)  # the buffer is filled before the fork
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next nonces, then leave at once
        os.close(read_end)
        os.write(write_end, b"".join(source(12) for _ in range(10)))
        os._exit(0)
    os.close(write_end)
    child = b""
    while chunk := os.read(read_end, 4096):
        child += chunk
    os.close(read_end)
    os.waitpid(pid, 0)
    parent = b"".join(source(12) for _ in range(10))
    child_nonces = {child[i : i + 12] for i in range(0, len(child), 12)}
    parent_nonces = {parent[i : i + 12] for i in range(0, len(parent), 12)}
    assert len(child_nonces) == 10 and not child_nonces & parent_nonces


def test_more_than_a_buffer_is_refused() -> None:
    with pytest.raises(ValueError):
        NonceSource()(4097)
