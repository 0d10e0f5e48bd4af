"""The HTTP protocol's coalescing transport, on a real socket pair and a real event loop."""

from __future__ import annotations

import asyncio
import socket

import pytest

from kms_hsm.api.protocol import CoalescingTransport


async def _connected() -> tuple[CoalescingTransport, asyncio.Transport, socket.socket]:
    ours, peer = socket.socketpair()
    peer.setblocking(False)
    loop = asyncio.get_running_loop()
    transport, _protocol = await loop.connect_accepted_socket(asyncio.Protocol, ours)
    return CoalescingTransport(transport, loop), transport, peer  # type: ignore[arg-type]


def _received(peer: socket.socket) -> bytes:
    try:
        return peer.recv(65536)
    except BlockingIOError:
        return b""


def test_writes_of_one_turn_leave_together_at_its_end() -> None:
    async def main() -> tuple[bytes, bytes, bytes]:
        coalescing, _transport, peer = await _connected()
        coalescing.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
        coalescing.write(b"{}")
        before = _received(peer)  # nothing has left yet: the turn is not over
        await asyncio.sleep(0)
        await asyncio.sleep(0.01)
        first = _received(peer)
        coalescing.write(b"next")
        await asyncio.sleep(0.01)
        coalescing.close()
        return before, first, _received(peer)

    before, first, second = asyncio.run(main())
    assert before == b""
    assert first == b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"
    assert second == b"next"


def test_close_sends_what_is_pending_first() -> None:
    async def main() -> bytes:
        coalescing, transport, peer = await _connected()
        coalescing.write(b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\n\r\n")
        coalescing.close()
        assert transport.is_closing()
        await asyncio.sleep(0.01)
        peer.setblocking(True)
        peer.settimeout(2)
        chunks = []
        while chunk := peer.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)

    assert asyncio.run(main()) == b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\n\r\n"


def test_other_transport_calls_reach_the_real_transport() -> None:
    async def main() -> None:
        coalescing, transport, _peer = await _connected()
        assert coalescing.get_extra_info("socket") is transport.get_extra_info("socket")
        assert coalescing.is_closing() is False
        coalescing.close()
        assert coalescing.is_closing() is True
        coalescing.write(b"late")  # after close: dropped at the flush, as asyncio would
        await asyncio.sleep(0.01)

    asyncio.run(main())


@pytest.mark.parametrize("parts", [1, 3])
def test_one_write_per_turn_reaches_the_socket(parts: int) -> None:
    async def main() -> list[bytes]:
        coalescing, transport, _peer = await _connected()
        sent: list[bytes] = []
        real_write = transport.write

        def counting_write(data: bytes) -> None:
            sent.append(bytes(data))
            real_write(data)

        transport.write = counting_write  # type: ignore[method-assign]
        for n in range(parts):
            coalescing.write(b"part%d;" % n)
        await asyncio.sleep(0.01)
        coalescing.close()
        return sent

    assert asyncio.run(main()) == [b"".join(b"part%d;" % n for n in range(parts))]
