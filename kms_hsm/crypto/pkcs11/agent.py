"""The HSM agent: a child process that runs the data plane's token calls.

Why a process: python-pkcs11 releases the GIL around every PKCS#11 call (three per AES-GCM
encrypt), and a thread that has to win the GIL back from a busy event loop waits for the
switch interval each time; measured on SoftHSM2, that made an HSM request cost four times
a software one. In its own process the agent holds its own GIL, and the event loop pays
only for a message (batched: one write per loop turn, one read per answer batch). A call
that hangs in the token stalls only the agent, which the parent kills and starts again:
recovery that a thread stuck in C could never give.

Protocol on the socket inherited as file descriptor ``argv[1]``: frames of a 4-byte
big-endian length and a pickle (this process is our own child, so pickle is trusted both
ways). The parent's first frame is the configuration (the PIN travels here, never in argv
or the environment); the agent answers ``("ready", None)`` or ``("failed", message)``.
Then each parent frame is a list of ``(call id, method, args, kwargs)`` and each agent frame a list
of ``(call id, ok, result or encoded error)``.
"""

from __future__ import annotations

import logging
import pickle
import socket
import struct
import sys
from dataclasses import dataclass, field
from typing import Any

from kms_hsm.errors import BackendUnavailable, KmsError

log = logging.getLogger(__name__)

_LENGTH = struct.Struct(">I")

# Answers go back in chunks of this many, so that the event loop can finish the first
# requests of a long batch while the agent works on the rest. Measured at 64 concurrent
# HSM encrypts: one frame per batch 10.4k req/s (the loop idle 20 % of the time), chunks
# of 8 / 16 / 32: 10.9k / 11.9k / 11.8k; one frame per call 9.7k.
ANSWER_CHUNK = 16

# What the agent runs: the data plane's token calls, nothing that creates or destroys keys.
AGENT_METHODS = frozenset(
    {"encrypt", "decrypt", "generate_wrapped_data_key", "unwrap_data_key", "random"}
)


@dataclass(frozen=True)
class AgentConfig:
    """What the agent needs to open the token; sent as the first frame."""

    library: str
    token_label: str
    pin: str = field(repr=False)
    pool_size: int
    lease_timeout: float
    startup_timeout: float
    log_level: str


def frame(message: Any) -> bytes:
    """One frame: length, then the pickle."""
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(body)) + body


def read_frame(sock: socket.socket) -> Any:
    """The next frame's message, blocking; EOFError when the peer has gone."""
    (length,) = _LENGTH.unpack(_read_exactly(sock, _LENGTH.size))
    return pickle.loads(_read_exactly(sock, length))  # noqa: S301 (our own parent)


def _read_exactly(sock: socket.socket, n: int) -> bytes:
    chunks = []
    while n:
        chunk = sock.recv(min(n, 1 << 20))
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def encode_error(exc: BaseException) -> tuple[str, str, str | None]:
    """A KmsError as (class name, message, log detail); anything else becomes 503."""
    if isinstance(exc, KmsError):
        return type(exc).__name__, exc.message, exc.log_detail
    return "BackendUnavailable", BackendUnavailable.default_message, repr(exc)


def decode_error(encoded: tuple[str, str, str | None]) -> KmsError:
    """The KmsError that ``encode_error`` described."""
    name, message, log_detail = encoded
    cls = _error_classes().get(name, BackendUnavailable)
    exc = cls.__new__(cls)
    KmsError.__init__(exc, message, log_detail=log_detail)
    return exc


def _error_classes() -> dict[str, type[KmsError]]:
    # Every KmsError subclass, wherever it is defined (KeyMaterialMissing lives with the
    # session manager), by name.
    found: dict[str, type[KmsError]] = {}
    pending: list[type[KmsError]] = [KmsError]
    while pending:
        cls = pending.pop()
        found.setdefault(cls.__name__, cls)
        pending.extend(cls.__subclasses__())
    return found


def serve(sock: socket.socket) -> None:
    """Open the token as the first frame says, then answer call batches until EOF."""
    from kms_hsm.crypto.pkcs11.hsm import HsmCrypto
    from kms_hsm.crypto.pkcs11.sessions import SessionManager

    config: AgentConfig = read_frame(sock)
    logging.basicConfig(
        level=config.log_level,
        format="%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s",
    )
    sessions = SessionManager(
        config.library,
        config.token_label,
        config.pin,
        pool_size=config.pool_size,
        lease_timeout=config.lease_timeout,
        startup_timeout=config.startup_timeout,
    )
    try:
        sessions.start()
    except Exception as exc:
        sock.sendall(frame(("failed", str(exc))))
        return
    hsm = HsmCrypto(sessions)
    sock.sendall(frame(("ready", None)))
    try:
        while True:
            try:
                batch = read_frame(sock)
            except EOFError:
                return
            answers = []
            for call_id, method, args, kwargs in batch:
                try:
                    if method not in AGENT_METHODS:
                        raise BackendUnavailable(log_detail=f"agent has no method {method}")
                    answers.append((call_id, True, getattr(hsm, method)(*args, **kwargs)))
                except Exception as exc:
                    answers.append((call_id, False, encode_error(exc)))
                if len(answers) == ANSWER_CHUNK:
                    sock.sendall(frame(answers))
                    answers = []
            if answers:
                sock.sendall(frame(answers))
    finally:
        sessions.close()


def main() -> None:
    """Entry point: ``python -m kms_hsm.crypto.pkcs11.agent <fd>``."""
    sock = socket.socket(fileno=int(sys.argv[1]))
    try:
        serve(sock)
    except (EOFError, BrokenPipeError, ConnectionResetError):
        pass  # the parent has gone: so do we
    finally:
        sock.close()


if __name__ == "__main__":
    main()
