"""uvicorn's HTTP protocol, hardened against hostile connections and tuned for latency.

Limits (issue 15; README "Security"), per worker process:

- A request head (request line and headers) larger than ``max_header_bytes`` is answered
  ``431`` and the connection closed; the parser is never fed more than that many bytes of
  one head, so a flood costs neither memory nor parsing time. (A pipelined head that starts
  in the same read as the previous body is counted from the next read: one read, at most
  256 KiB, more.)
- A connection must send a complete head within ``header_timeout`` seconds of opening, or
  of the first byte of a following request (closed between 1 and 1.25 times that).
  Nothing received: closed quietly (like an idle keep-alive connection, so a client cannot
  read it as an answer); part of a head received: ``408``, then closed. Idle time between
  requests stays uvicorn's ``timeout_keep_alive``.
- A request's whole body must arrive within ``header_timeout`` seconds of its head (same
  spread), or ``408`` and closed. A total, not a minimum rate: bodies are at most 256 KiB
  (``api.deps.MAX_BODY_BYTES``), so a rate would still let one connection hold its place
  for as long as its body size over that rate, and the data plane reads the body before it
  authenticates, so any client could.
- At most ``connection_cap()`` open client connections. A new connection beyond the cap
  closes the connection whose body is most overdue, else the oldest one that has not sent
  a complete request head (half-open or idle between requests), or is itself closed when
  every connection is busy with a request.

What uvicorn offers does not cover this: ``h11_max_incomplete_event_size`` applies to h11
only (we run httptools, whose parser has no limit) and answers 400; ``timeout_keep_alive``
is armed only after a response, and any byte cancels it, so a connection that never
completes a head is never timed out; ``limit_concurrency`` answers 503 to complete requests
only, never closes a half-open connection, and would refuse legitimate clients first.

Latency: with ``--workers`` uvicorn binds the listening socket itself with protocol number
0, and asyncio sets TCP_NODELAY only on sockets whose protocol is IPPROTO_TCP. Responses go
out as two writes (headers, body), so Nagle's algorithm then holds the body until the
client's delayed ACK: ~40 ms on every request (measured: 50 ms p50 with two workers against
4 ms with one). Setting the option per connection fixes both modes. With Nagle off, those
two writes are two ``send`` syscalls and two TCP segments, and the client reads twice.
``CoalescingTransport`` holds what a connection writes during one turn of the event loop
and sends it as one write at the end of that turn.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import random
import resource
import socket
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, cast

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

from kms_hsm.config import Settings

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # httptools is optional for uvicorn; h11 always ships with it
    HttpToolsProtocol = None  # type: ignore[assignment,misc,unused-ignore]

log = logging.getLogger(__name__)

FD_RESERVE = 256
"""File descriptors kept out of the connection cap: the database pool (up to 30 PostgreSQL
sockets, or 15 SQLite connections with their database, WAL and shared-memory files), the
HSM agent's pipes, standard streams and the audit log file, the listening sockets, the event
loop's own descriptors, TLS files read at start, and leeway for the libraries."""

HEADER_TIMEOUT_SPREAD = 0.25
"""A head's deadline falls at random between 1 and 1.25 times header_timeout."""

LINGER_SECONDS = 2.0
LINGER_BYTES = 64 << 10
"""How long, and how much, a refused connection is still read (and discarded) after its
answer, so that the client sees the answer rather than a reset; then it is closed."""


@dataclass(frozen=True)
class ConnectionLimits:
    """The limits one worker enforces on its client connections."""

    max_header_bytes: int = 16 * 1024
    header_timeout: float = 10.0
    max_connections: int = 4096

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectionLimits:
        """The limits of ``settings``, the connection cap bounded by this process's fds."""
        return cls(
            max_header_bytes=settings.max_header_bytes,
            header_timeout=settings.header_timeout,
            max_connections=connection_cap(settings.max_connections),
        )


def raise_fd_limit() -> int:
    """Raise RLIMIT_NOFILE's soft limit to the hard limit; the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:  # e.g. above fs.nr_open
        log.warning("could not raise the open-file limit from %d to %d: %s", soft, target, exc)
        return soft
    return target


def connection_cap(max_connections: int) -> int:
    """``max_connections``, lowered so that FD_RESERVE descriptors stay for everything else."""
    soft = raise_fd_limit()
    if soft == resource.RLIM_INFINITY:
        return max_connections
    budget = soft - FD_RESERVE
    if budget < max_connections:
        log.warning(
            "open-file limit %d allows %d client connections per worker, not %d "
            "(%d kept for the token, database and logs); raise `ulimit -n` for more",
            soft,
            max(budget, 1),
            max_connections,
            FD_RESERVE,
        )
    return max(1, min(max_connections, budget))


_limits = ConnectionLimits()


def apply_limits(settings: Settings) -> ConnectionLimits:
    """Set this process's connection limits from ``settings`` (each worker at start-up)."""
    global _limits
    _limits = ConnectionLimits.from_settings(settings)
    log.info(
        "at most %d client connections; request heads of up to %d bytes within %g s",
        _limits.max_connections,
        _limits.max_header_bytes,
        _limits.header_timeout,
    )
    return _limits


def freeze_heap() -> None:
    """Exempt everything alive now (modules, the app) from the garbage collector's scans.

    Every connection leaves a little cyclic garbage, and connections that live for seconds
    (half-open ones, lingering closes) reach the oldest generation; under a flood of them
    full collections came often and walked the whole heap: 20-80 ms pauses of the event
    loop, every client waiting (measured in tests/test_soak.py). Frozen objects are never
    scanned, so a full collection walks only what was made while serving.
    """
    gc.collect()
    gc.freeze()


def _bound_handshakes(base: type[asyncio.AbstractEventLoop]) -> type[asyncio.AbstractEventLoop]:
    class Loop(base):  # type: ignore[valid-type,misc]
        async def create_server(self, *args: Any, **kwargs: Any) -> asyncio.Server:
            if kwargs.get("ssl") is not None:
                kwargs.setdefault("ssl_handshake_timeout", _limits.header_timeout)
            return cast(asyncio.Server, await super().create_server(*args, **kwargs))

    return Loop


def loop_factory() -> asyncio.AbstractEventLoop:
    """uvloop (else asyncio's loop) whose TLS handshakes must end within header_timeout.

    A TLS connection reaches the HTTP protocol, and so its deadline and the connection
    cap, only once its handshake is done; until then it holds a file descriptor for
    asyncio's default 60 s. uvicorn has no option for it, but takes a loop factory.
    """
    try:
        import uvloop
    except ImportError:  # uvloop is optional for uvicorn
        return _bound_handshakes(asyncio.SelectorEventLoop)()
    return _bound_handshakes(uvloop.Loop)()


LOOP = "kms_hsm.api.protocol:loop_factory"


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


class _Front:
    """One server's connections, and those not owing a response, oldest waiting first."""

    def __init__(self) -> None:
        self.open: set[_GuardedProtocol] = set()
        self.waiting: OrderedDict[_GuardedProtocol, None] = OrderedDict()
        # Connections reading a request body, in the order their bodies fall due (one
        # timeout after their head): the first is the first to become evictable.
        self.bodies: OrderedDict[_GuardedProtocol, None] = OrderedDict()
        self.shedding = False
        self.closed = 0
        self.refused = 0

    def admit(self, conn: _GuardedProtocol, cap: int) -> bool:
        """Count ``conn`` in, closing the oldest waiting connection if the cap is reached;
        False when every connection is busy with a request and ``conn`` must go."""
        if len(self.open) >= cap:
            self._shed(cap)
            victim = self._victim()
            if victim is None:
                self.refused += 1
                return False
            self.forget(victim)
            victim.evict()
            self.closed += 1
        elif self.shedding and len(self.open) < cap * 3 // 4:
            log.warning(
                "client connections back under the cap: %d closed and %d refused meanwhile",
                self.closed,
                self.refused,
            )
            self.shedding = False
        self.open.add(conn)
        self.waiting[conn] = None
        return True

    def _victim(self) -> _GuardedProtocol | None:
        """The connection to close for a new one: an overdue body, else the oldest waiting."""
        if self.bodies:
            first = next(iter(self.bodies))
            if first.evictable():
                return first
        skipped = []
        victim = None
        while self.waiting:
            conn, _ = self.waiting.popitem(last=False)
            if conn.evictable():
                victim = conn
                break
            skipped.append(conn)
        # Put back, in their places, those that cannot go now: dropped from the queue they
        # would stay unevictable until their next response.
        for conn in reversed(skipped):
            self.waiting[conn] = None
            self.waiting.move_to_end(conn, last=False)
        return victim

    def _shed(self, cap: int) -> None:
        if not self.shedding:
            # Once per episode: an attack must not turn into a log flood.
            log.warning(
                "%d client connections (the cap): closing the oldest ones that have not sent "
                "a complete request head to admit new ones, refusing new ones when none is left",
                cap,
            )
            self.shedding = True
            self.closed = self.refused = 0

    def waits(self, conn: _GuardedProtocol) -> None:
        """``conn`` owes no response now: the newest to be closed to make room."""
        if conn in self.open:
            self.waiting[conn] = None
            self.waiting.move_to_end(conn)

    def busy(self, conn: _GuardedProtocol) -> None:
        """``conn`` has sent a complete head: it is not closed to make room until its body
        is overdue."""
        self.waiting.pop(conn, None)
        if conn in self.open:
            self.bodies[conn] = None

    def body_done(self, conn: _GuardedProtocol) -> None:
        """``conn`` has sent its whole body (or been refused)."""
        self.bodies.pop(conn, None)

    def forget(self, conn: _GuardedProtocol) -> None:
        """``conn`` is closed."""
        self.open.discard(conn)
        self.waiting.pop(conn, None)
        self.bodies.pop(conn, None)


_fronts: weakref.WeakKeyDictionary[ServerState, _Front] = weakref.WeakKeyDictionary()


def _front_of(state: ServerState) -> _Front:
    front = _fronts.get(state)
    if front is None:
        front = _fronts[state] = _Front()
    return front


class _GuardedProtocol(asyncio.Protocol):
    """What both parsers share: the head's byte budget and deadline, the connection cap,
    Nagle off and one write per response.

    The subclasses call ``_head_complete`` when the parser has a whole request head and
    ``_head_expected`` when a following one may start.
    """

    limits: ClassVar[ConnectionLimits | None] = None
    """Set by tests; otherwise the process's limits from ``apply_limits``."""

    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop
    server_state: ServerState
    cycle: Any

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Turn TCP_NODELAY on, let uvicorn take the (coalescing) connection, admit it."""
        raw = cast(asyncio.Transport, transport)
        sock = raw.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._raw = raw
        self._coalescing = CoalescingTransport(raw, self.loop)
        self._limits = self.limits or _limits
        self._reading_head = True
        self._head_bytes = 0
        self._lingering = False
        # When the body being read is overdue (loop time); None when no body is read.
        self._body_due: float | None = None
        # The deadline of the head or body being read, or the end of a lingering close; cancelled
        # when the connection goes, so that it does not keep the connection alive.
        self._timer: asyncio.TimerHandle | None = None
        self._front = _front_of(self.server_state)
        # Duck-typed: everything but write/close passes through to the real transport.
        super().connection_made(cast(asyncio.Transport, self._coalescing))
        if not self._front.admit(self, self._limits.max_connections):
            raw.abort()
            return
        self._arm_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        """Forget the connection, then let uvicorn clean up."""
        self._cancel_timer()
        self._front.forget(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """Feed the parser, but never more than ``max_header_bytes`` of one request head."""
        if self._lingering:
            self._linger_bytes -= len(data)
            if self._linger_bytes < 0:
                self._raw.abort()
            return
        while data:
            if not self._reading_head:
                super().data_received(data)
                return
            if self._timer is None:
                self._arm_timer()
            room = self._limits.max_header_bytes - self._head_bytes
            if room <= 0:
                self._refuse(431, f"request head larger than {self._limits.max_header_bytes} bytes")
                return
            if len(data) > room:
                # Slices of a view copy nothing: a flood arrives 256 KiB a read.
                view = memoryview(data)
                part, data = cast(bytes, view[:room]), cast(bytes, view[room:])
            else:
                part, data = data, b""
            self._head_bytes += len(part)
            super().data_received(part)
            if self._raw.is_closing():
                return

    def evictable(self) -> bool:
        """True when closing this connection loses no request (it owes no response)."""
        idle = self.cycle is None or self.cycle.response_complete
        if (self._reading_head and idle) or self._lingering:
            return True
        return self._body_due is not None and self.loop.time() >= self._body_due

    def evict(self) -> None:
        """Close now: the connection's place goes to a new one."""
        self._raw.abort()

    def _head_complete(self) -> None:
        self._reading_head = False
        self._front.busy(self)
        # The body (if any) has the head's timeout: without a deadline a connection that
        # sends a head and one byte of body holds its place, unevictable, for good.
        self._body_due = self.loop.time() + self._limits.header_timeout
        self._arm_timer(self._body_late)

    def _body_complete(self) -> None:
        if self._body_due is not None:
            self._body_due = None
            self._cancel_timer()
            self._front.body_done(self)

    def _head_expected(self) -> None:
        # The deadline of the next head starts with its first byte (data_received); idle
        # time before that is uvicorn's keep-alive timeout.
        self._reading_head = True
        self._head_bytes = 0

    def _response_sent(self) -> None:
        if not self._raw.is_closing() and self._reading_head:
            self._front.waits(self)

    def _arm_timer(self, late: Callable[[], None] | None = None) -> None:
        self._cancel_timer()
        # Up to a quarter later than promised, at random: connections opened together
        # (1,000 by one attacker) then time out spread over a while, not in one burst that
        # stalls every client (measured in tests/test_soak.py: the burst made p99 3x).
        spread = random.uniform(1.0, 1.0 + HEADER_TIMEOUT_SPREAD)  # noqa: S311 (not a secret)
        delay = self._limits.header_timeout * spread
        self._timer = self.loop.call_later(delay, late or self._head_late)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _head_late(self) -> None:
        self._timer = None
        if self._raw.is_closing() or not self._reading_head or self._lingering:
            return
        if self._head_bytes == 0:
            self._raw.abort()
        else:
            self._refuse(408, "request head not received in time")

    def _body_late(self) -> None:
        self._timer = None
        if self._raw.is_closing() or self._lingering or self._body_due is None:
            return
        cycle = self.cycle
        if cycle is not None:
            # The app may be waiting for the rest of the body: it gets a disconnect now,
            # and anything it sends after is dropped (uvicorn's own flags for a lost client).
            started = cycle.response_started
            cycle.disconnected = True
            cycle.message_event.set()
            if started:  # an answer is on its way: a 408 would corrupt it
                self._raw.abort()
                return
        # uvicorn pauses reading when the app leaves the body unread; the lingering close
        # must read to avoid a reset.
        self._raw.resume_reading()
        self._refuse(408, "request body not received in time")

    def _refuse(self, status: int, reason: str) -> None:
        """Answer ``status`` and close. What the client still sends is read and dropped for
        a moment (up to LINGER_BYTES): closing with unread data resets the connection, and
        the client would then see a reset instead of the answer."""
        self._cancel_timer()
        self._coalescing.flush()
        body = reason.encode("ascii")
        phrase = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}[status]
        self._raw.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (status, phrase, len(body), body)
        )
        self._lingering = True
        self._linger_bytes = LINGER_BYTES
        if self._body_due is not None:
            self._body_due = None
            self._front.body_done(self)
            self._front.waits(self)
        if self._raw.can_write_eof():  # TLS cannot half-close
            self._raw.write_eof()
        self._timer = self.loop.call_later(LINGER_SECONDS, self._raw.abort)


class H11GuardedProtocol(_GuardedProtocol, H11Protocol):
    """uvicorn's h11 protocol with the limits of this module."""

    def handle_events(self) -> None:
        """uvicorn's event loop over h11, then note whether a head is still being read."""
        super().handle_events()
        if self._lingering or self._raw.is_closing():
            return
        their = self.conn.their_state
        if their is h11.IDLE:
            if not self._reading_head:
                self._head_expected()
            return
        # A pipelined request's head can be parsed inside on_response_complete, going from
        # the previous request's DONE to SEND_BODY without IDLE in between.
        if self._reading_head or (their is h11.SEND_BODY and self._body_due is None):
            self._head_complete()
        if their is not h11.SEND_BODY:
            self._body_complete()

    def on_response_complete(self) -> None:
        """As uvicorn, then the connection may be closed to make room."""
        super().on_response_complete()
        self._response_sent()


_Fast: type[asyncio.Protocol] = H11GuardedProtocol

if HttpToolsProtocol is not None:

    class HttpToolsGuardedProtocol(_GuardedProtocol, HttpToolsProtocol):
        """uvicorn's httptools protocol with the limits of this module."""

        def on_headers_complete(self) -> None:
            """The head is whole: no deadline or size budget until the next one."""
            self._head_complete()
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            """The body is whole: what follows is the next request's head."""
            self._body_complete()
            super().on_message_complete()
            self._head_expected()

        def on_response_complete(self) -> None:
            """As uvicorn, then the connection may be closed to make room."""
            super().on_response_complete()
            self._response_sent()

    _Fast = HttpToolsGuardedProtocol


NoDelayHttpProtocol = _Fast
"""The fastest available protocol (httptools, else h11), with the limits above."""

HTTP_PROTOCOL = "kms_hsm.api.protocol:NoDelayHttpProtocol"
