"""uvicorn's HTTP protocol with TCP_NODELAY on every connection and one write per response.

With ``--workers`` uvicorn binds the listening socket itself with protocol number 0, and
asyncio sets TCP_NODELAY only on sockets whose protocol is IPPROTO_TCP. Responses go out
as two writes (headers, body), so Nagle's algorithm then holds the body until the client's
delayed ACK: ~40 ms on every request (measured: 50 ms p50 with two workers against 4 ms
with one). Setting the option per connection fixes both modes.

With Nagle off, those two writes are two ``send`` syscalls and two TCP segments, and the
client reads twice. ``CoalescingTransport`` holds what a connection writes during one turn
of the event loop and sends it as one write at the end of that turn.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any, cast

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _Base
except ImportError:  # httptools is optional; h11 always ships with uvicorn
    from uvicorn.protocols.http.h11_impl import (  # type: ignore[assignment,unused-ignore]
        H11Protocol as _Base,
    )


class CoalescingTransport:
    """A transport whose writes within one loop turn leave as a single write."""

    __slots__ = ("_loop", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] | None = None

    def write(self, data: bytes) -> None:
        """Queue ``data``; the first write of a turn schedules the flush."""
        if self._pending is None:
            self._pending = [data]
            self._loop.call_soon(self.flush)
        else:
            self._pending.append(data)

    def flush(self) -> None:
        """Hand everything queued to the real transport now."""
        pending, self._pending = self._pending, None
        if pending and not self._transport.is_closing():
            self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def close(self) -> None:
        """Flush, then close (uvicorn closes right after a ``Connection: close`` answer)."""
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class NoDelayHttpProtocol(_Base):  # type: ignore[misc,unused-ignore]
    """The fastest available uvicorn HTTP protocol, Nagle off, one write per response."""

    def connection_made(self, transport: Any) -> None:
        """Turn TCP_NODELAY on, then let uvicorn take the (coalescing) connection."""
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # Duck-typed: everything but write/close passes through to the real transport.
        super().connection_made(cast(asyncio.Transport, CoalescingTransport(transport, self.loop)))


HTTP_PROTOCOL = "kms_hsm.api.protocol:NoDelayHttpProtocol"
