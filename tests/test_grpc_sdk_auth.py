"""Issue 16 acceptance: the official SDK's own credentials through IamTokenService.

`SDK(token=KMS_HSM_TOKEN)` exchanges a kms-hsm bearer token (as `yandex_passport_oauth_token`)
and `SDK(service_account_key=...)` a PS256 JWT signed with a key from `kms-hsm principals
keys create`; the SDK then calls with the IAM token it got. Forged, foreign or revoked
credentials are refused, and nothing secret reaches a log. One `kms-hsm serve` (TLS) for
the module.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
import time
import uuid
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
import yandexcloud
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from yandex.cloud.access import access_pb2
from yandex.cloud.iam.v1 import iam_token_service_pb2
from yandex.cloud.iam.v1.iam_token_service_pb2_grpc import IamTokenServiceStub
from yandex.cloud.kms.v1 import symmetric_crypto_service_pb2 as crypto_pb2
from yandex.cloud.kms.v1 import symmetric_key_pb2
from yandex.cloud.kms.v1 import symmetric_key_service_pb2 as keys_pb2
from yandex.cloud.kms.v1.symmetric_crypto_service_pb2_grpc import SymmetricCryptoServiceStub
from yandex.cloud.kms.v1.symmetric_key_service_pb2_grpc import SymmetricKeyServiceStub
from yandexcloud import _auth_plugin

from tests.grpc_support import KmsServer, rpc_error, server_fixture

FOLDER = "b1gsdkauth"
# The audience the Go SDK and the auto-unseal seal put in their JWTs, whatever the endpoint
# (the Python SDK writes https://iam.<its endpoint>/iam/v1/tokens instead).
YANDEX_AUDIENCE = "https://iam.api.cloud.yandex.net/iam/v1/tokens"

server = server_fixture()
# Every secret the module handed to or got from the server, for the log check at the end.
SECRETS: list[str] = []


@pytest.fixture(scope="module")
def key_id(server: KmsServer) -> str:
    """An HSM key in the module's folder, made by the admin."""
    op = (
        server.sdk()
        .client(SymmetricKeyServiceStub)
        .Create(
            keys_pb2.CreateSymmetricKeyRequest(
                folder_id=FOLDER, default_algorithm=symmetric_key_pb2.AES_256_HSM
            ),
            timeout=30,
        )
    )
    key = symmetric_key_pb2.SymmetricKey()
    assert op.response.Unpack(key)
    SECRETS.append(server.admin_token)
    return key.id


@pytest.fixture(scope="module")
def robot(server: KmsServer) -> str:
    """A principal allowed to encrypt and decrypt with every key of the folder."""
    principal_id = server.cli("principals", "create", "sdk-auth-robot").stdout.strip()
    server.cli(
        "bindings",
        "add",
        "--folder",
        FOLDER,
        "--role",
        "kms.keys.encrypterDecrypter",
        "--subject",
        principal_id,
    )
    return principal_id


def issue_token(server: KmsServer, principal_id: str, *extra: str) -> tuple[str, str]:
    """A bearer token for ``principal_id`` from the CLI: (token, token id)."""
    issued = server.cli("tokens", "create", principal_id, *extra)
    token_id = issued.stderr.split("token id ", 1)[1].split(";", 1)[0].strip()
    token = issued.stdout.strip()
    SECRETS.append(token)
    return token, token_id


def create_key_file(server: KmsServer, principal_id: str, path: Path) -> dict[str, str]:
    """`kms-hsm principals keys create PRINCIPAL --output FILE`, read back as the SDK would."""
    server.cli("principals", "keys", "create", principal_id, "--output", str(path))
    sa_key: dict[str, str] = json.loads(path.read_text())
    SECRETS.append(sa_key["private_key"])
    return sa_key


def encrypt(
    sdk: yandexcloud.SDK, key_id: str, request_id: str | None = None, timeout: float = 30
) -> Any:
    """One Encrypt through the SDK (discovery, its credentials), naming the request."""
    metadata = (("x-request-id", request_id),) if request_id else None
    return sdk.client(SymmetricCryptoServiceStub).Encrypt(
        crypto_pb2.SymmetricEncryptRequest(key_id=key_id, plaintext=b"sdk-auth"),
        metadata=metadata,
        timeout=timeout,
    )


def exchange(server: KmsServer, **credential: str) -> iam_token_service_pb2.CreateIamTokenResponse:
    """IamTokenService.Create through the SDK's routing (the SDK sends it no credentials)."""
    iam = server.sdk(iam_token="unused").client(IamTokenServiceStub)
    answer = iam.Create(iam_token_service_pb2.CreateIamTokenRequest(**credential), timeout=30)
    SECRETS.append(answer.iam_token)
    return answer


def assert_exchange_refused(error: grpc.RpcError) -> None:
    """The SDK's call failed because IamTokenService answered UNAUTHENTICATED.

    The SDK exchanges inside a gRPC call-credentials plugin; grpcio reports any plugin
    failure as UNAVAILABLE "Getting metadata from plugin failed", quoting the status.
    """
    if error.code() is grpc.StatusCode.UNAUTHENTICATED:
        return
    assert error.code() is grpc.StatusCode.UNAVAILABLE, (error.code(), error.details())
    assert "Getting metadata from plugin failed" in error.details()
    assert "StatusCode.UNAUTHENTICATED" in error.details(), error.details()


def audit_events(server: KmsServer, request_id: str) -> list[dict[str, Any]]:
    """The audit events of one request, from the JSON-lines file (written in batches)."""
    deadline = time.monotonic() + 10
    while True:
        lines = server.audit_log.read_text().splitlines() if server.audit_log.exists() else []
        events = [json.loads(line) for line in lines if line]
        found = [e for e in events if e.get("request_id") == request_id]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def assert_audited_as(server: KmsServer, request_id: str, principal_id: str) -> None:
    events = audit_events(server, request_id)
    assert [(e["method"], e["outcome"], e["principal_id"], e.get("transport")) for e in events] == [
        ("SymmetricCrypto.Encrypt", "OK", principal_id, "grpc")
    ]


def another_rsa_key_pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def signed_jwt(sa_key: dict[str, str], audience: str, *, private_key: str | None = None) -> str:
    """A JWT as the Yandex SDKs make it: PS256, ``kid`` = key id, ``iss`` = principal."""
    now = int(time.time())
    token = jwt.encode(
        {"iss": sa_key["service_account_id"], "aud": audience, "iat": now, "exp": now + 3600},
        private_key or sa_key["private_key"],
        algorithm="PS256",
        headers={"kid": sa_key["id"]},
    )
    SECRETS.append(token)
    return token


# --- SDK(token=KMS_HSM_TOKEN) ---


def test_sdk_with_a_kms_hsm_token(server: KmsServer, key_id: str, robot: str) -> None:
    token, _ = issue_token(server, robot)
    sdk = server.sdk(token=token)
    request_id = f"sdk-oauth-{uuid.uuid4()}"
    sealed = encrypt(sdk, key_id, request_id)
    assert sealed.key_id == key_id
    # The SDK called with the IAM token it got, which names the token's principal.
    assert_audited_as(server, request_id, robot)
    opened = sdk.client(SymmetricCryptoServiceStub).Decrypt(
        crypto_pb2.SymmetricDecryptRequest(key_id=key_id, ciphertext=sealed.ciphertext),
        timeout=30,
    )
    assert opened.plaintext == b"sdk-auth"
    # A source token that never expires gives the default lifetime (KMS_HSM_IAM_TOKEN_TTL
    # unset: 12 h).
    before = time.time()
    answer = exchange(server, yandex_passport_oauth_token=token)
    assert before + 12 * 3600 - 5 <= answer.expires_at.seconds <= time.time() + 12 * 3600 + 5


def test_exchanged_token_never_outlives_its_source(server: KmsServer, robot: str) -> None:
    token, _ = issue_token(server, robot, "--expires-in", "600")
    before = time.time()
    answer = exchange(server, yandex_passport_oauth_token=token)
    assert answer.iam_token and answer.iam_token != token
    assert before < answer.expires_at.seconds <= before + 600 + 2


def test_forged_kms_hsm_token_is_unauthenticated(server: KmsServer, key_id: str) -> None:
    forged = "kmsh1_" + secrets.token_urlsafe(32)
    with pytest.raises(grpc.RpcError) as caught:
        exchange(server, yandex_passport_oauth_token=forged)
    assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED
    sdk = server.sdk(token=forged)
    assert_exchange_refused(rpc_error(encrypt, sdk, key_id))


def test_revoking_the_source_token_ends_the_sdks_session(
    server: KmsServer, key_id: str, robot: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    token, token_id = issue_token(server, robot)
    sdk = server.sdk(token=token)
    encrypt(sdk, key_id)
    earlier = exchange(server, yandex_passport_oauth_token=token).iam_token
    server.cli("tokens", "revoke", token_id)
    # Within the SDK's 20 s cache it still sends the IAM token it got: revoked with its source.
    error = rpc_error(encrypt, sdk, key_id)
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED, error
    error = rpc_error(encrypt, server.sdk(iam_token=earlier), key_id)
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED
    # Past the cache (made 0 instead of waiting 20 s), the SDK's next exchange is refused.
    monkeypatch.setattr(_auth_plugin, "TIMEOUT_SECONDS", 0)
    assert_exchange_refused(rpc_error(encrypt, sdk, key_id))
    assert_exchange_refused(rpc_error(encrypt, server.sdk(token=token), key_id))


# --- SDK(service_account_key=...) from `kms-hsm principals keys create` ---


def test_key_file_is_the_yandex_cli_format(server: KmsServer, robot: str, tmp_path: Path) -> None:
    path = tmp_path / "sa-key.json"
    sa_key = create_key_file(server, robot, path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert set(sa_key) >= {
        "id",
        "service_account_id",
        "created_at",
        "key_algorithm",
        "public_key",
        "private_key",
    }
    assert sa_key["service_account_id"] == robot
    # The SDK's own check (the Yandex CLI puts a "PLEASE DO NOT REMOVE THIS LINE!" line first).
    assert "-----BEGIN PRIVATE KEY-----" in sa_key["private_key"]
    assert sa_key["public_key"].lstrip().startswith("-----BEGIN PUBLIC KEY-----")
    # Only the public half is kept: no line of the private key's body is in the database.
    stored = b"".join(
        p.read_bytes() for p in server.data_dir.iterdir() if p.name.startswith("kms.db")
    )
    body = [line for line in sa_key["private_key"].splitlines() if "-----" not in line]
    assert all(line.encode() not in stored for line in body)


def test_sdk_with_a_service_account_key(
    server: KmsServer, key_id: str, robot: str, tmp_path: Path
) -> None:
    path = tmp_path / "sa-key.json"
    create_key_file(server, robot, path)
    with path.open() as f:
        sdk = server.sdk(service_account_key=json.load(f))
    request_id = f"sdk-jwt-{uuid.uuid4()}"
    assert encrypt(sdk, key_id, request_id).key_id == key_id
    assert_audited_as(server, request_id, robot)


def test_jwt_with_the_go_sdks_audience(
    server: KmsServer, key_id: str, robot: str, tmp_path: Path
) -> None:
    sa_key = create_key_file(server, robot, tmp_path / "sa-key.json")
    answer = exchange(server, jwt=signed_jwt(sa_key, YANDEX_AUDIENCE))
    request_id = f"sdk-go-aud-{uuid.uuid4()}"
    encrypt(server.sdk(iam_token=answer.iam_token), key_id, request_id)
    assert_audited_as(server, request_id, robot)


def test_key_file_with_another_private_key_is_unauthenticated(
    server: KmsServer, key_id: str, robot: str, tmp_path: Path
) -> None:
    sa_key = create_key_file(server, robot, tmp_path / "sa-key.json")
    forged = dict(sa_key, private_key=another_rsa_key_pem())
    assert_exchange_refused(rpc_error(encrypt, server.sdk(service_account_key=forged), key_id))
    with pytest.raises(grpc.RpcError) as caught:
        exchange(server, jwt=signed_jwt(forged, YANDEX_AUDIENCE))
    assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED
    # A key id nobody issued, and a principal that is not the key's, are refused too.
    for changed in ({"id": "ajenosuchkey0000000"}, {"service_account_id": "ajeother00000"}):
        with pytest.raises(grpc.RpcError) as caught:
            exchange(server, jwt=signed_jwt(dict(sa_key, **changed), YANDEX_AUDIENCE))
        assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED, changed


def test_revoked_key_is_unauthenticated(
    server: KmsServer, key_id: str, robot: str, tmp_path: Path
) -> None:
    sa_key = create_key_file(server, robot, tmp_path / "sa-key.json")
    encrypt(server.sdk(service_account_key=sa_key), key_id)
    assert sa_key["id"] in server.cli("principals", "keys", "list", robot).stdout
    server.cli("principals", "keys", "revoke", sa_key["id"])
    assert_exchange_refused(rpc_error(encrypt, server.sdk(service_account_key=sa_key), key_id))


def test_revoking_the_principal_ends_every_credential_of_it(
    server: KmsServer, key_id: str, tmp_path: Path
) -> None:
    principal_id = server.cli("principals", "create", "sdk-auth-doomed").stdout.strip()
    server.sdk().client(SymmetricKeyServiceStub).UpdateAccessBindings(
        access_pb2.UpdateAccessBindingsRequest(
            resource_id=key_id,
            access_binding_deltas=[
                access_pb2.AccessBindingDelta(
                    action=access_pb2.ADD,
                    access_binding=access_pb2.AccessBinding(
                        role_id="kms.keys.encrypter",
                        subject=access_pb2.Subject(id=principal_id, type="serviceAccount"),
                    ),
                )
            ],
        ),
        timeout=30,
    )
    token, _ = issue_token(server, principal_id)
    sa_key = create_key_file(server, principal_id, tmp_path / "sa-key.json")
    by_token = server.sdk(token=token)
    by_key = server.sdk(service_account_key=sa_key)
    encrypt(by_token, key_id)
    encrypt(by_key, key_id)
    server.cli("principals", "revoke", principal_id)
    # The IAM tokens both SDKs hold (within their 20 s cache) die with the principal...
    for sdk in (by_token, by_key):
        error = rpc_error(encrypt, sdk, key_id)
        assert error.code() is grpc.StatusCode.UNAUTHENTICATED, error
    # ... and neither credential exchanges again.
    with pytest.raises(grpc.RpcError) as caught:
        exchange(server, yandex_passport_oauth_token=token)
    assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as caught:
        exchange(server, jwt=signed_jwt(sa_key, YANDEX_AUDIENCE))
    assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED


def _jwt_variants(sa_key: dict[str, str]) -> dict[str, str]:
    """JWTs that break one rule of the exchange each (the key itself is the right one)."""
    now = int(time.time())
    claims = {"iss": sa_key["service_account_id"], "aud": YANDEX_AUDIENCE, "iat": now}
    private_key = sa_key["private_key"]
    kid = {"kid": sa_key["id"]}

    def sign(payload: dict[str, Any], algorithm: str = "PS256", **headers: Any) -> str:
        token = jwt.encode(payload, private_key, algorithm=algorithm, headers=headers or kid)
        SECRETS.append(token)
        return token

    return {
        "expires over an hour ahead": sign(claims | {"exp": now + 2 * 3600}),
        "expired": sign(claims | {"iat": now - 7200, "exp": now - 3600}),
        "no exp": sign(claims),
        "another audience": sign(claims | {"aud": "https://example.com/tokens", "exp": now + 600}),
        "RS256, not PS256": sign(claims | {"exp": now + 600}, "RS256"),
        "no kid": sign(claims | {"exp": now + 600}, typ="JWT"),
        "no iss": sign({"aud": YANDEX_AUDIENCE, "iat": now, "exp": now + 600}),
        "not a JWT": "not.a.jwt",
    }


def test_jwts_breaking_a_rule_are_unauthenticated(
    server: KmsServer, robot: str, tmp_path: Path
) -> None:
    sa_key = create_key_file(server, robot, tmp_path / "sa-key.json")
    # The same key signs a good one: what is refused below is the rule each breaks.
    good = exchange(server, jwt=signed_jwt(sa_key, YANDEX_AUDIENCE))
    assert good.iam_token
    for name, token in _jwt_variants(sa_key).items():
        with pytest.raises(grpc.RpcError) as caught:
            exchange(server, jwt=token)
        assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED, name


def test_exchange_needs_exactly_one_credential(server: KmsServer) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        exchange(server)
    assert caught.value.code() in (
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.UNAUTHENTICATED,
    ), caught.value


# --- the same exchange over REST, and no secret in any log ---


def test_rest_exchange_gives_a_token_grpc_accepts(
    server: KmsServer, key_id: str, robot: str
) -> None:
    token, _ = issue_token(server, robot)
    with server.rest() as rest:
        r = rest.post("/iam/v1/tokens", json={"yandexPassportOauthToken": token})
        assert r.status_code == 200, r.text
        iam_token = r.json()["iamToken"]
        SECRETS.append(iam_token)
        refused = rest.post("/iam/v1/tokens", json={"yandexPassportOauthToken": "kmsh1_nope"})
        assert refused.status_code == 401 and refused.json()["code"] == 16
    request_id = f"sdk-rest-iam-{uuid.uuid4()}"
    encrypt(server.sdk(iam_token=iam_token), key_id, request_id)
    assert_audited_as(server, request_id, robot)


def test_no_secret_in_any_log(server: KmsServer) -> None:
    """Last in the module (pytest keeps file order): no token, JWT or private key it used is
    in the server's output or audit log."""
    assert SECRETS, "the module's other tests did not run"
    server.stop()
    written = server.written()
    for secret in SECRETS:
        body = secret.split("_", 1)[-1]
        for part in (secret, body, *secret.splitlines()):
            if "-----" not in part and len(part) >= 16:
                assert part not in written
