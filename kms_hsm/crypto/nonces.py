"""Random AES-GCM nonces from the OS CSPRNG, a few hundred per system call.

A nonce needs to be unique under its key, not secret; 96 random bits from ``os.urandom``
make a repeat negligible within the ~2^32 messages per key that NIST SP 800-38D allows
for random nonces. Fetching them 4 KiB at a time instead of one ``getrandom`` call per
request saves a system call on every encrypt. The bytes are the same CSPRNG's; what
must never happen is two users of one buffer, so each thread has its own, and a forked
child drops what it inherited from its parent (else both would hand out the same
nonces). Key material does not come from here: it is read from the OS when needed, so
no future key sits in a buffer.
"""

from __future__ import annotations

import os
import threading

_CHUNK = 4096

# Bumped in a forked child: buffers filled before the fork are never used after it.
_fork_generation = 0


def _after_fork_in_child() -> None:
    global _fork_generation
    _fork_generation += 1


os.register_at_fork(after_in_child=_after_fork_in_child)


class NonceSource:
    """``source(n)``: ``n`` fresh random bytes for a nonce (``n`` at most 4 KiB)."""

    def __init__(self) -> None:
        self._local = threading.local()

    def __call__(self, n: int) -> bytes:
        """The next ``n`` bytes of this thread's buffer, refilled from the OS as needed."""
        local = self._local
        buffer: bytes = getattr(local, "buffer", b"")
        position: int = getattr(local, "position", 0)
        if position + n > len(buffer) or getattr(local, "generation", -1) != _fork_generation:
            if n > _CHUNK:
                raise ValueError(f"a nonce of at most {_CHUNK} bytes")
            buffer = local.buffer = os.urandom(_CHUNK)
            local.generation = _fork_generation
            position = 0
        local.position = position + n
        return buffer[position : position + n]
