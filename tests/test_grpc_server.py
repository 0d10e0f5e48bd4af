"""The gRPC server (issue 16): discovery, status codes and details, limits, TLS, workers,
deadlines on a hanging token, and a start-up that fails loudly.

Served for real: the app with its gRPC service on uvicorn in a thread (the session's
runtime and SoftHSM2 token), or `kms-hsm serve` in a subprocess. Clients are the official
SDK (`yandexcloud`) or its generated stubs on a grpcio channel, for metadata and details.
The SDK's acceptance matrix is tests/test_grpc_sdk*.py's.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest
import uvicorn
import yandexcloud
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from google.protobuf import duration_pb2
from yandex.cloud.access import access_pb2
from yandex.cloud.endpoint import api_endpoint_service_pb2 as endpoint_pb2
from yandex.cloud.endpoint import api_endpoint_service_pb2_grpc as endpoint_grpc
from yandex.cloud.kms.v1 import symmetric_crypto_service_pb2 as crypto_pb2
from yandex.cloud.kms.v1 import symmetric_crypto_service_pb2_grpc as crypto_grpc
from yandex.cloud.kms.v1 import symmetric_key_pb2
from yandex.cloud.kms.v1 import symmetric_key_service_pb2 as keys_pb2
from yandex.cloud.kms.v1 import symmetric_key_service_pb2_grpc as keys_grpc
from yandex.cloud.operation import operation_service_pb2 as operation_pb2
from yandex.cloud.operation import operation_service_pb2_grpc as operation_grpc

from kms_hsm.api.app import create_app
from kms_hsm.config import Settings
from kms_hsm.grpc.server import grpc_service
from kms_hsm.service.runtime import Runtime
from tests.conftest import (
    KMS_HSM,
    SOFTHSM_MODULE,
    free_port,
    init_token,
    serve_env,
    stop,
    wait_until_serving,
)
from tests.grpc_support import status_details

FOLDER = "b1ggrpcserver"
AES_256 = symmetric_key_pb2.AES_256
AES_256_HSM = symmetric_key_pb2.AES_256_HSM


@dataclass
class Served:
    """An app serving REST and gRPC in this process."""

    http: str
    target: str  # host:port of gRPC


@contextlib.contextmanager
def serve(runtime: Runtime, settings: Settings, **overrides: object) -> Iterator[Served]:
    """The app with its gRPC service on uvicorn in a thread (the server's own loop)."""
    port = grpc_port = free_port()
    while grpc_port == port:
        grpc_port = free_port()
    s = settings.model_copy(update={"host": "127.0.0.1", "grpc_port": grpc_port, **overrides})
    app = create_app(s, runtime, services=[grpc_service(s)])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("the app did not start")
        time.sleep(0.02)
    try:
        yield Served(f"http://127.0.0.1:{port}", f"127.0.0.1:{grpc_port}")
    finally:
        server.should_exit = True
        thread.join(timeout=15)


@pytest.fixture(scope="module")
def plain(runtime: Runtime, settings: Settings) -> Iterator[Served]:
    with serve(runtime, settings) as served:
        yield served


@pytest.fixture(scope="module")
def channel(plain: Served) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(plain.target) as ch:
        yield ch


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


@pytest.fixture(scope="module")
def key_id(channel: grpc.Channel, admin_token: str) -> str:
    keys = keys_grpc.SymmetricKeyServiceStub(channel)
    op = keys.Create(
        keys_pb2.CreateSymmetricKeyRequest(
            folder_id=FOLDER, name="grpc-server", default_algorithm=AES_256
        ),
        metadata=bearer(admin_token),
        timeout=30,
    )
    assert op.done
    key = symmetric_key_pb2.SymmetricKey()
    assert op.response.Unpack(key)
    return key.id


def failure(call, *args, **kwargs) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(*args, timeout=30, **kwargs)
    return caught.value


# The status of a failed call and its details: one helper for every gRPC test.
details = status_details


# --- discovery ---


def test_discovery_answers_one_address_for_every_id(channel: grpc.Channel, plain: Served) -> None:
    stub = endpoint_grpc.ApiEndpointServiceStub(channel)
    listed = stub.List(endpoint_pb2.ListApiEndpointsRequest(), timeout=10)
    addresses = {e.id: e.address for e in listed.endpoints}
    assert set(addresses) >= {"kms", "kms-crypto", "operation", "iam", "endpoint"}
    assert set(addresses.values()) == {plain.target}
    got = stub.Get(endpoint_pb2.GetApiEndpointRequest(api_endpoint_id="kms-crypto"), timeout=10)
    assert got.address == plain.target
    error = failure(stub.Get, endpoint_pb2.GetApiEndpointRequest(api_endpoint_id="compute"))
    assert error.code() is grpc.StatusCode.NOT_FOUND


def test_discovery_answers_the_advertised_address(runtime: Runtime, settings: Settings) -> None:
    with (
        serve(runtime, settings, grpc_advertise="kms.example.internal:443") as served,
        grpc.insecure_channel(served.target) as ch,
    ):
        listed = endpoint_grpc.ApiEndpointServiceStub(ch).List(
            endpoint_pb2.ListApiEndpointsRequest(), timeout=10
        )
    assert {e.address for e in listed.endpoints} == {"kms.example.internal:443"}


# --- the SDK's services, and what a call sends back ---


def test_round_trip_with_request_id_and_worker(
    channel: grpc.Channel, admin_token: str, key_id: str
) -> None:
    crypto = crypto_grpc.SymmetricCryptoServiceStub(channel)
    sent = (*bearer(admin_token), ("x-request-id", "grpc-req-1"))
    encrypted, call = crypto.Encrypt.with_call(
        crypto_pb2.SymmetricEncryptRequest(key_id=key_id, plaintext=b"secret", aad_context=b"a"),
        metadata=sent,
        timeout=30,
    )
    trailing = dict(call.trailing_metadata())
    assert trailing["x-request-id"] == "grpc-req-1"
    assert trailing["x-kms-worker"] == str(os.getpid())
    decrypted = crypto.Decrypt(
        crypto_pb2.SymmetricDecryptRequest(
            key_id=key_id, ciphertext=encrypted.ciphertext, aad_context=b"a"
        ),
        metadata=bearer(admin_token),
        timeout=30,
    )
    assert decrypted.plaintext == b"secret"
    assert decrypted.version_id == encrypted.version_id


def test_key_and_operation_render_like_rest(
    channel: grpc.Channel, plain: Served, admin_token: str
) -> None:
    keys = keys_grpc.SymmetricKeyServiceStub(channel)
    op = keys.Create(
        keys_pb2.CreateSymmetricKeyRequest(
            folder_id=FOLDER,
            name="rendered",
            labels={"team": "infra"},
            default_algorithm=AES_256_HSM,
            rotation_period=duration_pb2.Duration(seconds=86400 * 30),
        ),
        metadata=bearer(admin_token),
        timeout=30,
    )
    metadata = keys_pb2.CreateSymmetricKeyMetadata()
    assert op.metadata.Unpack(metadata)
    key = symmetric_key_pb2.SymmetricKey()
    assert op.response.Unpack(key)
    assert metadata.key_id == key.id and metadata.primary_version_id == key.primary_version.id
    rest = httpx.get(
        f"{plain.http}/kms/v1/keys/{key.id}",
        headers={"Authorization": f"Bearer {admin_token}"},
        timeout=10,
    ).json()
    assert rest["name"] == key.name == "rendered"
    assert rest["labels"] == dict(key.labels)
    assert rest["rotationPeriod"] == f"{key.rotation_period.seconds}s"
    assert rest["primaryVersion"]["hostedByHsm"] is key.primary_version.hosted_by_hsm is True
    assert rest["createdAt"].startswith(key.created_at.ToJsonString()[:19])
    got = operation_grpc.OperationServiceStub(channel).Get(
        operation_pb2.GetOperationRequest(operation_id=op.id),
        metadata=bearer(admin_token),
        timeout=30,
    )
    assert got == op
    versions = keys.ListVersions(
        keys_pb2.ListSymmetricKeyVersionsRequest(key_id=key.id),
        metadata=bearer(admin_token),
        timeout=30,
    )
    assert [v.id for v in versions.key_versions] == [key.primary_version.id]


# --- status codes: the REST code and message, RequestInfo, BadRequest ---


def test_unauthenticated_has_request_info(channel: grpc.Channel, key_id: str) -> None:
    crypto = crypto_grpc.SymmetricCryptoServiceStub(channel)
    error = failure(
        crypto.Encrypt,
        crypto_pb2.SymmetricEncryptRequest(key_id=key_id, plaintext=b"x"),
        metadata=(("x-request-id", "grpc-unauth-1"),),
    )
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED
    status, found = details(error)
    assert status.code == 16 and status.message == error.details()
    assert found["RequestInfo"].request_id == "grpc-unauth-1"
    assert dict(error.trailing_metadata())["x-request-id"] == "grpc-unauth-1"


def test_two_authorization_entries_are_unauthenticated(
    channel: grpc.Channel, admin_token: str, key_id: str
) -> None:
    crypto = crypto_grpc.SymmetricCryptoServiceStub(channel)
    error = failure(
        crypto.Encrypt,
        crypto_pb2.SymmetricEncryptRequest(key_id=key_id, plaintext=b"x"),
        metadata=(*bearer(admin_token), *bearer(admin_token)),
    )
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED


def test_invalid_argument_names_the_field_as_rest(
    channel: grpc.Channel, plain: Served, admin_token: str, key_id: str
) -> None:
    crypto = crypto_grpc.SymmetricCryptoServiceStub(channel)
    error = failure(
        crypto.Encrypt,
        crypto_pb2.SymmetricEncryptRequest(key_id=key_id, version_id="bad/id", plaintext=b"x"),
        metadata=bearer(admin_token),
    )
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    rest = httpx.post(
        f"{plain.http}/kms/v1/keys/{key_id}:encrypt",
        json={"versionId": "bad/id", "plaintext": "eA=="},
        headers={"Authorization": f"Bearer {admin_token}"},
        timeout=10,
    ).json()
    assert error.details() == rest["message"]
    _status, found = details(error)
    violations = found["BadRequest"].field_violations
    assert [(v.field, v.description) for v in violations] == [("versionId", rest["message"])]


def test_unknown_enum_value_is_invalid_argument(channel: grpc.Channel, admin_token: str) -> None:
    keys = keys_grpc.SymmetricKeyServiceStub(channel)
    error = failure(
        keys.Create,
        keys_pb2.CreateSymmetricKeyRequest(folder_id=FOLDER, default_algorithm=42),
        metadata=bearer(admin_token),
    )
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("defaultAlgorithm: must be one of ")


def test_not_found_permission_denied_failed_precondition(
    channel: grpc.Channel, runtime: Runtime, admin_token: str, key_id: str
) -> None:
    crypto = crypto_grpc.SymmetricCryptoServiceStub(channel)
    keys = keys_grpc.SymmetricKeyServiceStub(channel)
    error = failure(
        crypto.Encrypt,
        crypto_pb2.SymmetricEncryptRequest(key_id="abjnosuchkey0000000", plaintext=b"x"),
        metadata=bearer(admin_token),
    )
    assert error.code() is grpc.StatusCode.NOT_FOUND
    # A decrypter may not encrypt: it knows the key exists, so PERMISSION_DENIED.
    principal = runtime.auth.create_principal("grpc-decrypter")
    token, _ = runtime.auth.issue_token(principal.id)
    keys.UpdateAccessBindings(
        access_pb2.UpdateAccessBindingsRequest(
            resource_id=key_id,
            access_binding_deltas=[
                access_pb2.AccessBindingDelta(
                    action=access_pb2.ADD,
                    access_binding=access_pb2.AccessBinding(
                        role_id="kms.keys.decrypter",
                        subject=access_pb2.Subject(id=principal.id, type="serviceAccount"),
                    ),
                )
            ],
        ),
        metadata=bearer(admin_token),
        timeout=30,
    )
    error = failure(
        crypto.Encrypt,
        crypto_pb2.SymmetricEncryptRequest(key_id=key_id, plaintext=b"x"),
        metadata=bearer(token),
    )
    assert error.code() is grpc.StatusCode.PERMISSION_DENIED
    # Every operation is done: Cancel says so (after the same checks as Get).
    op = keys.Rotate(
        keys_pb2.RotateSymmetricKeyRequest(key_id=key_id), metadata=bearer(admin_token), timeout=30
    )
    operations = operation_grpc.OperationServiceStub(channel)
    error = failure(
        operations.Cancel,
        operation_pb2.CancelOperationRequest(operation_id=op.id),
        metadata=bearer(admin_token),
    )
    assert error.code() is grpc.StatusCode.FAILED_PRECONDITION
    error = failure(
        operations.Cancel,
        operation_pb2.CancelOperationRequest(operation_id="abjnosuchoperation0"),
        metadata=bearer(admin_token),
    )
    assert error.code() is grpc.StatusCode.NOT_FOUND


def test_message_over_256_kib_is_resource_exhausted(
    channel: grpc.Channel, admin_token: str, key_id: str
) -> None:
    crypto = crypto_grpc.SymmetricCryptoServiceStub(channel)
    error = failure(
        crypto.Encrypt,
        crypto_pb2.SymmetricEncryptRequest(key_id=key_id, plaintext=b"x" * (257 * 1024)),
        metadata=bearer(admin_token),
    )
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    # Within the cap, the handler's own limit answers (32 KiB of plaintext), as REST.
    error = failure(
        crypto.Encrypt,
        crypto_pb2.SymmetricEncryptRequest(key_id=key_id, plaintext=b"x" * (64 * 1024)),
        metadata=bearer(admin_token),
    )
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "plaintext: must be at most 32768 bytes"


def test_metadata_over_the_head_limit_is_refused(
    channel: grpc.Channel, settings: Settings, admin_token: str, key_id: str
) -> None:
    crypto = crypto_grpc.SymmetricCryptoServiceStub(channel)
    error = failure(
        crypto.Encrypt,
        crypto_pb2.SymmetricEncryptRequest(key_id=key_id, plaintext=b"x"),
        metadata=(*bearer(admin_token), ("x-padding", "p" * settings.max_header_bytes)),
    )
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED, error
    # The connection still serves calls within the limit.
    crypto.Encrypt(
        crypto_pb2.SymmetricEncryptRequest(key_id=key_id, plaintext=b"x"),
        metadata=bearer(admin_token),
        timeout=30,
    )


# --- TLS and mutual TLS, through the official SDK's discovery ---


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _issue(subject: str, key, issuer_key, *, ca: bool, server: bool = False):
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name("kms-grpc-test-ca"))
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


def _pem_key(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("grpc-pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _issue("kms-grpc-test-ca", ca_key, ca_key, ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    client_key = ec.generate_private_key(ec.SECP256R1())
    files = {
        "ca": ca.public_bytes(serialization.Encoding.PEM),
        "cert": _issue("localhost", server_key, ca_key, ca=False, server=True).public_bytes(
            serialization.Encoding.PEM
        ),
        "key": _pem_key(server_key),
        "client_cert": _issue("client", client_key, ca_key, ca=False).public_bytes(
            serialization.Encoding.PEM
        ),
        "client_key": _pem_key(client_key),
    }
    paths = {}
    for name, data in files.items():
        path = d / f"{name}.pem"
        path.write_bytes(data)
        path.chmod(0o600)
        paths[name] = path
    return paths


def _sdk_round_trip(sdk: yandexcloud.SDK) -> None:
    op = sdk.client(keys_grpc.SymmetricKeyServiceStub).Create(
        keys_pb2.CreateSymmetricKeyRequest(folder_id=FOLDER, default_algorithm=AES_256),
        timeout=30,
    )
    key = symmetric_key_pb2.SymmetricKey()
    op.response.Unpack(key)
    crypto = sdk.client(crypto_grpc.SymmetricCryptoServiceStub)
    sealed = crypto.Encrypt(
        crypto_pb2.SymmetricEncryptRequest(key_id=key.id, plaintext=b"tls"), timeout=30
    )
    opened = crypto.Decrypt(
        crypto_pb2.SymmetricDecryptRequest(key_id=key.id, ciphertext=sealed.ciphertext),
        timeout=30,
    )
    assert opened.plaintext == b"tls"


def test_tls_with_the_sdk_and_plaintext_refused(
    runtime: Runtime, settings: Settings, admin_token: str, pki: dict[str, Path]
) -> None:
    with serve(runtime, settings, tls_cert=pki["cert"], tls_key=pki["key"]) as served:
        port = served.target.rsplit(":", 1)[1]
        endpoint = f"localhost:{port}"
        sdk = yandexcloud.SDK(
            endpoint=endpoint, iam_token=admin_token, root_certificates=pki["ca"].read_bytes()
        )
        # Discovery answers the name the client dialled (TLS SNI) with the server's port.
        with grpc.secure_channel(
            endpoint, grpc.ssl_channel_credentials(pki["ca"].read_bytes())
        ) as ch:
            listed = endpoint_grpc.ApiEndpointServiceStub(ch).List(
                endpoint_pb2.ListApiEndpointsRequest(), timeout=10
            )
        assert {e.address for e in listed.endpoints} == {endpoint}
        _sdk_round_trip(sdk)
        with grpc.insecure_channel(served.target) as ch:
            error = failure(
                endpoint_grpc.ApiEndpointServiceStub(ch).List,
                endpoint_pb2.ListApiEndpointsRequest(),
            )
        assert error.code() is grpc.StatusCode.UNAVAILABLE


def test_mutual_tls(
    runtime: Runtime, settings: Settings, admin_token: str, pki: dict[str, Path]
) -> None:
    with serve(
        runtime,
        settings,
        tls_cert=pki["cert"],
        tls_key=pki["key"],
        tls_client_ca=pki["ca"],
    ) as served:
        endpoint = f"localhost:{served.target.rsplit(':', 1)[1]}"
        ca = pki["ca"].read_bytes()
        sdk = yandexcloud.SDK(
            endpoint=endpoint,
            iam_token=admin_token,
            root_certificates=ca,
            private_key=pki["client_key"].read_bytes(),
            certificate_chain=pki["client_cert"].read_bytes(),
        )
        _sdk_round_trip(sdk)
        with grpc.secure_channel(endpoint, grpc.ssl_channel_credentials(ca)) as ch:
            error = failure(
                endpoint_grpc.ApiEndpointServiceStub(ch).List,
                endpoint_pb2.ListApiEndpointsRequest(),
            )
        assert error.code() is grpc.StatusCode.UNAVAILABLE


# --- `kms-hsm serve`: workers, a taken port, a hanging token ---


def _env(tmp_path: Path, grpc_port: int, port: int = 0, **env: str) -> dict[str, str]:
    return serve_env(tmp_path / "data", port, KMS_HSM_GRPC_PORT=str(grpc_port), **env)


def _serve(tmp_path: Path, grpc_port: int, *args: str, **env: str) -> subprocess.Popen[bytes]:
    port = free_port()
    environment = _env(tmp_path, grpc_port, port, **env)
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [KMS_HSM, "serve", *args], env=environment, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        wait_until_serving(proc, f"http://127.0.0.1:{port}")
    except BaseException:
        stop(proc)
        raise
    return proc


def _wait_grpc(target: str, timeout: float = 30) -> None:
    with grpc.insecure_channel(target) as ch:
        grpc.channel_ready_future(ch).result(timeout=timeout)


def test_two_workers_serve_grpc_on_one_port(tmp_path: Path) -> None:
    grpc_port = free_port()
    proc = _serve(tmp_path, grpc_port, "--workers", "2")
    target = f"127.0.0.1:{grpc_port}"
    try:
        _wait_grpc(target)
        workers = set()
        deadline = time.monotonic() + 60
        # Each new channel is a new connection, which the kernel gives to either worker.
        while len(workers) < 2 and time.monotonic() < deadline:
            with grpc.insecure_channel(target) as ch:
                error = failure(
                    crypto_grpc.SymmetricCryptoServiceStub(ch).Encrypt,
                    crypto_pb2.SymmetricEncryptRequest(key_id="abjnokey", plaintext=b"x"),
                )
            assert error.code() is grpc.StatusCode.UNAUTHENTICATED
            workers.add(dict(error.trailing_metadata())["x-kms-worker"])
        assert len(workers) == 2, workers
        assert (tmp_path / "serve.log").read_text().count("serving gRPC on") == 2
        # Over its failed-authentication budget a source gets RESOURCE_EXHAUSTED, with
        # when to retry (the service's own limit, not gRPC's: same path as REST's 429).
        with grpc.insecure_channel(target) as ch:
            encrypt = crypto_grpc.SymmetricCryptoServiceStub(ch).Encrypt
            request = crypto_pb2.SymmetricEncryptRequest(key_id="abjnokey", plaintext=b"x")
            for _ in range(50):
                error = failure(encrypt, request, metadata=bearer("kmsh1_forged"))
                if error.code() is not grpc.StatusCode.UNAUTHENTICATED:
                    break
        assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        retry_after = int(dict(error.trailing_metadata())["retry-after"])
        _status, found = details(error)
        assert found["RetryInfo"].retry_delay.seconds == retry_after > 0
    finally:
        stop(proc)


def test_taken_grpc_port_stops_serve_with_a_clear_message(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        result = subprocess.run(
            [KMS_HSM, "serve"],
            env=serve_env(tmp_path / "data", free_port(), KMS_HSM_GRPC_PORT=str(taken)),
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode != 0
    assert f"gRPC port {taken}" in result.stderr + result.stdout


def test_deadline_on_a_hanging_token_and_cancelled_call_audited(
    tmp_path: Path, fault_shim: Path
) -> None:
    init_token(tmp_path / "token")
    grpc_port = free_port()
    fault = tmp_path / "fault"
    audit = tmp_path / "audit.jsonl"
    env = {
        "KMS_HSM_PKCS11_LIBRARY": str(fault_shim),
        "KMS_HSM_FAULT_REAL_MODULE": SOFTHSM_MODULE,
        "KMS_HSM_FAULT_FILE": str(fault),
        "KMS_HSM_PIN_FILE": str(tmp_path / "token" / "user-pin"),
        "KMS_HSM_CALL_TIMEOUT": "3",
        "KMS_HSM_AUDIT_LOG_FILE": str(audit),
        "SOFTHSM2_CONF": str(tmp_path / "token" / "softhsm2.conf"),
    }
    proc = _serve(tmp_path, grpc_port, **env)
    token = (tmp_path / "data" / "admin-token").read_text().strip()
    target = f"127.0.0.1:{grpc_port}"
    try:
        _wait_grpc(target)
        with grpc.insecure_channel(target) as ch:
            keys = keys_grpc.SymmetricKeyServiceStub(ch)
            crypto = crypto_grpc.SymmetricCryptoServiceStub(ch)
            op = keys.Create(
                keys_pb2.CreateSymmetricKeyRequest(folder_id=FOLDER, default_algorithm=AES_256_HSM),
                metadata=bearer(token),
                timeout=30,
            )
            key = symmetric_key_pb2.SymmetricKey()
            op.response.Unpack(key)
            request = crypto_pb2.SymmetricEncryptRequest(key_id=key.id, plaintext=b"x")
            crypto.Encrypt(request, metadata=bearer(token), timeout=30)
            fault.write_text("hang")
            try:
                started = time.monotonic()
                with pytest.raises(grpc.RpcError) as caught:
                    crypto.Encrypt(
                        request, metadata=(*bearer(token), ("x-request-id", "hung-1")), timeout=1
                    )
                elapsed = time.monotonic() - started
                assert caught.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
                assert elapsed < 2.0, elapsed
            finally:
                fault.unlink()
            # The agent stuck in the token is replaced; the service answers again.
            deadline = time.monotonic() + 30
            while True:
                try:
                    crypto.Encrypt(request, metadata=bearer(token), timeout=10)
                    break
                except grpc.RpcError as exc:
                    if time.monotonic() > deadline:
                        raise
                    assert exc.code() is grpc.StatusCode.UNAVAILABLE, exc
                    time.sleep(0.2)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            events = [json.loads(line) for line in audit.read_text().splitlines() if line]
            hung = [e for e in events if e.get("request_id") == "hung-1"]
            if hung:
                break
            time.sleep(0.2)
        assert [(e["method"], e["outcome"], e.get("transport")) for e in hung] == [
            ("SymmetricCrypto.Encrypt", "CANCELLED", "grpc")
        ]
    finally:
        with contextlib.suppress(FileNotFoundError):
            fault.unlink()
        stop(proc)
    # The chain, cancelled event included, verifies.
    verified = subprocess.run(
        [KMS_HSM, "audit", "verify"],
        env=_env(tmp_path, grpc_port, **env),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert verified.returncode == 0, verified.stderr


def test_grpc_port_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("KMS_HSM_"):
            monkeypatch.delenv(name)
    embedded = Settings()
    assert embedded.grpc_serving_port == 50051
    assert Settings(grpc_port="off").grpc_serving_port is None
    assert Settings(grpc_port="OFF", pin_file=Path("/nonexistent")).grpc_serving_port is None
    assert Settings(pin_file=Path("/nonexistent")).grpc_serving_port is None
    assert Settings(pin_file=Path("/nonexistent"), grpc_port="50061").grpc_serving_port == 50061
    with pytest.raises(ValueError):
        Settings(grpc_port="of")
