"""One gRPC load client process (started by ``grpc_load.run_grpc_load``; see there).

Imports only grpcio, uvloop and the generated KMS modules, so that starting a few of these
costs little. ``--method`` is the call (``CALLS``): SymmetricCryptoService Encrypt (the
default), AsymmetricSignatureCryptoService Sign or AsymmetricEncryptionCryptoService
Decrypt, with ``--payload-hex`` as its plaintext, message or ciphertext. It opens a few
plaintext channels, makes one call on each, prints
``BENCH_GRPC_READY``, waits for ``go`` on stdin, keeps ``--concurrency`` calls in flight
for ``--warmup`` + ``--seconds`` and prints one ``BENCH_GRPC_RESULT {json}`` line: the
calls completed in the measured seconds, their latency histogram, errors by status code,
and the CPU seconds the process used while measuring. The bearer token comes from the
environment (``BENCH_GRPC_TOKEN``), never from argv.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import resource
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import grpc
import uvloop
from yandex.cloud.kms.v1 import symmetric_crypto_service_pb2 as crypto_pb2
from yandex.cloud.kms.v1 import symmetric_crypto_service_pb2_grpc as crypto_grpc
from yandex.cloud.kms.v1.asymmetricencryption import (
    asymmetric_encryption_crypto_service_pb2 as decrypt_pb2,
)
from yandex.cloud.kms.v1.asymmetricencryption import (
    asymmetric_encryption_crypto_service_pb2_grpc as decrypt_grpc,
)
from yandex.cloud.kms.v1.asymmetricsignature import (
    asymmetric_signature_crypto_service_pb2 as sign_pb2,
)
from yandex.cloud.kms.v1.asymmetricsignature import (
    asymmetric_signature_crypto_service_pb2_grpc as sign_grpc,
)

TOKEN_ENV = "BENCH_GRPC_TOKEN"
READY = "BENCH_GRPC_READY"
RESULT = "BENCH_GRPC_RESULT "
# Per process: more connections than processes, so that SO_REUSEPORT spreads them over
# the server's workers (one connection per process could put both on one worker).
CHANNELS_PER_PROCESS = 4
# Histogram buckets per factor e: neighbouring bucket bounds differ by 1 %.
BUCKETS_PER_E = 100
CALL_TIMEOUT = 10.0
# method -> (stub class, RPC name, request from key id and payload bytes)
CALLS: dict[str, tuple[Any, str, Callable[[str, bytes], Any]]] = {
    "encrypt": (
        crypto_grpc.SymmetricCryptoServiceStub,
        "Encrypt",
        lambda key, data: crypto_pb2.SymmetricEncryptRequest(key_id=key, plaintext=data),
    ),
    "sign": (
        sign_grpc.AsymmetricSignatureCryptoServiceStub,
        "Sign",
        lambda key, data: sign_pb2.AsymmetricSignRequest(key_id=key, message=data),
    ),
    "decrypt": (
        decrypt_grpc.AsymmetricEncryptionCryptoServiceStub,
        "Decrypt",
        lambda key, data: decrypt_pb2.AsymmetricDecryptRequest(key_id=key, ciphertext=data),
    ),
}


def rpc(method: str, channel: Any) -> Any:
    """The bound RPC ``method`` (a key of ``CALLS``) on ``channel``, sync or aio alike."""
    stub_class, name, _ = CALLS[method]
    return getattr(stub_class(channel), name)


def make_request(method: str, key_id: str, payload: bytes) -> Any:
    """The request message of ``method`` for ``key_id`` with ``payload``."""
    return CALLS[method][2](key_id, payload)


def channel_options() -> list[tuple[str, int]]:
    """Options of every load channel."""
    # A subchannel pool per channel: channels with equal arguments would otherwise share
    # one connection.
    return [("grpc.use_local_subchannel_pool", 1)]


def bearer(token: str | None) -> tuple[tuple[str, str], ...]:
    """The call metadata: ``authorization: Bearer <token>``, or nothing."""
    return (("authorization", f"Bearer {token}"),) if token else ()


def describe(exc: grpc.RpcError) -> str:
    """``CODE: details`` of a failed call."""
    if isinstance(exc, grpc.Call):
        code = exc.code()
        return f"{code.name if code else 'UNKNOWN'}: {exc.details()}"
    return f"UNKNOWN: {exc}"


def bucket_of(elapsed_us: float) -> int:
    """The histogram bucket of a latency in microseconds."""
    return int(math.log(max(elapsed_us, 1.0)) * BUCKETS_PER_E)


def bucket_upper_us(bucket: int) -> float:
    """The upper bound (us) of a histogram bucket."""
    return math.exp((bucket + 1) / BUCKETS_PER_E)


class Window:
    """The measured seconds of this process and what completed in them."""

    def __init__(self, start: float, seconds: float) -> None:
        self.start = start
        self.end = start + seconds
        self.requests = 0
        self.max_us = 0.0
        self.histogram: Counter[int] = Counter()
        self.errors: Counter[str] = Counter()
        self.examples: list[str] = []

    def record(self, started: float, finished: float, error: grpc.RpcError | None) -> None:
        """Count a call that started and finished inside the window; ignore the rest."""
        if started < self.start or finished > self.end:
            return
        if error is not None:
            code = error.code() if isinstance(error, grpc.Call) else None
            self.errors[code.name if code else "UNKNOWN"] += 1
            if len(self.examples) < 3:
                self.examples.append(describe(error))
            return
        elapsed_us = (finished - started) * 1e6
        self.requests += 1
        self.max_us = max(self.max_us, elapsed_us)
        self.histogram[bucket_of(elapsed_us)] += 1


async def _slot(
    call: Any,
    request: Any,
    metadata: tuple[tuple[str, str], ...],
    window: Window,
) -> None:
    clock = time.perf_counter
    while True:
        started = clock()
        if started >= window.end:
            return
        error: grpc.RpcError | None = None
        try:
            await call(request, metadata=metadata, timeout=CALL_TIMEOUT)
        except grpc.RpcError as exc:
            error = exc
        window.record(started, clock(), error)


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def run_client(args: argparse.Namespace) -> dict[str, object]:
    """Connect, report ready, wait for go, load, and return the result."""
    metadata = bearer(os.environ.get(TOKEN_ENV))
    request = make_request(args.method, args.key_id, bytes.fromhex(args.payload_hex))
    count = min(CHANNELS_PER_PROCESS, args.concurrency)
    channels = [
        grpc.aio.insecure_channel(args.target, options=channel_options()) for _ in range(count)
    ]
    try:
        calls = [rpc(args.method, channel) for channel in channels]
        # Every connection is open and has served a call before the clock starts.
        await asyncio.gather(
            *(call(request, metadata=metadata, timeout=CALL_TIMEOUT) for call in calls)
        )
        print(READY, flush=True)
        go = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        if go.strip() != "go":
            raise SystemExit("grpc_client: stdin closed before go")
        window = Window(time.perf_counter() + args.warmup, args.seconds)
        cpu_before = _cpu_seconds()
        await asyncio.gather(
            *(_slot(calls[i % count], request, metadata, window) for i in range(args.concurrency))
        )
        cpu = (_cpu_seconds() - cpu_before) * args.seconds / (args.seconds + args.warmup)
    finally:
        for channel in channels:
            await channel.close()
    return {
        "requests": window.requests,
        "seconds": args.seconds,
        "max_us": window.max_us,
        "histogram": {str(b): n for b, n in window.histogram.items()},
        "errors": dict(window.errors),
        "error_examples": window.examples,
        "cpu_seconds": cpu,
    }


def main(argv: list[str] | None = None) -> int:
    """Parse argv, run the client on uvloop, print the result line."""
    parser = argparse.ArgumentParser(description="one gRPC load client process")
    parser.add_argument("--target", required=True)
    parser.add_argument("--key-id", required=True)
    parser.add_argument("--method", choices=sorted(CALLS), default="encrypt")
    parser.add_argument("--payload-hex", required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--warmup", type=float, default=0.0)
    args = parser.parse_args(argv)
    try:
        out = uvloop.run(run_client(args))
    except grpc.RpcError as exc:
        print(f"first call failed: {describe(exc)}", file=sys.stderr)
        return 1
    print(RESULT + json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
