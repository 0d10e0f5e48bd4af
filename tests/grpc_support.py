"""What the official-SDK acceptance tests (tests/test_grpc_sdk*.py) share: a test CA with a
server certificate for localhost and a client certificate, the real `kms-hsm serve` in a
subprocess on the embedded default with TLS and gRPC (one per module), and SDK clients.

The SDK is synchronous and blocks its thread: call it from test functions, never from an
event loop's thread.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import os
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import yandexcloud
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from google.rpc import error_details_pb2, status_pb2

from tests.conftest import KMS_HSM, free_port, serve_env, stop

CA_NAME = "kms-hsm sdk-test CA"


# --- a test CA, a server certificate for localhost / 127.0.0.1, a client certificate ---


@dataclass(frozen=True)
class Pki:
    """PEM files, each mode 0600, of a CA made for one test module."""

    ca: Path
    cert: Path
    key: Path
    client_cert: Path
    client_key: Path

    @property
    def ca_pem(self) -> bytes:
        """The CA certificate, as the SDK's ``root_certificates`` wants it."""
        return self.ca.read_bytes()

    def ssl_context(self) -> ssl.SSLContext:
        """A client context trusting only this CA (for httpx against the REST port)."""
        return ssl.create_default_context(cafile=str(self.ca))


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
    usage: x509.ObjectIdentifier | None = None,
    names: list[x509.GeneralName] | None = None,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(CA_NAME))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def make_pki(directory: Path) -> Pki:
    """A fresh CA with a server certificate for localhost and 127.0.0.1, and a client one."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    server_key = ec.generate_private_key(ec.SECP256R1())
    client_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate(CA_NAME, ca_key, ca_key, ca=True)
    server = _certificate(
        "localhost",
        server_key,
        ca_key,
        ca=False,
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
        names=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
    )
    client = _certificate(
        "sdk-test-client", client_key, ca_key, ca=False, usage=ExtendedKeyUsageOID.CLIENT_AUTH
    )
    pem = serialization.Encoding.PEM
    contents = {
        "ca": ca.public_bytes(pem),
        "cert": server.public_bytes(pem),
        "key": _key_pem(server_key),
        "client_cert": client.public_bytes(pem),
        "client_key": _key_pem(client_key),
    }
    paths: dict[str, Path] = {}
    for name, data in contents.items():
        path = directory / f"{name}.pem"
        # Created 0600 from the start: the server refuses a key file others may read.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        paths[name] = path
    return Pki(**paths)


# --- `kms-hsm serve` with TLS and gRPC, in a subprocess ---


@dataclass
class KmsServer:
    """A running `kms-hsm serve`: REST over HTTPS and gRPC over TLS, on the embedded default."""

    proc: subprocess.Popen[bytes]
    env: dict[str, str]
    data_dir: Path
    pki: Pki
    http_port: int
    grpc_port: int
    log: Path
    audit_log: Path
    mutual: bool = False
    _stopped: bool = field(default=False)

    @property
    def endpoint(self) -> str:
        """What the SDK is given: the name in the server certificate and the gRPC port."""
        return f"localhost:{self.grpc_port}"

    @property
    def rest_url(self) -> str:
        """The same server's REST API (HTTPS)."""
        return f"https://127.0.0.1:{self.http_port}"

    @property
    def admin_token(self) -> str:
        """The first admin's bearer token, written 0600 by the first start."""
        return (self.data_dir / "admin-token").read_text().strip()

    def sdk(self, **credentials: Any) -> yandexcloud.SDK:
        """The official SDK pointed at this server (discovery, TLS with the test CA)."""
        if not credentials:
            credentials = {"iam_token": self.admin_token}
        return yandexcloud.SDK(
            endpoint=self.endpoint,
            root_certificates=self.pki.ca_pem,
            **self._client_certificate(),
            **credentials,
        )

    def _client_certificate(self) -> dict[str, bytes]:
        if not self.mutual:
            return {}
        return {
            "private_key": self.pki.client_key.read_bytes(),
            "certificate_chain": self.pki.client_cert.read_bytes(),
        }

    def ssl_context(self) -> ssl.SSLContext:
        """A client context trusting the CA, with the client certificate under mutual TLS."""
        context = self.pki.ssl_context()
        if self.mutual:
            context.load_cert_chain(self.pki.client_cert, self.pki.client_key)
        return context

    def rest(self, token: str | None = None) -> httpx.Client:
        """An HTTPS client of the REST API, with ``token`` as its bearer when given."""
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        return httpx.Client(
            base_url=self.rest_url, headers=headers, verify=self.ssl_context(), timeout=30
        )

    def secure_channel(self) -> grpc.Channel:
        """A TLS channel to the gRPC port that sends no credentials of its own."""
        credentials = grpc.ssl_channel_credentials(
            root_certificates=self.pki.ca_pem, **self._client_certificate()
        )
        return grpc.secure_channel(self.endpoint, credentials)

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """The real CLI on this server's data directory (the same environment as serve)."""
        result = subprocess.run(
            [KMS_HSM, *args], env=self.env, capture_output=True, text=True, timeout=120
        )
        if check:
            assert result.returncode == 0, (args, result.stdout, result.stderr)
        return result

    def principal_with_token(self, name: str) -> tuple[str, str, str]:
        """A new principal made by the CLI, and a token issued to it: (id, token, token id)."""
        principal_id = self.cli("principals", "create", name).stdout.strip()
        issued = self.cli("tokens", "create", principal_id)
        token_id = issued.stderr.split("token id ", 1)[1].split(";", 1)[0].strip()
        return principal_id, issued.stdout.strip(), token_id

    def written(self) -> str:
        """Everything the server wrote so far: its stdout/stderr and the audit log file."""
        texts = [self.log.read_text(errors="replace")]
        if self.audit_log.exists():
            texts.append(self.audit_log.read_text(errors="replace"))
        return "\n".join(texts)

    def stop(self) -> None:
        """SIGTERM (then SIGKILL); idempotent, so a test may stop the module's server."""
        if not self._stopped:
            self._stopped = True
            stop(self.proc)


def _wait_until_serving(server: KmsServer, timeout: float = 90) -> None:
    """Until REST answers over HTTPS (401 without a token) and gRPC accepts TLS."""
    deadline = time.monotonic() + timeout
    context = server.ssl_context()
    while True:
        if server.proc.poll() is not None:
            pytest.fail(f"kms-hsm serve exited with {server.proc.returncode}:\n{server.written()}")
        if time.monotonic() > deadline:
            pytest.fail(f"kms-hsm serve did not start in time:\n{server.written()}")
        try:
            url = f"{server.rest_url}/kms/v1/keys/probe"
            if httpx.get(url, verify=context, timeout=1).status_code == 401:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    with server.secure_channel() as channel:
        grpc.channel_ready_future(channel).result(timeout=max(1.0, deadline - time.monotonic()))


@contextlib.contextmanager
def running_server(
    directory: Path, *, workers: int = 1, client_ca: bool = False, **env: str
) -> Iterator[KmsServer]:
    """`kms-hsm serve [--workers N]` with TLS (mutual with ``client_ca``: clients need a
    certificate of the module's CA) and gRPC on free ports, stopped at the end."""
    pki = make_pki(directory / "pki")
    http_port = free_port()
    grpc_port = free_port()
    while grpc_port == http_port:
        grpc_port = free_port()
    audit_log = directory / "audit.jsonl"
    if client_ca:
        env = {"KMS_HSM_TLS_CLIENT_CA": str(pki.ca), **env}
    environment = serve_env(
        directory / "data",
        http_port,
        KMS_HSM_HOST="127.0.0.1",
        KMS_HSM_GRPC_PORT=str(grpc_port),
        KMS_HSM_TLS_CERT=str(pki.cert),
        KMS_HSM_TLS_KEY=str(pki.key),
        KMS_HSM_AUDIT_LOG_FILE=str(audit_log),
        # These modules make deliberate authentication failures from 127.0.0.1; the
        # per-address budget has tests of its own (test_auth_limits, test_grpc_server).
        KMS_HSM_AUTH_FAILURE_LIMIT="1000",
        **env,
    )
    log = directory / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [KMS_HSM, "serve", "--workers", str(workers)],
            env=environment,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = KmsServer(
        proc,
        environment,
        directory / "data",
        pki,
        http_port,
        grpc_port,
        log,
        audit_log,
        mutual=client_ca,
    )
    try:
        _wait_until_serving(server)
        yield server
    finally:
        server.stop()


def server_fixture(
    *, workers: int = 1, client_ca: bool = False, **env: str
) -> Callable[..., Iterator[KmsServer]]:
    """A module-scoped fixture of one server (start-up costs seconds: one per module)."""

    @pytest.fixture(scope="module")
    def fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KmsServer]:
        with running_server(
            tmp_path_factory.mktemp(f"grpc-sdk-w{workers}"),
            workers=workers,
            client_ca=client_ca,
            **env,
        ) as s:
            yield s

    return fixture


# --- what a failed call carries ---


def status_details(error: grpc.RpcError) -> tuple[status_pb2.Status, dict[str, Any]]:
    """The ``google.rpc.Status`` of a failed call and its details, by message name."""
    trailing = dict(error.trailing_metadata() or ())  # type: ignore[attr-defined]
    status = status_pb2.Status.FromString(trailing["grpc-status-details-bin"])
    found: dict[str, Any] = {}
    for detail in status.details:
        for cls in (
            error_details_pb2.RequestInfo,
            error_details_pb2.BadRequest,
            error_details_pb2.RetryInfo,
        ):
            if detail.Is(cls.DESCRIPTOR):
                message = cls()
                detail.Unpack(message)
                found[cls.DESCRIPTOR.name] = message
    return status, found


def rpc_error(call: Callable[..., Any], *args: Any, **kwargs: Any) -> grpc.RpcError:
    """The error a call fails with (it must fail), with a 30 s deadline."""
    with pytest.raises(grpc.RpcError) as caught:
        call(*args, timeout=30, **kwargs)
    return caught.value
