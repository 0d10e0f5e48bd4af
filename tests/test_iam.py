"""IamTokenService.Create over REST (issue 16 point 1): exchanges, revocation, forgeries.

A runtime of its own (short IAM token TTL, small failure budget, a clock the tests move)
on a real SoftHSM2 token, served by uvicorn. Each test that is refused sends from its own
loopback address, so that the per-source failure budgets of the tests stay apart.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import count
from pathlib import Path
from typing import Any

import grpc
import httpx
import jwt
import pytest
from anyio.from_thread import BlockingPortal
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from yandex.cloud.iam.v1 import iam_token_service_pb2 as iam_pb2
from yandex.cloud.iam.v1 import iam_token_service_pb2_grpc as iam_grpc
from yandex.cloud.kms.v1 import symmetric_key_service_pb2 as keys_pb2
from yandex.cloud.kms.v1 import symmetric_key_service_pb2_grpc as keys_grpc
from yandexcloud._auth_fabric import ServiceAccountAuth

from kms_hsm.config import Settings
from kms_hsm.domain.iam_token import BadIamToken, IamTokenClaims
from kms_hsm.grpc.server import serving
from kms_hsm.service.auth import AuthService
from kms_hsm.service.runtime import Runtime, prepare
from kms_hsm.store.engine import Database, make_engine, upgrade_schema
from tests.conftest import SteppingClock, free_port, serve_inprocess

VECTORS = Path(__file__).parent / "vectors" / "iam_token_v1.json"
TTL = 600
LIMIT = 4
FOLDER = "b1giamtests"
YANDEX_AUD = "https://iam.api.cloud.yandex.net/iam/v1/tokens"
_sources = count(20)


@dataclass
class Service:
    rt: Runtime
    url: str
    clock: SteppingClock


@pytest.fixture(scope="module")
def service(token_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """kms-hsm with a 10-minute IAM token TTL, over real HTTP."""
    data = tmp_path_factory.mktemp("iam")
    config = Settings(
        data_dir=data,
        pin_file=token_dir / "user-pin",
        database_url=f"sqlite:///{data / 'iam.db'}",
        scheduler_interval=0,
        iam_token_ttl=TTL,
        auth_failure_limit=LIMIT,
        auth_failure_window=60,
    )
    prepare(config)
    clock = SteppingClock()
    runtime = Runtime.start(config, clock)
    try:
        with serve_inprocess(runtime) as url:
            yield Service(runtime, url, clock)
    finally:
        runtime.close()


def _client(service: Service, source: str | None = None) -> httpx.Client:
    source = source or f"127.0.0.{next(_sources)}"
    transport = httpx.HTTPTransport(local_address=source)
    return httpx.Client(base_url=service.url, timeout=30, transport=transport)


def _exchange(client: httpx.Client, **body: str) -> httpx.Response:
    return client.post("/iam/v1/tokens", json=body)


def _whoami(client: httpx.Client, bearer: str) -> int:
    """401 when the bearer is refused; 200/403 once it authenticates (roles aside)."""
    headers = {"Authorization": f"Bearer {bearer}"}
    return client.get("/kms/v1/keys", params={"folderId": FOLDER}, headers=headers).status_code


@dataclass
class Account:
    principal_id: str
    token: str
    token_id: str
    key_id: str
    private_pem: str


def _rsa() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _pem(key: rsa.RSAPrivateKey) -> tuple[str, str]:
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private, public


def _account(service: Service, token_expires: datetime | None = None) -> Account:
    auth = service.rt.auth
    principal = auth.create_principal("iam-test")
    token, token_id = auth.issue_token(principal.id, token_expires)
    private, public = _pem(_rsa())
    key = auth.create_authorized_key(principal.id, public)
    return Account(principal.id, token, token_id, key.id, private)


def _sdk_jwt(account: Account, endpoint: str | None = None) -> str:
    """The JWT exactly as yandexcloud 0.413 builds it for SDK(service_account_key=...)."""
    sa_key = {
        "id": account.key_id,
        "service_account_id": account.principal_id,
        "private_key": account.private_pem,
    }
    return str(ServiceAccountAuth(sa_key, endpoint).get_token_request().jwt)


def _claims(account: Account, **override: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": account.principal_id,
        "aud": YANDEX_AUD,
        "iat": now,
        "exp": now + 3600,
    }
    claims.update(override)
    return claims


# ----------------------------------------------------------------------- token format


def test_vectors_parse_and_serialize() -> None:
    vectors = json.loads(VECTORS.read_text())
    key = bytes.fromhex(vectors["key_hex"])
    for v in vectors["valid"]:
        claims = IamTokenClaims(
            v["principal_id"], v["source_kind"], v["source_id"], v["expires_at"]
        )
        assert claims.payload().hex() == v["payload_hex"]
        assert claims.serialize(key) == v["token"]
        assert IamTokenClaims.parse(v["token"], key) == claims
    for v in vectors["invalid"]:
        with pytest.raises(BadIamToken):
            IamTokenClaims.parse(v["token"], key)


@pytest.mark.parametrize(
    "payload",
    [
        b"\x02" + bytes(8) + b"\x01\x01a\x01b",  # unknown version
        b"\x01" + bytes(8) + b"\x03\x01a\x01b",  # unknown kind
        b"\x01" + bytes(8) + b"\x01\x01a\x01bX",  # trailing byte
        b"\x01" + bytes(8) + b"\x01\x01a\x05b",  # length past the end
        b"\x01" + bytes(8) + b"\x01\x00\x01b",  # empty principal
        b"\x01" + bytes(8),  # too short
    ],
)
def test_well_maced_but_malformed_payloads_are_refused(payload: bytes) -> None:
    key = b"k" * 32
    b64 = base64.urlsafe_b64encode
    tag = hmac.new(key, payload, hashlib.sha256).digest()
    token = "kmsh1i_" + b64(payload).rstrip(b"=").decode() + "." + b64(tag).rstrip(b"=").decode()
    with pytest.raises(BadIamToken):
        IamTokenClaims.parse(token, key)


# ------------------------------------------------------------------------- exchanges


def test_bearer_token_exchange_gives_a_working_iam_token(service: Service) -> None:
    account = _account(service)
    with _client(service) as client:
        answer = _exchange(client, yandexPassportOauthToken=account.token)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert set(body) == {"iamToken", "expiresAt"}
        assert body["iamToken"].startswith("kmsh1i_")
        expires = datetime.fromisoformat(body["expiresAt"].replace("Z", "+00:00"))
        assert abs((expires - service.clock()).total_seconds() - TTL) < 5
        assert _whoami(client, body["iamToken"]) == 403  # authenticated; no role here
        assert _whoami(client, body["iamToken"] + "x") == 401
    events = [e.event for e in service.rt.audit.events()]
    created = [e for e in events if e.method == "IamToken.Create" and e.outcome == "OK"]
    assert created[-1].principal_id == account.principal_id


def test_iam_token_lifetime_is_capped_by_its_source_token(service: Service) -> None:
    short = service.clock() + timedelta(seconds=30)
    account = _account(service, token_expires=short)
    with _client(service) as client:
        body = _exchange(client, yandexPassportOauthToken=account.token).json()
    expires = datetime.fromisoformat(body["expiresAt"].replace("Z", "+00:00"))
    assert expires <= short


def test_an_iam_token_cannot_be_exchanged_again(service: Service) -> None:
    account = _account(service)
    with _client(service) as client:
        iam = _exchange(client, yandexPassportOauthToken=account.token).json()["iamToken"]
        assert _exchange(client, yandexPassportOauthToken=iam).status_code == 401


@pytest.mark.parametrize("endpoint", [None, "127.0.0.1:50051"])
def test_the_sdks_own_jwt_is_exchanged(service: Service, endpoint: str | None) -> None:
    account = _account(service)
    with _client(service) as client:
        answer = _exchange(client, jwt=_sdk_jwt(account, endpoint))
        assert answer.status_code == 200, answer.text
        assert _whoami(client, answer.json()["iamToken"]) == 403


@pytest.mark.parametrize(
    "body",
    [{}, {"jwt": "a", "yandexPassportOauthToken": "b"}, {"other": "x"}, {"jwt": 5}],
)
def test_exactly_one_credential_is_required(service: Service, body: dict[str, Any]) -> None:
    with _client(service) as client:
        assert client.post("/iam/v1/tokens", json=body).status_code == 400


# ----------------------------------------------------------------------- revocation


def test_revoking_the_source_token_revokes_the_iam_token(service: Service) -> None:
    account = _account(service)
    with _client(service) as client:
        iam = _exchange(client, yandexPassportOauthToken=account.token).json()["iamToken"]
        assert _whoami(client, iam) == 403
        service.rt.auth.revoke_token(account.token_id)
        assert _whoami(client, iam) == 401


def test_revoking_the_key_revokes_its_iam_tokens_and_the_key(service: Service) -> None:
    account = _account(service)
    with _client(service) as client:
        iam = _exchange(client, jwt=_sdk_jwt(account)).json()["iamToken"]
        assert _whoami(client, iam) == 403
        service.rt.auth.revoke_authorized_key(account.key_id)
        assert _whoami(client, iam) == 401
        assert _exchange(client, jwt=_sdk_jwt(account)).status_code == 401


def test_revoking_the_principal_revokes_both_kinds(service: Service) -> None:
    account = _account(service)
    with _client(service) as client:
        by_token = _exchange(client, yandexPassportOauthToken=account.token).json()["iamToken"]
        by_key = _exchange(client, jwt=_sdk_jwt(account)).json()["iamToken"]
        service.rt.auth.revoke_principal(account.principal_id)
        assert _whoami(client, by_token) == 401
        assert _whoami(client, by_key) == 401
        assert _exchange(client, jwt=_sdk_jwt(account)).status_code == 401


def test_iam_tokens_expire(service: Service) -> None:
    account = _account(service)
    with _client(service) as client:
        iam = _exchange(client, yandexPassportOauthToken=account.token).json()["iamToken"]
        assert _whoami(client, iam) == 403
        service.clock.advance(timedelta(seconds=TTL + 1))
        assert _whoami(client, iam) == 401
        assert _whoami(client, account.token) == 403  # the source itself lives on


# ------------------------------------------------------------------------- forgeries


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _hs256_with_public_key(account: Account, public_pem: str) -> str:
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": account.key_id}).encode())
    body = _b64(json.dumps(_claims(account)).encode())
    mac = hmac.new(public_pem.encode(), f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{_b64(mac)}"


def _forgeries(service: Service, account: Account) -> dict[str, str]:
    kid = {"kid": account.key_id}
    other = _account(service)
    public = service.rt.auth.authorized_key(account.key_id)[1]  # the stored public half
    return {
        "wrong key": jwt.encode(_claims(account), _pem(_rsa())[0], "PS256", headers=kid),
        "alg none": jwt.encode(_claims(account), None, "none", headers=kid),
        "HS256 keyed with the public key": _hs256_with_public_key(account, public),
        "RS256": jwt.encode(_claims(account), account.private_pem, "RS256", headers=kid),
        "exp too far": jwt.encode(
            _claims(account, exp=int(time.time()) + 7200), account.private_pem, "PS256", headers=kid
        ),
        "expired": jwt.encode(
            _claims(account, iat=int(time.time()) - 7200, exp=int(time.time()) - 3700),
            account.private_pem,
            "PS256",
            headers=kid,
        ),
        "iat in the future": jwt.encode(
            _claims(account, iat=int(time.time()) + 900), account.private_pem, "PS256", headers=kid
        ),
        "wrong aud": jwt.encode(
            _claims(account, aud="https://example.com/iam/v1/tokens"),
            account.private_pem,
            "PS256",
            headers=kid,
        ),
        "unknown kid": jwt.encode(
            _claims(account), account.private_pem, "PS256", headers={"kid": "ajknosuchkey00000000"}
        ),
        "iss of another principal": jwt.encode(
            _claims(account, iss=other.principal_id), account.private_pem, "PS256", headers=kid
        ),
        "another principal's key": jwt.encode(
            _claims(account), other.private_pem, "PS256", headers={"kid": other.key_id}
        ),
        "not a JWT": "kmsh1_notajwt",
    }


def test_forged_jwts_are_all_refused_alike(service: Service) -> None:
    account = _account(service)
    answers = {}
    for name, token in _forgeries(service, account).items():
        # A source of its own each: the budget is tested below.
        with _client(service) as client:
            answer = _exchange(client, jwt=token)
        answers[name] = (answer.status_code, answer.json().get("message"))
    assert len(set(answers.values())) == 1, answers
    assert next(iter(answers.values()))[0] == 401
    with _client(service) as client:  # the genuine one still works
        assert (
            _exchange(
                client,
                jwt=jwt.encode(
                    _claims(account), account.private_pem, "PS256", headers={"kid": account.key_id}
                ),
            ).status_code
            == 200
        )


def test_failed_exchanges_and_forged_iam_tokens_spend_the_failure_budget(service: Service) -> None:
    account = _account(service)
    with _client(service) as client:
        iam = _exchange(client, yandexPassportOauthToken=account.token).json()["iamToken"]
        forged = _forgeries(service, account)
        statuses = [_exchange(client, jwt=forged["wrong key"]).status_code for _ in range(LIMIT)]
        assert statuses == [401] * LIMIT
        assert _exchange(client, jwt=forged["alg none"]).status_code == 429
        assert _whoami(client, iam[:-3] + "AAA") == 429
        # A valid credential still works over the budget.
        assert _whoami(client, iam) == 403
        assert _exchange(client, yandexPassportOauthToken=account.token).status_code == 200


def test_no_credential_reaches_the_audit_trail(service: Service) -> None:
    account = _account(service)
    with _client(service) as client:
        iam = _exchange(client, yandexPassportOauthToken=account.token).json()["iamToken"]
        signed = _sdk_jwt(account)
        _exchange(client, jwt=signed)
    dump = json.dumps([str(e.event) for e in service.rt.audit.events()])
    for secret in (account.token, iam, signed, iam.split(".")[1]):
        assert secret not in dump


# ------------------------------------------------------------------------- PostgreSQL


@pytest.mark.postgres
def test_authorized_keys_on_postgresql(postgres_url: str) -> None:
    engine = make_engine(postgres_url)
    try:
        upgrade_schema(engine)
        auth = AuthService(Database(engine))
        principal = auth.create_principal("pg")
        key = auth.create_authorized_key(principal.id, _pem(_rsa())[1])
        auth.revoke_authorized_key(key.id)
        listed = auth.list_authorized_keys(principal.id)
        assert [(k.id, k.revoked, k.algorithm) for k in listed] == [(key.id, True, "RSA_2048")]
        assert listed[0].created_at.tzinfo is not None
    finally:
        engine.dispose()


# ------------------------------------------------------------------------------ gRPC


@pytest.fixture(scope="module")
def grpc_target(service: Service, portal: BlockingPortal) -> Iterator[str]:
    """The service's runtime also on a plaintext gRPC port (the real grpc.aio server)."""
    port = free_port()
    settings = service.rt.settings.model_copy(update={"grpc_port": port, "host": "127.0.0.1"})
    portal.call(service.rt.open)
    with portal.wrap_async_context_manager(serving(service.rt, settings, reuse_port=False)):
        yield f"127.0.0.1:{port}"


def test_grpc_create_with_both_credentials(service: Service, grpc_target: str) -> None:
    account = _account(service)
    with grpc.insecure_channel(grpc_target) as channel:
        iam = iam_grpc.IamTokenServiceStub(channel)
        keys = keys_grpc.SymmetricKeyServiceStub(channel)
        for request in (
            iam_pb2.CreateIamTokenRequest(yandex_passport_oauth_token=account.token),
            iam_pb2.CreateIamTokenRequest(jwt=_sdk_jwt(account)),
        ):
            answer = iam.Create(request, timeout=30)
            assert answer.iam_token.startswith("kmsh1i_")
            expires = answer.expires_at.ToDatetime(tzinfo=UTC)
            assert abs((expires - service.clock()).total_seconds() - TTL) < 5
            with pytest.raises(grpc.RpcError) as denied:
                keys.List(
                    keys_pb2.ListSymmetricKeysRequest(folder_id=FOLDER),
                    metadata=(("authorization", f"Bearer {answer.iam_token}"),),
                    timeout=30,
                )
            assert denied.value.code() is grpc.StatusCode.PERMISSION_DENIED  # authenticated
        forged = jwt.encode(
            _claims(account), _pem(_rsa())[0], "PS256", headers={"kid": account.key_id}
        )
        with pytest.raises(grpc.RpcError) as refused:
            iam.Create(iam_pb2.CreateIamTokenRequest(jwt=forged), timeout=30)
        assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
        with _client(service) as client:
            rest = _exchange(client, jwt=forged).json()["message"]
        assert refused.value.details() == rest
