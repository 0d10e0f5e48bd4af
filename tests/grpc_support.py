"""Helpers of the official-SDK acceptance tests (issue 16): a test PKI, `kms-hsm serve` in a
subprocess with TLS and gRPC on the embedded default, SDK and REST clients for it, the CLI.

The sync SDK blocks: call it from test threads only, never from an event loop.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import json
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import yandexcloud
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from google.rpc import error_details_pb2, status_pb2

from tests.conftest import KMS_HSM, free_port, serve_env, stop


@dataclass(frozen=True)
class Pki:
    """PEM files of a throwaway CA, a `localhost`/127.0.0.1 server and a client, all 0600."""

    ca: Path
    cert: Path
    key: Path
    client_cert: Path
    client_key: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _issue(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
    server: bool = False,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name("kms-sdk-test-ca"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def make_pki(directory: Path) -> Pki:
    """A CA, a server certificate for localhost/127.0.0.1 and a client certificate."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    server_key = ec.generate_private_key(ec.SECP256R1())
    client_key = ec.generate_private_key(ec.SECP256R1())
    pem = serialization.Encoding.PEM

    def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    files = {
        "ca": _issue("kms-sdk-test-ca", ca_key, ca_key, ca=True).public_bytes(pem),
        "cert": _issue("localhost", server_key, ca_key, ca=False, server=True).public_bytes(pem),
        "key": key_pem(server_key),
        "client_cert": _issue("sdk-client", client_key, ca_key, ca=False).public_bytes(pem),
        "client_key": key_pem(client_key),
    }
    paths: dict[str, Path] = {}
    for name, data in files.items():
        path = directory / f"{name}.pem"
        path.touch(mode=0o600)
        path.chmod(0o600)
        path.write_bytes(data)
        paths[name] = path
    return Pki(**paths)


@dataclass
class Server:
    """A running `kms-hsm serve` (REST over HTTPS and gRPC over TLS on one host)."""

    proc: subprocess.Popen[bytes]
    env: dict[str, str]
    data_dir: Path
    log: Path
    audit: Path
    pki: Pki
    http_port: int
    grpc_port: int

    @property
    def endpoint(self) -> str:
        """What the SDK dials: the certificate's name, so discovery answers it back."""
        return f"localhost:{self.grpc_port}"

    @property
    def rest_url(self) -> str:
        """The REST base URL over HTTPS."""
        return f"https://localhost:{self.http_port}"

    @property
    def ca_pem(self) -> bytes:
        """The test CA, as the SDK's root_certificates."""
        return self.pki.ca.read_bytes()

    @property
    def admin_token(self) -> str:
        """The bearer token the first start wrote."""
        return (self.data_dir / "admin-token").read_text().strip()

    def sdk(self, **credentials: Any) -> yandexcloud.SDK:
        """The official SDK pointed at this server with the test CA (discovery included)."""
        if not credentials:
            credentials = {"iam_token": self.admin_token}
        return yandexcloud.SDK(endpoint=self.endpoint, root_certificates=self.ca_pem, **credentials)

    def ssl_context(self) -> ssl.SSLContext:
        """A client TLS context trusting the test CA."""
        return ssl.create_default_context(cafile=str(self.pki.ca))

    def rest(self, token: str | None = None) -> httpx.Client:
        """An HTTPS client for REST, authenticated as ``token`` (the admin by default)."""
        bearer = self.admin_token if token is None else token
        return httpx.Client(
            base_url=self.rest_url,
            headers={"Authorization": f"Bearer {bearer}"},
            verify=self.ssl_context(),
            timeout=30,
        )

    def secure_channel(self) -> grpc.Channel:
        """A TLS channel of our own, for calls that must send exactly the metadata given."""
        return grpc.secure_channel(self.endpoint, grpc.ssl_channel_credentials(self.ca_pem))

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """The real CLI in a subprocess, on this server's database and token."""
        result = subprocess.run(
            [KMS_HSM, *args], env=self.env, capture_output=True, text=True, timeout=120
        )
        if check:
            assert result.returncode == 0, (args, result.stdout, result.stderr)
        return result

    def principal(self, name: str) -> tuple[str, str, str]:
        """A new principal and a token for it, made by the CLI: (principal id, token, token id)."""
        principal_id = self.cli("principals", "create", name).stdout.strip()
        issued = self.cli("tokens", "create", principal_id)
        token_id = issued.stderr.split("token id ", 1)[1].split(";", 1)[0].strip()
        return principal_id, issued.stdout.strip(), token_id

    def audit_events(self) -> list[dict[str, Any]]:
        """The audit events appended to KMS_HSM_AUDIT_LOG_FILE so far (checkpoints left out)."""
        if not self.audit.exists():
            return []
        events = [json.loads(line) for line in self.audit.read_text().splitlines() if line]
        return [e for e in events if e.get("type") != "checkpoint"]

    def wait_for_audit(self, predicate: Any, timeout: float = 10) -> list[dict[str, Any]]:
        """The audit events matching ``predicate``, once at least one was written."""
        deadline = time.monotonic() + timeout
        while True:
            found = [e for e in self.audit_events() if predicate(e)]
            if found or time.monotonic() > deadline:
                return found
            time.sleep(0.1)


def _wait_ready(proc: subprocess.Popen[bytes], server: Server, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    context = server.ssl_context()
    while True:
        if proc.poll() is not None:
            pytest.fail(f"kms-hsm serve exited with {proc.returncode}: {server.log.read_text()}")
        try:
            probe = httpx.get(f"{server.rest_url}/kms/v1/keys/probe", verify=context, timeout=1)
            if probe.status_code == 401:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"kms-hsm serve did not start in time: {server.log.read_text()}")
        time.sleep(0.1)
    with server.secure_channel() as channel:
        grpc.channel_ready_future(channel).result(timeout=max(1.0, deadline - time.monotonic()))


@contextlib.contextmanager
def serve_grpc(
    directory: Path, *args: str, client_ca: bool = False, **extra: str
) -> Iterator[Server]:
    """`kms-hsm serve ARGS` on the embedded default with TLS, gRPC on a free port and an
    audit log file; stopped on exit."""
    pki = make_pki(directory / "pki")
    http_port = free_port()
    grpc_port = free_port()
    while grpc_port == http_port:
        grpc_port = free_port()
    audit = directory / "audit.jsonl"
    tls = {"KMS_HSM_TLS_CERT": str(pki.cert), "KMS_HSM_TLS_KEY": str(pki.key)}
    if client_ca:
        tls["KMS_HSM_TLS_CLIENT_CA"] = str(pki.ca)
    env = serve_env(
        directory / "data",
        http_port,
        KMS_HSM_GRPC_PORT=str(grpc_port),
        KMS_HSM_AUDIT_LOG_FILE=str(audit),
        **tls,
        **extra,
    )
    log = directory / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [KMS_HSM, "serve", *args], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    server = Server(proc, env, directory / "data", log, audit, pki, http_port, grpc_port)
    try:
        _wait_ready(proc, server)
        yield server
    finally:
        stop(proc)


def rpc_error(call: Any, *args: Any, **kwargs: Any) -> grpc.RpcError:
    """The RpcError a call raises (fails the test if it succeeds)."""
    kwargs.setdefault("timeout", 30)
    with pytest.raises(grpc.RpcError) as caught:
        call(*args, **kwargs)
    return caught.value


def status_details(error: grpc.RpcError) -> tuple[status_pb2.Status, dict[str, Any]]:
    """The google.rpc.Status of ``grpc-status-details-bin`` and its details by type name."""
    raw = dict(error.trailing_metadata() or ())["grpc-status-details-bin"]
    status = status_pb2.Status.FromString(raw)
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


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    """Call metadata carrying ``token``."""
    return (("authorization", f"Bearer {token}"),)
