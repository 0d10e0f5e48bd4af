"""kms_hsm.client over HTTPS against a real `kms-hsm serve` (TLS, 2 workers), and against the
same server under mutual TLS: the CA given as a path or as an SSLContext, an untrusted
server refused at once (no retries), and the official SDK reading what the client wrote."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from kms_hsm.client import AsyncClient, BackendUnavailable, Client
from tests.grpc_support import KmsServer, running_server, server_fixture

server = server_fixture(workers=2)


def test_https_with_ca_path_and_context(server: KmsServer) -> None:
    with Client(server.rest_url, token=server.admin_token, verify=str(server.pki.ca)) as c:
        key = c.create_key("b1gclienttls", name="tls")
        enc = c.encrypt(key.id, b"over tls", aad_context=b"t")
    with Client(server.rest_url, token=server.admin_token, verify=server.ssl_context()) as c:
        assert c.decrypt(key.id, enc.ciphertext, aad_context=b"t").plaintext == b"over tls"

    async def scenario() -> bytes:
        async with AsyncClient(
            server.rest_url, token=server.admin_token, verify=server.ssl_context()
        ) as c:
            return (await c.decrypt(key.id, enc.ciphertext, aad_context=b"t")).plaintext

    assert asyncio.run(scenario()) == b"over tls"


def test_grpc_sdk_reads_what_the_client_wrote(server: KmsServer) -> None:
    from yandex.cloud.kms.v1.symmetric_crypto_service_pb2 import SymmetricDecryptRequest
    from yandex.cloud.kms.v1.symmetric_crypto_service_pb2_grpc import (
        SymmetricCryptoServiceStub,
    )

    with Client(server.rest_url, token=server.admin_token, verify=server.ssl_context()) as c:
        key = c.create_key("b1gclienttls")
        enc = c.encrypt(key.id, b"both ways", aad_context=b"ctx")
    stub = server.sdk().client(SymmetricCryptoServiceStub)
    answer = stub.Decrypt(
        SymmetricDecryptRequest(key_id=key.id, ciphertext=enc.ciphertext, aad_context=b"ctx")
    )
    assert answer.plaintext == b"both ways"


def test_untrusted_server_is_refused_at_once(server: KmsServer) -> None:
    started = time.monotonic()
    untrusted = Client(server.rest_url, token=server.admin_token, timeout=10)
    with untrusted, pytest.raises(BackendUnavailable, match="certificate") as err:
        untrusted.get_key("abjk")
    assert time.monotonic() - started < 2  # not retried for ten seconds
    assert server.admin_token not in str(err.value)


@pytest.fixture(scope="module")
def mutual(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KmsServer]:
    """A server that asks for a client certificate of its CA."""
    with running_server(tmp_path_factory.mktemp("client-mtls"), client_ca=True) as s:
        yield s


def test_mutual_tls_with_a_context(mutual: KmsServer) -> None:
    with Client(mutual.rest_url, token=mutual.admin_token, verify=mutual.ssl_context()) as c:
        assert c.create_key("b1gclientmtls").status == "ACTIVE"
    # Without a client certificate the handshake fails: refused, not retried.
    anonymous = Client(mutual.rest_url, token=mutual.admin_token, verify=str(mutual.pki.ca))
    with anonymous, pytest.raises(BackendUnavailable):
        anonymous.get_key("abjk")
