"""The worker's side of the HSM agent, and ``AgentToken``: the ``Token`` that uses it.

Each event loop (uvicorn runs one per worker process) has one agent process. Calls made in
one loop turn go out as one frame; answers settle plain futures.

Deadlines: a call not answered within the call timeout fails with ``BackendUnavailable``
(503), and the agent, stuck in the token, is killed. One timer watches the oldest call in
flight and is set for the moment its deadline passes. Until a new agent has opened the
token, calls fail at once (503) and each may start the next attempt (at most one every
``_RESTART_SPACING`` seconds). A crashed agent is handled the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable
from typing import Any, cast

from kms_hsm import metrics
from kms_hsm.crypto.agent.protocol import AgentConfig, decode_error, frame, read_message
from kms_hsm.domain.asymmetric import PairSpec
from kms_hsm.errors import BackendUnavailable, LoginRefused

log = logging.getLogger(__name__)

_SETTLED: tuple[None, float, str] = (None, 0.0, "")
_RESTART_SPACING = 0.5
_RESTART_SPACING_MAX = 5.0
AGENT_MODULE = "kms_hsm.crypto.pkcs11.agent"


class _Agent:
    """One agent process and the stream to it."""

    def __init__(self, process: subprocess.Popen[bytes], writer: asyncio.StreamWriter) -> None:
        self.process = process
        self.writer = writer
        self.reader_task: asyncio.Task[None] | None = None

    def stop(self, grace: float = 0.0) -> None:
        """Close the socket (the agent logs out and exits at EOF); kill it after ``grace``.

        The killed process is reaped by a thread: one stuck in an uninterruptible wait
        (a hardware driver, a hung network file system) leaves only when that wait ends,
        and the event loop must not wait with it.
        """
        with contextlib.suppress(Exception):  # the loop may be closed already
            self.writer.close()
        try:
            self.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.process.kill()
            threading.Thread(target=self.process.wait, name="agent-reaper", daemon=True).start()


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
        # In flight, oldest first: (future, monotonic time sent, token method).
        self._calls: dict[int, tuple[asyncio.Future[Any], float, str]] = {}
        self._watchdog: asyncio.TimerHandle | None = None
        self._outbox: list[tuple[int, str, tuple[Any, ...], dict[str, Any]]] = []
        self._unanswered = 0  # calls sent to the agent, not yet answered (a metric)
        self.starts = 0  # agents that opened the token: one PKCS#11 login each
        self._last_failure = "the HSM agent could not start"
        # Set when the token refused the PIN: no agent is started again (see LoginRefused).
        self._refused: str | None = None
        self._failed_starts = 0

    def call(self, method: str, *args: Any, **kwargs: Any) -> Awaitable[Any]:
        """Run the token method ``method`` in the agent; await what this returns."""
        if self._agent is None:
            return self._call_once_started(method, args, kwargs)
        # A running agent: the answer's future itself, no coroutine per call.
        return self._send(method, args, kwargs)

    async def _call_once_started(
        self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        self._ensure_starting()
        if self._refused is not None:
            raise LoginRefused(self._refused)
        if not self._healthy or self._starting is None:
            metrics.hsm_failure(method, "unavailable")
            raise BackendUnavailable(log_detail=self._last_failure)
        try:
            await asyncio.wait_for(asyncio.shield(self._starting), self._timeout)
        except TimeoutError:
            metrics.hsm_failure(method, "unavailable")
            raise BackendUnavailable(log_detail="the HSM agent did not start in time") from None
        if self._agent is None:
            metrics.hsm_failure(method, "unavailable")
            raise BackendUnavailable(log_detail=self._last_failure)
        return await self._send(method, args, kwargs)

    def _send(
        self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> asyncio.Future[Any]:
        # A plain future, not a coroutine: the answer (or the agent's end) settles it and
        # takes it off ``_calls``; a caller that gave up leaves it there until then.
        loop = asyncio.get_running_loop()
        call_id = next(self._ids)
        future: asyncio.Future[Any] = loop.create_future()
        self._calls[call_id] = (future, time.monotonic(), method)
        if not self._outbox:
            loop.call_soon(self._flush)
        self._outbox.append((call_id, method, args, kwargs))
        if self._watchdog is None:
            self._watchdog = loop.call_later(self._timeout, self._check_oldest)
        return future

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
        self._unanswered += len(outbox)
        _in_flight(len(outbox))

    def _ensure_starting(self) -> None:
        if self._refused is not None:
            return
        if self._starting is not None and not self._starting.done():
            return
        # Each failed start in a row doubles the wait before the next (a token that hangs
        # leaves an agent to kill per attempt), up to _RESTART_SPACING_MAX.
        spacing = min(_RESTART_SPACING * 2 ** max(self._failed_starts - 1, 0), _RESTART_SPACING_MAX)
        if time.monotonic() - self._last_attempt < spacing:
            return
        self._last_attempt = time.monotonic()
        self._starting = asyncio.get_running_loop().create_task(self._start())

    async def _start(self) -> None:
        try:
            agent, reader = await self._spawn()
        except LoginRefused as exc:
            self._healthy = False
            self._refused = self._last_failure = exc.message
            log.critical("HSM agent not restarted: %s; fix the PIN and restart", exc.message)
            metrics.agent_start_failed()
            return
        except Exception as exc:
            self._healthy = False
            self._failed_starts += 1
            self._last_failure = str(getattr(exc, "log_detail", None) or exc)
            log.warning("HSM agent did not start: %s", self._last_failure)
            metrics.agent_start_failed()
            return
        self._failed_starts = 0
        agent.reader_task = asyncio.get_running_loop().create_task(self._read(reader, agent))
        self._agent = agent
        self._healthy = True
        self.starts += 1
        metrics.agent_started(restart=self.starts > 1)
        log.info(
            "HSM agent %d serving worker %d (agent start %d)",
            agent.process.pid,
            os.getpid(),
            self.starts,
        )

    async def _spawn(self) -> tuple[_Agent, asyncio.StreamReader]:
        parent_sock, child_sock = socket.socketpair()
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", AGENT_MODULE, str(child_sock.fileno())],
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
            try:
                status, detail = await asyncio.wait_for(read_message(reader), self._timeout)
            except TimeoutError:
                raise BackendUnavailable(
                    log_detail=f"the HSM agent did not open the token within {self._timeout:g}s"
                ) from None
            if status == "refused":
                raise LoginRefused(str(detail))
            if status != "ready":
                raise BackendUnavailable(log_detail=str(detail))
        except BaseException:
            agent.stop()
            raise
        return agent, reader

    async def _read(self, reader: asyncio.StreamReader, agent: _Agent) -> None:
        try:
            while True:
                answers = await read_message(reader)
                now = time.monotonic()
                settled = 0
                for call_id, ok, value in answers:
                    future, sent, method = self._calls.pop(call_id, _SETTLED)
                    if future is None:
                        continue
                    settled += 1
                    metrics.hsm_call(method, now - sent)
                    if not ok:
                        metrics.hsm_failure(method, "error")
                    if future.done():
                        continue
                    if ok:
                        future.set_result(value)
                    else:
                        future.set_exception(decode_error(value))
                self._unanswered -= settled
                _in_flight(-settled)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        if self._agent is agent:  # it died on its own (not killed by _check_oldest/close)
            log.warning("HSM agent %d exited", agent.process.pid)
            self._drop(agent, "the HSM agent exited")

    def _check_oldest(self) -> None:
        self._watchdog = None
        if not self._calls:
            return
        _future, sent, _method = next(iter(self._calls.values()))
        overdue = time.monotonic() - sent - self._timeout
        if overdue >= 0:
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
        # The oldest call's deadline is the next one to pass.
        self._watchdog = asyncio.get_running_loop().call_later(-overdue, self._check_oldest)

    def _drop(self, agent: _Agent, reason: str) -> None:
        self._agent = None
        self._healthy = False
        if agent.reader_task is not None and agent.reader_task is not asyncio.current_task():
            agent.reader_task.cancel()
        agent.stop()
        self._fail_all(reason)

    def _fail_all(self, reason: str) -> None:
        calls, self._calls = self._calls, {}
        _in_flight(-self._unanswered)
        self._unanswered = 0
        for future, _sent, method in calls.values():
            metrics.hsm_failure(method, "unavailable")
            if not future.done():
                future.set_exception(BackendUnavailable(log_detail=reason))


# HSM calls this process has sent to its agents and not yet had answered (every lane).
_calls_in_flight = 0


def _in_flight(change: int) -> None:
    global _calls_in_flight
    _calls_in_flight += change
    metrics.hsm_in_flight(_calls_in_flight)


class AgentPool:
    """One data-plane agent per event loop (uvicorn runs one loop per worker process), and
    one key-generation agent per loop, started by its first key pair only.

    Why two: an agent answers one call at a time, and an RSA-4096 key generation takes
    seconds (1.4-2.5 s on SoftHSM2, longer on real HSMs), so in the data-plane agent it
    would queue every encrypt behind it and their call deadline would kill the agent. The
    key-generation agent has the deadline ``keygen_timeout`` (``KMS_HSM_KEYGEN_TIMEOUT``);
    it logs in to the token the first time a loop makes a key pair, not before, so a
    worker that never makes one logs in once.
    """

    def __init__(
        self, config: AgentConfig, timeout: float, keygen_timeout: float | None = None
    ) -> None:
        self._config = config
        self._timeout = timeout
        self._keygen_timeout = keygen_timeout if keygen_timeout is not None else timeout
        self._clients: dict[asyncio.AbstractEventLoop, AgentClient] = {}
        self._keygen_clients: dict[asyncio.AbstractEventLoop, AgentClient] = {}
        self._keygen_turns: dict[asyncio.AbstractEventLoop, asyncio.Lock] = {}

    def client(self) -> AgentClient:
        """The running loop's client (its agent starts with its first call)."""
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            client = self._clients[loop] = AgentClient(self._config, self._timeout)
        return client

    def keygen_client(self) -> AgentClient:
        """The running loop's key-generation client (its agent starts with its first call)."""
        loop = asyncio.get_running_loop()
        client = self._keygen_clients.get(loop)
        if client is None:
            client = self._keygen_clients[loop] = AgentClient(self._config, self._keygen_timeout)
        return client

    def keygen_turn(self) -> asyncio.Lock:
        """The running loop's lock for one key generation at a time (see AgentToken)."""
        loop = asyncio.get_running_loop()
        turn = self._keygen_turns.get(loop)
        if turn is None:
            turn = self._keygen_turns[loop] = asyncio.Lock()
        return turn

    def close_current(self) -> None:
        """Stop the running loop's agents (before that loop ends)."""
        loop = asyncio.get_running_loop()
        for clients in (self._clients, self._keygen_clients):
            client = clients.pop(loop, None)
            if client is not None:
                client.close()

    def close(self) -> None:
        """Stop every agent."""
        for clients in (self._clients, self._keygen_clients):
            for client in clients.values():
                client.close()
            clients.clear()


class AgentToken:
    """The ``Token`` of a serving process: every call goes to the running loop's agent."""

    def __init__(self, agents: AgentPool) -> None:
        self.agents = agents

    async def generate_key(self, object_id: bytes, label: str | None = None) -> None:
        """See ``Token.generate_key``."""
        await self.agents.client().call("generate_key", object_id, label)

    async def destroy_key(self, object_id: bytes) -> bool:
        """See ``Token.destroy_key``."""
        return cast(bool, await self.agents.client().call("destroy_key", object_id))

    async def find_key_ids(self, label_prefix: str = "") -> list[bytes]:
        """See ``Token.find_key_ids``."""
        return cast(list[bytes], await self.agents.client().call("find_key_ids", label_prefix))

    async def key_attributes(
        self, object_id: bytes, names: tuple[str, ...] = ()
    ) -> dict[str, object]:
        """See ``Token.key_attributes``."""
        result = await self.agents.client().call("key_attributes", object_id, names)
        return cast(dict[str, object], result)

    async def encrypt(self, object_id: bytes, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
        """See ``Token.encrypt``."""
        result = await self.agents.client().call("encrypt", object_id, nonce, plaintext, aad)
        return cast(bytes, result)

    async def decrypt(self, object_id: bytes, nonce: bytes, sealed: bytes, aad: bytes) -> bytes:
        """See ``Token.decrypt``."""
        result = await self.agents.client().call("decrypt", object_id, nonce, sealed, aad)
        return cast(bytes, result)

    async def generate_wrapped_data_key(
        self, object_id: bytes, key_bytes: int, nonce: bytes, aad: bytes, *, want_plaintext: bool
    ) -> tuple[bytes, bytes, bytes]:
        """See ``Token.generate_wrapped_data_key``."""
        result = await self.agents.client().call(
            "generate_wrapped_data_key",
            object_id,
            key_bytes,
            nonce,
            aad,
            want_plaintext=want_plaintext,
        )
        return cast(tuple[bytes, bytes, bytes], result)

    async def unwrap_data_key(
        self, object_id: bytes, nonce: bytes, tag: bytes, wrapped: bytes, aad: bytes
    ) -> bytes:
        """See ``Token.unwrap_data_key``."""
        result = await self.agents.client().call(
            "unwrap_data_key", object_id, nonce, tag, wrapped, aad
        )
        return cast(bytes, result)

    async def random(self, n: int) -> bytes:
        """See ``Token.random``."""
        return cast(bytes, await self.agents.client().call("random", n))

    async def read_data(self, label: str) -> list[bytes]:
        """See ``Token.read_data``."""
        return cast(list[bytes], await self.agents.client().call("read_data", label))

    async def write_data(self, label: str, value: bytes) -> None:
        """See ``Token.write_data``."""
        await self.agents.client().call("write_data", label, value)

    async def generate_key_pair(self, object_id: bytes, label: str, spec: PairSpec) -> bytes:
        """See ``Token.generate_key_pair``: runs in the loop's key-generation agent.

        One generation at a time per loop: the deadline runs from when a call is sent, so
        queued RSA-4096 generations would otherwise use up the deadline of the last one,
        and its expiry kills the agent with every generation queued behind it.
        """
        async with self.agents.keygen_turn():
            client = self.agents.keygen_client()
            result = await client.call("generate_key_pair", object_id, label, spec)
        return cast(bytes, result)

    async def public_key(self, object_id: bytes) -> bytes:
        """See ``Token.public_key``."""
        return cast(bytes, await self.agents.client().call("public_key", object_id))

    async def sign_digest(self, object_id: bytes, spec: PairSpec, digest: bytes) -> bytes:
        """See ``Token.sign_digest``."""
        result = await self.agents.client().call("sign_digest", object_id, spec, digest)
        return cast(bytes, result)

    async def decrypt_oaep(self, object_id: bytes, spec: PairSpec, ciphertext: bytes) -> bytes:
        """See ``Token.decrypt_oaep``."""
        result = await self.agents.client().call("decrypt_oaep", object_id, spec, ciphertext)
        return cast(bytes, result)
