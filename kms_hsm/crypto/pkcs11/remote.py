"""The parent's side of the HSM agent (see ``agent.py``), and the HSM that routes to it.

``RoutedHsm`` is the ``HsmCrypto`` the keyring uses. Called inside ``run_bridged`` (the
data plane on the event loop), its token calls become messages to this loop's agent
process; called anywhere else (control plane, scheduler, readiness, tests), they run in
this process as before.

Deadlines (issue 5): a call not answered within the call timeout fails with 503 (checked
four times per timeout by one timer, so within 1.25 x the timeout), and the agent, stuck
in the token, is killed; until a new agent has opened the token, calls fail at
once (503) and each one may start the next attempt (at most one every
``_RESTART_SPACING`` seconds). A crashed agent is handled the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import pickle
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable
from typing import Any

from kms_hsm.crypto.bridge import await_in_bridge, in_bridge
from kms_hsm.crypto.pkcs11.agent import AgentConfig, decode_error, frame
from kms_hsm.crypto.pkcs11.hsm import HsmCrypto
from kms_hsm.crypto.pkcs11.sessions import SessionManager
from kms_hsm.errors import BackendUnavailable
from kms_hsm.loops import current_loop

log = logging.getLogger(__name__)

_LENGTH_BYTES = 4
_SETTLED: tuple[None, float] = (None, 0.0)
_RESTART_SPACING = 0.5


class _Agent:
    """One agent process and the calls this loop has in flight to it."""

    def __init__(self, process: subprocess.Popen[bytes], writer: asyncio.StreamWriter) -> None:
        self.process = process
        self.writer = writer
        self.reader_task: asyncio.Task[None] | None = None

    def stop(self, grace: float = 0.0) -> None:
        """Close the socket (the agent logs out and exits at EOF); kill it after ``grace``."""
        with contextlib.suppress(Exception):  # the loop may be closed already
            self.writer.close()
        try:
            self.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=5)


class AgentClient:
    """Calls into one agent process from one event loop, batched per loop turn."""

    def __init__(self, config: AgentConfig, timeout: float) -> None:
        self._config = config
        self._timeout = timeout
        self._agent: _Agent | None = None
        self._starting: asyncio.Task[None] | None = None
        self._last_attempt = 0.0
        # True until an agent has hung, crashed or failed to start: calls wait for a
        # start in progress. False: they fail at once until an agent is up again.
        self._healthy = True
        self._ids = itertools.count()
        # In flight, oldest first: (future, monotonic time sent).
        self._calls: dict[int, tuple[asyncio.Future[Any], float]] = {}
        self._watchdog: asyncio.TimerHandle | None = None
        self._outbox: list[tuple[int, str, tuple[Any, ...], dict[str, Any]]] = []

    def call(self, method: str, *args: Any, **kwargs: Any) -> Awaitable[Any]:
        """Run ``HsmCrypto.<method>(*args)`` in the agent; await what this returns."""
        if self._agent is None:
            return self._call_once_started(method, args, kwargs)
        return self._send(method, args, kwargs)

    async def _call_once_started(
        self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        self._ensure_starting()
        if not self._healthy or self._starting is None:
            raise BackendUnavailable(log_detail="the HSM agent is not running")
        try:
            await asyncio.wait_for(asyncio.shield(self._starting), self._timeout)
        except TimeoutError:
            raise BackendUnavailable(log_detail="the HSM agent did not start in time") from None
        if self._agent is None:
            raise BackendUnavailable(log_detail="the HSM agent could not start")
        return await self._send(method, args, kwargs)

    def _send(
        self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> asyncio.Future[Any]:
        # A plain future, not a coroutine: the answer (or the agent's end) settles it and
        # takes it off ``_calls``; a caller that gave up leaves it there until then.
        loop = current_loop()
        call_id = next(self._ids)
        future: asyncio.Future[Any] = loop.create_future()
        self._calls[call_id] = (future, time.monotonic())
        if not self._outbox:
            loop.call_soon(self._flush)
        self._outbox.append((call_id, method, args, kwargs))
        if self._watchdog is None:
            # One timer for all calls (not one each): it looks at the oldest call.
            self._watchdog = loop.call_later(self._timeout / 4, self._check_oldest)
        return future

    async def start(self) -> bool:
        """Start the agent now rather than at the first call; True once it serves."""
        self._ensure_starting()
        if self._starting is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._starting), self._timeout)
        return self._agent is not None

    def close(self) -> None:
        """Stop the agent (from any thread; the loop may be gone)."""
        agent, self._agent = self._agent, None
        if agent is not None:
            agent.stop(grace=2.0)

    def _flush(self) -> None:
        outbox, self._outbox = self._outbox, []
        if self._agent is None:
            self._fail_all("the HSM agent stopped")
            return
        self._agent.writer.write(frame(outbox))

    def _ensure_starting(self) -> None:
        if self._starting is not None and not self._starting.done():
            return
        if time.monotonic() - self._last_attempt < _RESTART_SPACING:
            return
        self._last_attempt = time.monotonic()
        self._starting = asyncio.get_running_loop().create_task(self._start())

    async def _start(self) -> None:
        try:
            agent, reader = await self._spawn()
        except Exception as exc:
            self._healthy = False
            log.warning("HSM agent did not start: %s", getattr(exc, "log_detail", None) or exc)
            return
        agent.reader_task = asyncio.get_running_loop().create_task(self._read(reader, agent))
        self._agent = agent
        self._healthy = True
        log.info("HSM agent %d serving", agent.process.pid)

    async def _spawn(self) -> tuple[_Agent, asyncio.StreamReader]:
        parent_sock, child_sock = socket.socketpair()
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "kms_hsm.crypto.pkcs11.agent", str(child_sock.fileno())],
                pass_fds=(child_sock.fileno(),),
                stdin=subprocess.DEVNULL,
                # The PIN reaches the agent over the socket only.
                env={k: v for k, v in os.environ.items() if k != "KMS_HSM_PIN"},
            )
        except BaseException:
            parent_sock.close()
            raise
        finally:
            child_sock.close()
        reader, writer = await asyncio.open_unix_connection(sock=parent_sock)
        agent = _Agent(process, writer)
        try:
            writer.write(frame(self._config))
            status, detail = await asyncio.wait_for(_read_message(reader), self._timeout)
            if status != "ready":
                raise BackendUnavailable(log_detail=f"HSM agent: {detail}")
        except BaseException:
            agent.stop()
            raise
        return agent, reader

    async def _read(self, reader: asyncio.StreamReader, agent: _Agent) -> None:
        try:
            while True:
                for call_id, ok, value in await _read_message(reader):
                    future = self._calls.pop(call_id, _SETTLED)[0]
                    if future is None or future.done():
                        continue
                    if ok:
                        future.set_result(value)
                    else:
                        future.set_exception(decode_error(value))
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        if self._agent is agent:  # it died on its own (not killed by _expire/close)
            log.warning("HSM agent %d exited", agent.process.pid)
            self._drop(agent, "the HSM agent exited")

    def _check_oldest(self) -> None:
        self._watchdog = None
        if not self._calls:
            return
        _future, sent = next(iter(self._calls.values()))
        if time.monotonic() - sent > self._timeout:
            agent = self._agent
            if agent is not None:
                log.warning(
                    "HSM call took longer than %gs: stopping HSM agent %d",
                    self._timeout,
                    agent.process.pid,
                )
                self._drop(agent, f"HSM call took longer than {self._timeout:g}s")
            else:
                self._fail_all("the HSM agent stopped")
            return
        loop = asyncio.get_running_loop()
        self._watchdog = loop.call_later(self._timeout / 4, self._check_oldest)

    def _drop(self, agent: _Agent, reason: str) -> None:
        self._agent = None
        self._healthy = False
        if agent.reader_task is not None and agent.reader_task is not asyncio.current_task():
            agent.reader_task.cancel()
        agent.stop()
        self._fail_all(reason)

    def _fail_all(self, reason: str) -> None:
        calls, self._calls = self._calls, {}
        for future, _sent in calls.values():
            if not future.done():
                future.set_exception(BackendUnavailable(log_detail=reason))


async def _read_message(reader: asyncio.StreamReader) -> Any:
    length = int.from_bytes(await reader.readexactly(_LENGTH_BYTES), "big")
    return pickle.loads(await reader.readexactly(length))  # noqa: S301 (our own child)


class AgentPool:
    """One agent per event loop (uvicorn runs one loop per worker process)."""

    def __init__(self, config: AgentConfig, timeout: float) -> None:
        self._config = config
        self._timeout = timeout
        self._clients: dict[asyncio.AbstractEventLoop, AgentClient] = {}

    def client(self) -> AgentClient:
        """The running loop's client (its agent starts with its first call)."""
        loop = current_loop()
        client = self._clients.get(loop)
        if client is None:
            client = self._clients[loop] = AgentClient(self._config, self._timeout)
        return client

    def close(self) -> None:
        """Stop every agent."""
        for client in self._clients.values():
            client.close()
        self._clients.clear()


class RoutedHsm(HsmCrypto):
    """HsmCrypto whose data-plane calls go to the agent when made inside ``run_bridged``."""

    def __init__(self, sessions: SessionManager, agents: AgentPool) -> None:
        super().__init__(sessions)
        self.agents = agents

    def _remote(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return await_in_bridge(self.agents.client().call(method, *args, **kwargs))

    def encrypt(self, object_id: bytes, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
        """AES-GCM under the token key (in the agent when bridged)."""
        if in_bridge():
            result: bytes = self._remote("encrypt", object_id, nonce, plaintext, aad)
            return result
        return super().encrypt(object_id, nonce, plaintext, aad)

    def decrypt(self, object_id: bytes, nonce: bytes, sealed: bytes, aad: bytes) -> bytes:
        """Open ciphertext || tag (in the agent when bridged)."""
        if in_bridge():
            result: bytes = self._remote("decrypt", object_id, nonce, sealed, aad)
            return result
        return super().decrypt(object_id, nonce, sealed, aad)

    def generate_wrapped_data_key(
        self, object_id: bytes, key_bytes: int, nonce: bytes, aad: bytes, *, want_plaintext: bool
    ) -> tuple[bytes, bytes, bytes]:
        """Born-in-token data key, wrapped and bound (in the agent when bridged)."""
        if in_bridge():
            result: tuple[bytes, bytes, bytes] = self._remote(
                "generate_wrapped_data_key",
                object_id,
                key_bytes,
                nonce,
                aad,
                want_plaintext=want_plaintext,
            )
            return result
        return super().generate_wrapped_data_key(
            object_id, key_bytes, nonce, aad, want_plaintext=want_plaintext
        )

    def unwrap_data_key(
        self, object_id: bytes, nonce: bytes, tag: bytes, wrapped: bytes, aad: bytes
    ) -> bytes:
        """Verify the binding tag, then unwrap (in the agent when bridged)."""
        if in_bridge():
            result: bytes = self._remote("unwrap_data_key", object_id, nonce, tag, wrapped, aad)
            return result
        return super().unwrap_data_key(object_id, nonce, tag, wrapped, aad)

    def random(self, n: int) -> bytes:
        """Bytes from the token's RNG (in the agent when bridged)."""
        if in_bridge():
            result: bytes = self._remote("random", n)
            return result
        return super().random(n)
