"""The wire between a worker and its HSM agent (``kms_hsm.crypto.pkcs11.agent``), version 1.

Frames on a socketpair: a 4-byte big-endian length, then a pickle (the agent is the
worker's own child, so pickle is trusted both ways). The worker's first frame is the
``AgentConfig`` (the PIN travels here, never in argv or the environment); the agent answers
``("ready", None)`` or ``("failed", message)``. Then each worker frame is a list of
``(call id, method, args, kwargs)`` and each agent frame a list of
``(call id, ok, result or encoded error)``. A start that the token refused for its PIN
answers ``("refused", message)``: the worker then never starts another agent.
"""

from __future__ import annotations

import asyncio
import pickle
import socket
import struct
from dataclasses import dataclass, field
from typing import Any

from kms_hsm.errors import BackendUnavailable, KmsError

_LENGTH = struct.Struct(">I")

# What the agent runs: the ``Token`` protocol's methods (kms_hsm.crypto.token).
TOKEN_METHODS = frozenset(
    {
        "generate_key",
        "destroy_key",
        "find_key_ids",
        "key_attributes",
        "encrypt",
        "decrypt",
        "generate_wrapped_data_key",
        "unwrap_data_key",
        "random",
        "read_data",
        "write_data",
        "generate_key_pair",
        "public_key",
        "sign_digest",
        "decrypt_oaep",
    }
)


@dataclass(frozen=True)
class AgentConfig:
    """What the agent needs to open the token; sent as the first frame."""

    library: str
    token_label: str
    pin: str = field(repr=False)
    startup_timeout: float
    log_level: str
    # Session copies of HSM keys the agent keeps (least recently used destroyed).
    session_cache_size: int = 1024
    # The worker's log format ("text" | "json"): the agent writes to the same stderr.
    log_format: str = "text"


def frame(message: Any) -> bytes:
    """One frame: length, then the pickle."""
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(body)) + body


def read_frame(sock: socket.socket) -> Any:
    """The next frame's message, blocking (the agent's side); EOFError when the peer has gone."""
    (length,) = _LENGTH.unpack(_read_exactly(sock, _LENGTH.size))
    return pickle.loads(_read_exactly(sock, length))  # noqa: S301 (our own parent)


async def read_message(reader: asyncio.StreamReader) -> Any:
    """The next frame's message (the worker's side)."""
    length = int.from_bytes(await reader.readexactly(_LENGTH.size), "big")
    return pickle.loads(await reader.readexactly(length))  # noqa: S301 (our own child)


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
    found: dict[str, type[KmsError]] = {}
    pending: list[type[KmsError]] = [KmsError]
    while pending:
        cls = pending.pop()
        found.setdefault(cls.__name__, cls)
        pending.extend(cls.__subclasses__())
    return found
