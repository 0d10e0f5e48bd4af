"""The gRPC server of one worker: ``grpc.aio`` on the worker's own event loop.

``grpc_service(settings)`` is what the composition (``kms_hsm.cli``) hands the app: an async
context manager per Runtime that binds, starts, and on the way out stops the server (with
a grace for calls in flight) before the app closes its Runtime. Every worker binds the same
port (grpcio sets SO_REUSEPORT; the kernel spreads connections); a single worker binds
without it, so a port already taken fails at once instead of sharing it.

Limits, per worker: messages of at most ``MAX_MESSAGE_BYTES`` each way (REST's body cap:
RESOURCE_EXHAUSTED beyond it), request metadata of at most ``max_header_bytes`` (REST's
head cap), at most ``MAX_CONCURRENT_STREAMS`` calls at once on one connection and
``MAX_CONCURRENT_RPCS`` in the worker (more are refused with RESOURCE_EXHAUSTED at once,
not queued), keepalive pings answered no more often than every ``MIN_PING_INTERVAL_MS``.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import grpc
from yandex.cloud.endpoint import api_endpoint_service_pb2_grpc
from yandex.cloud.iam.v1 import iam_token_service_pb2_grpc
from yandex.cloud.kms.v1 import symmetric_crypto_service_pb2_grpc, symmetric_key_service_pb2_grpc
from yandex.cloud.kms.v1.asymmetricencryption import (
    asymmetric_encryption_crypto_service_pb2_grpc as enc_crypto_grpc,
)
from yandex.cloud.kms.v1.asymmetricencryption import (
    asymmetric_encryption_key_service_pb2_grpc as enc_keys_grpc,
)
from yandex.cloud.kms.v1.asymmetricsignature import (
    asymmetric_signature_crypto_service_pb2_grpc as sig_crypto_grpc,
)
from yandex.cloud.kms.v1.asymmetricsignature import (
    asymmetric_signature_key_service_pb2_grpc as sig_keys_grpc,
)
from yandex.cloud.operation import operation_service_pb2_grpc

from kms_hsm.config import Settings, read_secret_file
from kms_hsm.domain.validation import MAX_MESSAGE_BYTES
from kms_hsm.errors import BackendUnavailable, InvalidArgument
from kms_hsm.grpc.asymmetric import (
    AsymmetricEncryptionCryptoServicer,
    AsymmetricEncryptionKeyServicer,
    AsymmetricSignatureCryptoServicer,
    AsymmetricSignatureKeyServicer,
)
from kms_hsm.grpc.iam import IamTokenServicer
from kms_hsm.grpc.servicers import (
    ApiEndpointServicer,
    OperationServicer,
    SymmetricCryptoServicer,
    SymmetricKeyServicer,
)
from kms_hsm.service.runtime import Runtime

log = logging.getLogger("kms_hsm.grpc")

# Calls being handled at once in one worker; beyond it RESOURCE_EXHAUSTED at once, so a
# client cannot queue unbounded work (each call holds memory, and HSM calls a slot).
MAX_CONCURRENT_RPCS = 1000
# Streams (calls) in flight on one HTTP/2 connection.
MAX_CONCURRENT_STREAMS = 100
# Seconds calls in flight get to finish when the worker stops.
STOP_GRACE = 5.0
# Server pings an idle connection every 2 minutes, and drops it without an answer in 20 s;
# clients may ping every 10 s (the SDKs' defaults are slower), faster pings end the
# connection (GOAWAY "too_many_pings").
KEEPALIVE_TIME_MS = 120_000
KEEPALIVE_TIMEOUT_MS = 20_000
MIN_PING_INTERVAL_MS = 10_000
# A connection without calls for this long is closed (clients reconnect transparently).
MAX_CONNECTION_IDLE_MS = 30 * 60_000

ServiceFactory = Callable[[Runtime], AbstractAsyncContextManager[object]]


def server_options(settings: Settings, *, reuse_port: bool) -> list[tuple[str, Any]]:
    """grpcio channel arguments of the server."""
    return [
        ("grpc.so_reuseport", 1 if reuse_port else 0),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_metadata_size", settings.max_header_bytes),
        ("grpc.absolute_max_metadata_size", settings.max_header_bytes),
        ("grpc.max_concurrent_streams", MAX_CONCURRENT_STREAMS),
        ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", MIN_PING_INTERVAL_MS),
        ("grpc.http2.max_ping_strikes", 2),
        ("grpc.max_connection_idle_ms", MAX_CONNECTION_IDLE_MS),
    ]


def credentials(settings: Settings) -> Any:
    """Server credentials from the REST TLS settings; None for plaintext (no certificate)."""
    if settings.tls_cert is None and settings.tls_key is None:
        if settings.tls_client_ca is not None:
            raise InvalidArgument("--tls-client-ca needs --tls-cert and --tls-key")
        return None
    if settings.tls_cert is None or settings.tls_key is None:
        raise InvalidArgument("--tls-cert and --tls-key go together")
    key = read_secret_file(settings.tls_key, "TLS key file").encode() + b"\n"
    ca = settings.tls_client_ca.read_bytes() if settings.tls_client_ca is not None else None
    return grpc.ssl_server_credentials(
        [(key, settings.tls_cert.read_bytes())],
        root_certificates=ca,
        require_client_auth=ca is not None,
    )


def bind_address(host: str, port: int) -> str:
    """``host:port`` as grpcio binds it (IPv6 literals in brackets)."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


def port_taken(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be bound now (by anyone, SO_REUSEPORT or not); else None.

    Checked once before workers start: with SO_REUSEPORT, workers would share a port with
    whatever else holds it (another kms-hsm) instead of failing.
    """
    if port == 0:
        return None
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host.strip("[]"), port))
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


@asynccontextmanager
async def serving(rt: Runtime, settings: Settings, *, reuse_port: bool) -> AsyncIterator[Any]:
    """The started ``grpc.aio`` server of this worker, stopped on exit."""
    port = settings.grpc_serving_port
    assert port is not None
    creds = credentials(settings)
    server = grpc.aio.server(
        options=server_options(settings, reuse_port=reuse_port),
        maximum_concurrent_rpcs=MAX_CONCURRENT_RPCS,
    )
    endpoints = ApiEndpointServicer(settings.host, port, settings.grpc_advertise, creds is not None)
    symmetric_crypto_service_pb2_grpc.add_SymmetricCryptoServiceServicer_to_server(
        SymmetricCryptoServicer(rt), server
    )
    symmetric_key_service_pb2_grpc.add_SymmetricKeyServiceServicer_to_server(
        SymmetricKeyServicer(rt), server
    )
    sig_crypto_grpc.add_AsymmetricSignatureCryptoServiceServicer_to_server(
        AsymmetricSignatureCryptoServicer(rt), server
    )
    sig_keys_grpc.add_AsymmetricSignatureKeyServiceServicer_to_server(
        AsymmetricSignatureKeyServicer(rt), server
    )
    enc_crypto_grpc.add_AsymmetricEncryptionCryptoServiceServicer_to_server(
        AsymmetricEncryptionCryptoServicer(rt), server
    )
    enc_keys_grpc.add_AsymmetricEncryptionKeyServiceServicer_to_server(
        AsymmetricEncryptionKeyServicer(rt), server
    )
    operation_service_pb2_grpc.add_OperationServiceServicer_to_server(OperationServicer(rt), server)
    iam_token_service_pb2_grpc.add_IamTokenServiceServicer_to_server(IamTokenServicer(rt), server)
    api_endpoint_service_pb2_grpc.add_ApiEndpointServiceServicer_to_server(endpoints, server)
    address = bind_address(settings.host, port)
    try:
        bound = (
            server.add_secure_port(address, creds)
            if creds is not None
            else server.add_insecure_port(address)
        )
    except RuntimeError as exc:  # grpcio raises on a failed bind (older ones returned 0)
        bound, failure = 0, str(exc)
    else:
        failure = "no port bound"
    if not bound:
        log.critical("cannot serve gRPC on %s: %s", address, failure)
        raise BackendUnavailable(f"cannot serve gRPC on {address}: {failure}")
    endpoints.port = bound
    await server.start()
    log.info(
        "serving gRPC on %s (%s) in worker %d",
        bind_address(settings.host, bound),
        "TLS" if creds is not None else "plaintext",
        os.getpid(),
    )
    try:
        yield server
    finally:
        await server.stop(STOP_GRACE)


def grpc_service(settings: Settings, *, reuse_port: bool | None = None) -> ServiceFactory:
    """The app's service (``create_app(services=...)``) serving gRPC for its Runtime.

    ``reuse_port`` defaults to sharing the port only when there are several workers.
    """
    share = settings.workers > 1 if reuse_port is None else reuse_port

    def service(rt: Runtime) -> AbstractAsyncContextManager[object]:
        return serving(rt, settings, reuse_port=share)

    return service
