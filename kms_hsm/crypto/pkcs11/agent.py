"""The HSM agent: the child process that alone, for its worker, loads PKCS#11 and calls the token.

Why a process: python-pkcs11 releases the GIL around every PKCS#11 call (three per AES-GCM
encrypt), and a thread that has to win the GIL back from a busy event loop waits for the
switch interval each time; measured on SoftHSM2, that made an HSM request cost four times
a software one. In its own process the agent holds its own GIL, and the event loop pays
only for a message (batched: one write per loop turn, one read per answer batch). A call
that hangs in the token stalls only the agent, which the worker kills and starts again:
recovery that a thread stuck in C could never give.

It serves every ``Token`` method (kms_hsm.crypto.token), control plane included, one call
at a time, over the wire of ``kms_hsm.crypto.agent.protocol``.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from typing import Any

from kms_hsm import metrics
from kms_hsm.crypto.agent.protocol import (
    TOKEN_METHODS,
    AgentConfig,
    encode_error,
    frame,
    read_frame,
)
from kms_hsm.errors import BackendUnavailable, LoginRefused
from kms_hsm.logs import configure_logging

log = logging.getLogger(__name__)

# Answers go back in chunks of this many, so that the event loop can finish the first
# requests of a long batch while the agent works on the rest. Measured at 64 concurrent
# HSM encrypts: one frame per batch 10.4k req/s (the loop idle 20 % of the time), chunks
# of 8 / 16 / 32: 10.9k / 11.9k / 11.8k; one frame per call 9.7k.
ANSWER_CHUNK = 16


def serve(sock: socket.socket) -> None:
    """Open the token as the first frame says, then answer call batches until EOF."""
    from kms_hsm.crypto.pkcs11.hsm import HsmCrypto
    from kms_hsm.crypto.pkcs11.sessions import SessionManager

    config: AgentConfig = read_frame(sock)
    # Counts PKCS#11 reinitialisations when the worker that started it counts (its
    # environment names the metrics directory).
    metrics.enable()
    configure_logging(config.log_level, config.log_format)
    sessions = SessionManager(
        config.library,
        config.token_label,
        config.pin,
        startup_timeout=config.startup_timeout,
        session_cache_size=config.session_cache_size,
    )
    try:
        sessions.start()
    except LoginRefused as exc:
        sock.sendall(frame(("refused", exc.message)))
        return
    except Exception as exc:
        sock.sendall(frame(("failed", str(exc))))
        return
    log.info("HSM agent logged in to token '%s' for worker %d", config.token_label, os.getppid())
    hsm = HsmCrypto(sessions)
    sock.sendall(frame(("ready", None)))
    try:
        while True:
            try:
                batch = read_frame(sock)
            except EOFError:
                return
            answers: list[tuple[int, bool, Any]] = []
            for call_id, method, args, kwargs in batch:
                try:
                    if method not in TOKEN_METHODS:
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
        pass  # the worker has gone: so do we
    finally:
        sock.close()


if __name__ == "__main__":
    main()
