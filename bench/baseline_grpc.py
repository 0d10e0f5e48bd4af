"""Baseline G: a bare ``grpc.aio`` SymmetricCryptoService whose Encrypt does only AES-GCM.

The gRPC analogue of baseline F: the servicer base class and ``add_…_to_server`` that the
PyPI package ``yandexcloud`` generates, on uvloop, plaintext; Encrypt seals the plaintext
with AES-GCM (``cryptography``) under a fixed in-memory key and a random nonce and answers
``SymmetricEncryptResponse``. No authentication, no audit, no key lookup: the ceiling of
grpcio's Python server on this machine for this amount of work.

    python bench/baseline_grpc.py PORT [--workers N]

With ``--workers N`` the process spawns N server processes on the same port (grpcio sets
``SO_REUSEPORT``), as every kms-hsm worker serves the gRPC port; it prints
``baseline-grpc worker ready`` once per worker and stops them all on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import signal
import sys

import grpc
import uvloop
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from yandex.cloud.kms.v1 import symmetric_crypto_service_pb2 as crypto_pb2
from yandex.cloud.kms.v1 import symmetric_crypto_service_pb2_grpc as crypto_grpc

READY_LINE = "baseline-grpc worker ready"
# The same request limit as kms-hsm's gRPC server and REST bodies.
MAX_MESSAGE = 256 * 1024
# A benchmark stand-in, not a secret: every run encrypts under the same key.
_AEAD = AESGCM(bytes(range(32)))


class BareCrypto(crypto_grpc.SymmetricCryptoServiceServicer):
    """Encrypt only; the other RPCs keep the base class's UNIMPLEMENTED."""

    async def Encrypt(
        self, request: crypto_pb2.SymmetricEncryptRequest, context: grpc.aio.ServicerContext
    ) -> crypto_pb2.SymmetricEncryptResponse:
        """AES-GCM of the plaintext under the fixed key; the key id is echoed back."""
        nonce = os.urandom(12)
        sealed = _AEAD.encrypt(nonce, request.plaintext, request.aad_context or None)
        return crypto_pb2.SymmetricEncryptResponse(
            key_id=request.key_id, version_id="baseline", ciphertext=nonce + sealed
        )


async def serve(port: int) -> None:
    """One server on 127.0.0.1:``port`` until SIGTERM or SIGINT."""
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.so_reuseport", 1),
        ]
    )
    # The stubs mark every RPC abstract; the base class answers UNIMPLEMENTED at run time.
    servicer = BareCrypto()  # type: ignore[abstract]
    crypto_grpc.add_SymmetricCryptoServiceServicer_to_server(servicer, server)
    if server.add_insecure_port(f"127.0.0.1:{port}") != port:
        raise SystemExit(f"baseline-grpc: cannot listen on 127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(READY_LINE, flush=True)
    await stop.wait()
    await server.stop(grace=1.0)


def run_worker(port: int) -> None:
    """One server process on uvloop."""
    uvloop.run(serve(port))


def main(argv: list[str] | None = None) -> int:
    """Serve with one process, or supervise ``--workers`` of them."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("port", type=int)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    if args.workers == 1:
        run_worker(args.port)
        return 0
    # Spawned, not forked: grpcio's core threads do not survive a fork.
    spawn = multiprocessing.get_context("spawn")
    workers = [spawn.Process(target=run_worker, args=(args.port,)) for _ in range(args.workers)]
    for worker in workers:
        worker.start()

    def stop_workers(signum: int, _frame: object) -> None:
        for worker in workers:
            if worker.pid is not None and worker.is_alive():
                os.kill(worker.pid, signum)

    signal.signal(signal.SIGTERM, stop_workers)
    signal.signal(signal.SIGINT, stop_workers)
    for worker in workers:
        worker.join()
    return max((w.exitcode or 0) for w in workers)


if __name__ == "__main__":
    sys.exit(main())
