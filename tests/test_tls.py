"""`kms-hsm serve --tls-cert --tls-key [--tls-client-ca]`: HTTPS and mutual TLS, for real."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
import subprocess
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.conftest import KMS_HSM, free_port, serve_env, stop


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _issue(subject: str, key, issuer_key, issuer: str, *, ca: bool, server: bool = False):
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _write(path: Path, cert=None, key=None) -> Path:
    if cert is not None:
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    else:
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _issue("kms-test-ca", ca_key, ca_key, "kms-test-ca", ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = _issue("127.0.0.1", server_key, ca_key, "kms-test-ca", ca=False, server=True)
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = _issue("client", client_key, ca_key, "kms-test-ca", ca=False)
    return {
        "ca": _write(d / "ca.pem", cert=ca),
        "cert": _write(d / "server.pem", cert=server),
        "key": _write(d / "server.key", key=server_key),
        "client_cert": _write(d / "client.pem", cert=client),
        "client_key": _write(d / "client.key", key=client_key),
    }


def _serve_tls(tmp_path: Path, pki: dict[str, Path], *extra: str):
    port = free_port()
    proc = subprocess.Popen(
        [KMS_HSM, "serve", "--tls-cert", str(pki["cert"]), "--tls-key", str(pki["key"]), *extra],
        env=serve_env(tmp_path / "data", port),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return proc, f"https://127.0.0.1:{port}"


def _wait(url: str, **kwargs) -> httpx.Response:
    import time

    deadline = time.monotonic() + 60
    while True:
        try:
            return httpx.get(f"{url}/kms/v1/keys/probe", timeout=2, **kwargs)
        except httpx.ConnectError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_https(tmp_path: Path, pki) -> None:
    proc, url = _serve_tls(tmp_path, pki)
    try:
        ctx = ssl.create_default_context(cafile=str(pki["ca"]))
        assert _wait(url, verify=ctx).status_code == 401
        with pytest.raises(httpx.HTTPError):
            httpx.get(url.replace("https", "http") + "/kms/v1/keys/probe", timeout=2)
    finally:
        stop(proc)


def test_mutual_tls(tmp_path: Path, pki) -> None:
    proc, url = _serve_tls(tmp_path, pki, "--tls-client-ca", str(pki["ca"]))
    try:
        with_cert = ssl.create_default_context(cafile=str(pki["ca"]))
        with_cert.load_cert_chain(str(pki["client_cert"]), str(pki["client_key"]))
        assert _wait(url, verify=with_cert).status_code == 401
        without = ssl.create_default_context(cafile=str(pki["ca"]))
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"{url}/kms/v1/keys/probe", verify=without, timeout=2)
    finally:
        stop(proc)


def test_world_readable_tls_key_is_refused(tmp_path: Path, pki) -> None:
    loose = tmp_path / "loose.key"
    loose.write_bytes(pki["key"].read_bytes())
    loose.chmod(0o644)
    result = subprocess.run(
        [KMS_HSM, "serve", "--tls-cert", str(pki["cert"]), "--tls-key", str(loose)],
        env=serve_env(tmp_path / "data", free_port()),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "TLS key file" in result.stderr
