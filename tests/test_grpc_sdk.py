"""Issue 16 acceptance through the official Python SDK (`yandexcloud`): discovery, TLS with a
test CA, `iam_token=` credentials, against `kms-hsm serve` on a real SoftHSM2 token.

One server per module (tests/grpc_support.py); the SDK reaches every service by discovery,
never through stubs or channels of ours, except where a test needs a call the SDK cannot make
(no credentials at all). Errors are compared with REST's answer on the same server.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
import uuid

import grpc
import pytest
import yandexcloud
from google.protobuf import field_mask_pb2
from yandex.cloud.kms.v1 import symmetric_crypto_service_pb2 as crypto_pb2
from yandex.cloud.kms.v1 import symmetric_key_pb2
from yandex.cloud.kms.v1 import symmetric_key_service_pb2 as keys_pb2
from yandex.cloud.kms.v1.symmetric_crypto_service_pb2_grpc import SymmetricCryptoServiceStub
from yandex.cloud.kms.v1.symmetric_key_service_pb2_grpc import SymmetricKeyServiceStub
from yandex.cloud.operation import operation_service_pb2
from yandex.cloud.operation.operation_service_pb2_grpc import OperationServiceStub

from tests.grpc_support import KmsServer, rpc_error, server_fixture, status_details

FOLDER = "b1gsdkacceptance"
AES_256 = symmetric_key_pb2.AES_256
AES_256_HSM = symmetric_key_pb2.AES_256_HSM
UNKNOWN_KEY = "abjnosuchkey00000000"

server = server_fixture()
server2 = server_fixture(workers=2)
server_mtls = server_fixture(client_ca=True)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def sdk(server: KmsServer) -> yandexcloud.SDK:
    """The SDK as the admin, with its bearer as a ready IAM token."""
    return server.sdk(iam_token=server.admin_token)


@pytest.fixture(scope="module")
def crypto(sdk: yandexcloud.SDK) -> SymmetricCryptoServiceStub:
    return sdk.client(SymmetricCryptoServiceStub)


@pytest.fixture(scope="module")
def key_service(sdk: yandexcloud.SDK) -> SymmetricKeyServiceStub:
    return sdk.client(SymmetricKeyServiceStub)


def create_key(
    sdk: yandexcloud.SDK, algorithm: int, folder: str = FOLDER, **fields: object
) -> tuple[symmetric_key_pb2.SymmetricKey, keys_pb2.CreateSymmetricKeyMetadata]:
    """Create through the SDK's operation helper (it polls OperationService.Get)."""
    request = keys_pb2.CreateSymmetricKeyRequest(
        folder_id=folder, default_algorithm=algorithm, **fields
    )
    result = sdk.create_operation_and_get_result(
        request,
        service=SymmetricKeyServiceStub,
        method_name="Create",
        response_type=symmetric_key_pb2.SymmetricKey,
        meta_type=keys_pb2.CreateSymmetricKeyMetadata,
        timeout=60,
    )
    # The SDK unpacks into the type it is given without checking it.
    assert result.operation.response.Is(symmetric_key_pb2.SymmetricKey.DESCRIPTOR)
    return result.response, result.meta


@pytest.fixture(scope="module")
def keys(sdk: yandexcloud.SDK) -> dict[int, symmetric_key_pb2.SymmetricKey]:
    """One AES_256_HSM and one AES_256 key, shared by the crypto tests."""
    return {
        algorithm: create_key(sdk, algorithm, name=f"sdk-{algorithm}")[0]
        for algorithm in (AES_256_HSM, AES_256)
    }


# --- keys and crypto through the SDK ---


@pytest.mark.parametrize("algorithm", [AES_256_HSM, AES_256], ids=["AES_256_HSM", "AES_256"])
def test_create_with_the_operation_helper(sdk: yandexcloud.SDK, algorithm: int) -> None:
    key, meta = create_key(sdk, algorithm, name="created", labels={"team": "sdk"})
    assert meta.key_id == key.id and meta.primary_version_id == key.primary_version.id
    assert key.folder_id == FOLDER and key.name == "created" and dict(key.labels) == {"team": "sdk"}
    assert key.default_algorithm == algorithm
    assert key.status == symmetric_key_pb2.SymmetricKey.ACTIVE
    assert key.primary_version.primary
    assert key.primary_version.hosted_by_hsm is (algorithm == AES_256_HSM)
    got = sdk.client(SymmetricKeyServiceStub).Get(
        keys_pb2.GetSymmetricKeyRequest(key_id=key.id), timeout=30
    )
    assert got == key


@pytest.mark.parametrize("algorithm", [AES_256_HSM, AES_256], ids=["AES_256_HSM", "AES_256"])
def test_encrypt_decrypt_with_aad_context(
    crypto: SymmetricCryptoServiceStub,
    keys: dict[int, symmetric_key_pb2.SymmetricKey],
    algorithm: int,
) -> None:
    key = keys[algorithm]
    sealed = crypto.Encrypt(
        crypto_pb2.SymmetricEncryptRequest(key_id=key.id, plaintext=b"payload", aad_context=b"ctx"),
        timeout=30,
    )
    assert sealed.key_id == key.id and sealed.version_id == key.primary_version.id
    assert b"payload" not in sealed.ciphertext
    opened = crypto.Decrypt(
        crypto_pb2.SymmetricDecryptRequest(
            key_id=key.id, ciphertext=sealed.ciphertext, aad_context=b"ctx"
        ),
        timeout=30,
    )
    assert (opened.plaintext, opened.key_id, opened.version_id) == (
        b"payload",
        key.id,
        key.primary_version.id,
    )
    # Another context is one of the failures that all look the same.
    error = rpc_error(
        crypto.Decrypt,
        crypto_pb2.SymmetricDecryptRequest(
            key_id=key.id, ciphertext=sealed.ciphertext, aad_context=b"other"
        ),
    )
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    tampered = sealed.ciphertext[:-1] + bytes([sealed.ciphertext[-1] ^ 1])
    again = rpc_error(
        crypto.Decrypt,
        crypto_pb2.SymmetricDecryptRequest(key_id=key.id, ciphertext=tampered, aad_context=b"ctx"),
    )
    assert (again.code(), again.details()) == (error.code(), error.details())


@pytest.mark.parametrize("algorithm", [AES_256_HSM, AES_256], ids=["AES_256_HSM", "AES_256"])
def test_generate_data_key(
    crypto: SymmetricCryptoServiceStub,
    keys: dict[int, symmetric_key_pb2.SymmetricKey],
    algorithm: int,
) -> None:
    key = keys[algorithm]
    with_plaintext = crypto.GenerateDataKey(
        crypto_pb2.GenerateDataKeyRequest(
            key_id=key.id, data_key_spec=AES_256_HSM, aad_context=b"dk", skip_plaintext=False
        ),
        timeout=30,
    )
    assert len(with_plaintext.data_key_plaintext) == 32
    assert with_plaintext.version_id == key.primary_version.id
    opened = crypto.Decrypt(
        crypto_pb2.SymmetricDecryptRequest(
            key_id=key.id, ciphertext=with_plaintext.data_key_ciphertext, aad_context=b"dk"
        ),
        timeout=30,
    )
    assert opened.plaintext == with_plaintext.data_key_plaintext
    skipped = crypto.GenerateDataKey(
        crypto_pb2.GenerateDataKeyRequest(
            key_id=key.id, data_key_spec=AES_256_HSM, skip_plaintext=True
        ),
        timeout=30,
    )
    assert skipped.data_key_plaintext == b"" and skipped.data_key_ciphertext
    hidden = crypto.Decrypt(
        crypto_pb2.SymmetricDecryptRequest(key_id=key.id, ciphertext=skipped.data_key_ciphertext),
        timeout=30,
    )
    assert len(hidden.plaintext) == 32 and hidden.plaintext != with_plaintext.data_key_plaintext


def test_re_encrypt_across_keys(
    crypto: SymmetricCryptoServiceStub, keys: dict[int, symmetric_key_pb2.SymmetricKey]
) -> None:
    source, target = keys[AES_256_HSM], keys[AES_256]
    sealed = crypto.Encrypt(
        crypto_pb2.SymmetricEncryptRequest(
            key_id=source.id, plaintext=b"move me", aad_context=b"s"
        ),
        timeout=30,
    )
    moved = crypto.ReEncrypt(
        crypto_pb2.SymmetricReEncryptRequest(
            key_id=target.id,
            aad_context=b"t",
            source_key_id=source.id,
            source_aad_context=b"s",
            ciphertext=sealed.ciphertext,
        ),
        timeout=30,
    )
    assert (moved.key_id, moved.version_id) == (target.id, target.primary_version.id)
    assert (moved.source_key_id, moved.source_version_id) == (source.id, sealed.version_id)
    opened = crypto.Decrypt(
        crypto_pb2.SymmetricDecryptRequest(
            key_id=target.id, ciphertext=moved.ciphertext, aad_context=b"t"
        ),
        timeout=30,
    )
    assert opened.plaintext == b"move me"


def test_rotate_then_list_versions(
    sdk: yandexcloud.SDK, crypto: SymmetricCryptoServiceStub, key_service: SymmetricKeyServiceStub
) -> None:
    key, _ = create_key(sdk, AES_256_HSM, name="rotated")
    before = crypto.Encrypt(
        crypto_pb2.SymmetricEncryptRequest(key_id=key.id, plaintext=b"old"), timeout=30
    )
    result = sdk.create_operation_and_get_result(
        keys_pb2.RotateSymmetricKeyRequest(key_id=key.id),
        service=SymmetricKeyServiceStub,
        method_name="Rotate",
        response_type=symmetric_key_pb2.SymmetricKey,
        meta_type=keys_pb2.RotateSymmetricKeyMetadata,
        timeout=60,
    )
    # The proto declares the rotated SymmetricKey as Rotate's response.
    assert result.operation.response.Is(symmetric_key_pb2.SymmetricKey.DESCRIPTOR)
    new_version = result.response.primary_version
    assert result.meta.key_id == key.id and result.meta.new_primary_version_id == new_version.id
    assert new_version.primary and new_version.id != key.primary_version.id
    versions = key_service.ListVersions(
        keys_pb2.ListSymmetricKeyVersionsRequest(key_id=key.id), timeout=30
    ).key_versions
    assert len(versions) == 2
    assert {v.id for v in versions} == {key.primary_version.id, new_version.id}
    assert [v.id for v in versions if v.primary] == [new_version.id]
    after = crypto.Encrypt(
        crypto_pb2.SymmetricEncryptRequest(key_id=key.id, plaintext=b"new"), timeout=30
    )
    assert after.version_id == new_version.id
    opened = crypto.Decrypt(
        crypto_pb2.SymmetricDecryptRequest(key_id=key.id, ciphertext=before.ciphertext), timeout=30
    )
    assert opened.plaintext == b"old" and opened.version_id == key.primary_version.id


def test_paged_list(sdk: yandexcloud.SDK, key_service: SymmetricKeyServiceStub) -> None:
    folder = "b1gsdkpaged"
    made = {create_key(sdk, AES_256, folder, name=f"p{i}")[0].id for i in range(3)}
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = key_service.List(
            keys_pb2.ListSymmetricKeysRequest(folder_id=folder, page_size=1, page_token=token),
            timeout=30,
        )
        pages += 1
        assert len(page.keys) <= 1
        seen += [k.id for k in page.keys]
        token = page.next_page_token
        if not token:
            break
        assert pages <= len(made) + 1, "the walk does not end"
    assert sorted(seen) == sorted(made) and len(seen) == len(set(seen))


def test_update_list_operations_and_get_each(
    sdk: yandexcloud.SDK, key_service: SymmetricKeyServiceStub
) -> None:
    key, _ = create_key(sdk, AES_256, name="before", labels={"a": "1"}, description="kept")
    updated = sdk.create_operation_and_get_result(
        keys_pb2.UpdateSymmetricKeyRequest(
            key_id=key.id,
            update_mask=field_mask_pb2.FieldMask(paths=["name", "labels"]),
            name="after",
            labels={"b": "2"},
            description="ignored: not in the mask",
        ),
        service=SymmetricKeyServiceStub,
        method_name="Update",
        response_type=symmetric_key_pb2.SymmetricKey,
        meta_type=keys_pb2.UpdateSymmetricKeyMetadata,
        timeout=60,
    )
    assert updated.meta.key_id == key.id
    assert updated.response.name == "after" and dict(updated.response.labels) == {"b": "2"}
    assert updated.response.description == "kept"
    key_service.Rotate(keys_pb2.RotateSymmetricKeyRequest(key_id=key.id), timeout=30)
    operations = key_service.ListOperations(
        keys_pb2.ListSymmetricKeyOperationsRequest(key_id=key.id), timeout=30
    ).operations
    assert [op.description for op in operations] == [
        "Create symmetric key",
        "Update symmetric key",
        "Rotate symmetric key",
    ]
    operation_service = sdk.client(OperationServiceStub)
    for op in operations:
        got = operation_service.Get(
            operation_service_pb2.GetOperationRequest(operation_id=op.id), timeout=30
        )
        assert got == op and got.done


def test_delete(sdk: yandexcloud.SDK, key_service: SymmetricKeyServiceStub) -> None:
    key, _ = create_key(sdk, AES_256_HSM, name="doomed")
    result = sdk.create_operation_and_get_result(
        keys_pb2.DeleteSymmetricKeyRequest(key_id=key.id),
        service=SymmetricKeyServiceStub,
        method_name="Delete",
        response_type=symmetric_key_pb2.SymmetricKey,
        meta_type=keys_pb2.DeleteSymmetricKeyMetadata,
        timeout=60,
    )
    assert result.meta.key_id == key.id and result.response.id == key.id
    error = rpc_error(key_service.Get, keys_pb2.GetSymmetricKeyRequest(key_id=key.id))
    assert error.code() is grpc.StatusCode.NOT_FOUND


# --- one ciphertext, two transports ---


def test_grpc_ciphertext_decrypts_over_rest_and_back(
    server: KmsServer,
    crypto: SymmetricCryptoServiceStub,
    keys: dict[int, symmetric_key_pb2.SymmetricKey],
) -> None:
    with server.rest(server.admin_token) as rest:
        for key in keys.values():
            sealed = crypto.Encrypt(
                crypto_pb2.SymmetricEncryptRequest(
                    key_id=key.id, plaintext=b"from grpc", aad_context=b"x"
                ),
                timeout=30,
            )
            r = rest.post(
                f"/kms/v1/keys/{key.id}:decrypt",
                json={"ciphertext": b64(sealed.ciphertext), "aadContext": b64(b"x")},
            )
            assert r.status_code == 200, r.text
            assert base64.b64decode(r.json()["plaintext"]) == b"from grpc"
            r = rest.post(
                f"/kms/v1/keys/{key.id}:encrypt",
                json={"plaintext": b64(b"from rest"), "aadContext": b64(b"y")},
            )
            assert r.status_code == 200, r.text
            opened = crypto.Decrypt(
                crypto_pb2.SymmetricDecryptRequest(
                    key_id=key.id,
                    ciphertext=base64.b64decode(r.json()["ciphertext"]),
                    aad_context=b"y",
                ),
                timeout=30,
            )
            assert opened.plaintext == b"from rest"
            assert opened.version_id == r.json()["versionId"]
            r = rest.post(
                f"/kms/v1/keys/{key.id}:generateDataKey",
                json={"dataKeySpec": "AES_256", "aadContext": b64(b"z")},
            )
            assert r.status_code == 200, r.text
            unwrapped = crypto.Decrypt(
                crypto_pb2.SymmetricDecryptRequest(
                    key_id=key.id,
                    ciphertext=base64.b64decode(r.json()["dataKeyCiphertext"]),
                    aad_context=b"z",
                ),
                timeout=30,
            )
            assert unwrapped.plaintext == base64.b64decode(r.json()["dataKeyPlaintext"])


# --- errors: the REST cases, the REST code and message, and a RequestInfo ---


def assert_as_rest(error: grpc.RpcError, code: grpc.StatusCode, rest_answer: dict) -> None:
    """The gRPC status is REST's ``code`` with REST's ``message``, and names the request."""
    assert error.code() is code, (error.code(), error.details())
    assert code.value[0] == rest_answer["code"], rest_answer
    assert error.details() == rest_answer["message"]
    status, found = status_details(error)
    assert status.code == rest_answer["code"] and status.message == rest_answer["message"]
    request_id = dict(error.trailing_metadata())["x-request-id"]
    assert found["RequestInfo"].request_id == request_id


def test_unknown_key_is_not_found(
    server: KmsServer,
    sdk: yandexcloud.SDK,
    crypto: SymmetricCryptoServiceStub,
    key_service: SymmetricKeyServiceStub,
) -> None:
    cases = [
        (
            crypto.Encrypt,
            crypto_pb2.SymmetricEncryptRequest(key_id=UNKNOWN_KEY, plaintext=b"\0"),
            ("post", f"/kms/v1/keys/{UNKNOWN_KEY}:encrypt", {"plaintext": "AA=="}),
        ),
        (
            crypto.Decrypt,
            crypto_pb2.SymmetricDecryptRequest(key_id=UNKNOWN_KEY, ciphertext=b"\x01\x01"),
            ("post", f"/kms/v1/keys/{UNKNOWN_KEY}:decrypt", {"ciphertext": "AQE="}),
        ),
        (
            crypto.GenerateDataKey,
            crypto_pb2.GenerateDataKeyRequest(key_id=UNKNOWN_KEY, data_key_spec=AES_256),
            ("post", f"/kms/v1/keys/{UNKNOWN_KEY}:generateDataKey", {"dataKeySpec": "AES_256"}),
        ),
        (
            key_service.Get,
            keys_pb2.GetSymmetricKeyRequest(key_id=UNKNOWN_KEY),
            ("get", f"/kms/v1/keys/{UNKNOWN_KEY}", None),
        ),
        (
            key_service.Rotate,
            keys_pb2.RotateSymmetricKeyRequest(key_id=UNKNOWN_KEY),
            ("post", f"/kms/v1/keys/{UNKNOWN_KEY}:rotate", {}),
        ),
        (
            sdk.client(OperationServiceStub).Get,
            operation_service_pb2.GetOperationRequest(operation_id="abonosuchop"),
            ("get", "/operations/abonosuchop", None),
        ),
    ]
    with server.rest(server.admin_token) as rest:
        for call, request, (verb, path, body) in cases:
            error = rpc_error(call, request)
            answer = rest.request(verb, path, json=body)
            assert answer.status_code == 404, answer.text
            assert_as_rest(error, grpc.StatusCode.NOT_FOUND, answer.json())


@pytest.mark.parametrize(
    ("request_fields", "rest_body", "field"),
    [
        (
            {"version_id": "bad/id", "plaintext": b"x"},
            {"versionId": "bad/id", "plaintext": "eA=="},
            "versionId",
        ),
        (
            {"plaintext": b"x", "aad_context": b"a" * 8193},
            {"plaintext": "eA==", "aadContext": b64(b"a" * 8193)},
            "aadContext",
        ),
        ({}, {}, "plaintext"),
        ({"plaintext": b"x" * 32769}, {"plaintext": b64(b"x" * 32769)}, "plaintext"),
    ],
    ids=["bad-version-id", "oversize-aad", "missing-plaintext", "oversize-plaintext"],
)
def test_bad_argument_is_invalid_argument(
    server: KmsServer,
    crypto: SymmetricCryptoServiceStub,
    keys: dict[int, symmetric_key_pb2.SymmetricKey],
    request_fields: dict,
    rest_body: dict,
    field: str,
) -> None:
    key_id = keys[AES_256].id
    error = rpc_error(
        crypto.Encrypt, crypto_pb2.SymmetricEncryptRequest(key_id=key_id, **request_fields)
    )
    with server.rest(server.admin_token) as rest:
        answer = rest.post(f"/kms/v1/keys/{key_id}:encrypt", json=rest_body)
    assert answer.status_code == 400, answer.text
    assert_as_rest(error, grpc.StatusCode.INVALID_ARGUMENT, answer.json())
    assert field in error.details()
    _status, found = status_details(error)
    assert [v.field for v in found["BadRequest"].field_violations] == [field]


def test_bad_data_key_spec_and_update_mask_are_invalid_argument(
    server: KmsServer,
    crypto: SymmetricCryptoServiceStub,
    key_service: SymmetricKeyServiceStub,
    keys: dict[int, symmetric_key_pb2.SymmetricKey],
) -> None:
    key_id = keys[AES_256].id
    with server.rest(server.admin_token) as rest:
        error = rpc_error(
            key_service.Update,
            keys_pb2.UpdateSymmetricKeyRequest(
                key_id=key_id, update_mask=field_mask_pb2.FieldMask(paths=["bogus"])
            ),
        )
        answer = rest.patch(f"/kms/v1/keys/{key_id}", json={"updateMask": "bogus"})
        assert_as_rest(error, grpc.StatusCode.INVALID_ARGUMENT, answer.json())
        error = rpc_error(
            crypto.ReEncrypt,
            crypto_pb2.SymmetricReEncryptRequest(key_id=key_id, ciphertext=b"\0"),
        )
        answer = rest.post(f"/kms/v1/keys/{key_id}:reEncrypt", json={"ciphertext": "AA=="})
        assert_as_rest(error, grpc.StatusCode.INVALID_ARGUMENT, answer.json())
        assert "sourceKeyId" in error.details()
        error = rpc_error(
            crypto.ReEncrypt,
            crypto_pb2.SymmetricReEncryptRequest(
                key_id=key_id, source_key_id="s" * 51, ciphertext=b"\0"
            ),
        )
        answer = rest.post(
            f"/kms/v1/keys/{key_id}:reEncrypt",
            json={"ciphertext": "AA==", "sourceKeyId": "s" * 51},
        )
        assert_as_rest(error, grpc.StatusCode.INVALID_ARGUMENT, answer.json())
        assert "sourceKeyId" in error.details()


def test_every_decryption_failure_answers_as_rest(
    server: KmsServer,
    crypto: SymmetricCryptoServiceStub,
    keys: dict[int, symmetric_key_pb2.SymmetricKey],
) -> None:
    key, other = keys[AES_256_HSM], keys[AES_256]
    sealed = crypto.Encrypt(
        crypto_pb2.SymmetricEncryptRequest(key_id=key.id, plaintext=b"p", aad_context=b"a"),
        timeout=30,
    ).ciphertext
    cases = {
        "wrong aad": (key.id, sealed, b"b"),
        "no aad": (key.id, sealed, b""),
        "another key": (other.id, sealed, b"a"),
        "tampered": (key.id, sealed[:-1] + bytes([sealed[-1] ^ 1]), b"a"),
        "truncated": (key.id, sealed[:-1], b"a"),
        "garbage": (key.id, b"\x01\x01garbage", b"a"),
    }
    answers = set()
    with server.rest(server.admin_token) as rest:
        for name, (key_id, ciphertext, aad) in cases.items():
            error = rpc_error(
                crypto.Decrypt,
                crypto_pb2.SymmetricDecryptRequest(
                    key_id=key_id, ciphertext=ciphertext, aad_context=aad
                ),
            )
            body = {"ciphertext": b64(ciphertext)} | ({"aadContext": b64(aad)} if aad else {})
            answer = rest.post(f"/kms/v1/keys/{key_id}:decrypt", json=body)
            assert answer.status_code == 400, (name, answer.text)
            assert_as_rest(error, grpc.StatusCode.INVALID_ARGUMENT, answer.json())
            answers.add(error.details())
    assert len(answers) == 1, answers


def test_the_callers_request_id_is_the_request_info_and_audited(
    server: KmsServer, crypto: SymmetricCryptoServiceStub
) -> None:
    request_id = f"sdk-denied-{uuid.uuid4()}"
    error = rpc_error(
        crypto.Encrypt,
        crypto_pb2.SymmetricEncryptRequest(key_id=UNKNOWN_KEY, plaintext=b"x"),
        metadata=(("x-request-id", request_id),),
    )
    assert error.code() is grpc.StatusCode.NOT_FOUND
    _status, found = status_details(error)
    assert found["RequestInfo"].request_id == request_id
    # A refused call leaves its event too, naming the transport.
    deadline = time.monotonic() + 10
    while True:
        lines = server.audit_log.read_text().splitlines() if server.audit_log.exists() else []
        events = [
            e for e in map(json.loads, filter(None, lines)) if e.get("request_id") == request_id
        ]
        if events or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert [(e["method"], e["key_id"], e["transport"]) for e in events] == [
        ("SymmetricCrypto.Encrypt", UNKNOWN_KEY, "grpc")
    ]
    assert events[0]["outcome"] != "OK"


def test_insecure_sdk_against_tls_is_refused(
    server: KmsServer, keys: dict[int, symmetric_key_pb2.SymmetricKey]
) -> None:
    # README: insecure=True dials plaintext (and sends no credentials); a TLS server refuses.
    plain = server.sdk().client(SymmetricCryptoServiceStub, endpoint=server.endpoint, insecure=True)
    error = rpc_error(
        plain.Encrypt, crypto_pb2.SymmetricEncryptRequest(key_id=keys[AES_256].id, plaintext=b"x")
    )
    assert error.code() is grpc.StatusCode.UNAVAILABLE


def test_missing_token_is_unauthenticated(
    server: KmsServer, keys: dict[int, symmetric_key_pb2.SymmetricKey]
) -> None:
    key_id = keys[AES_256].id
    # The SDK always sends credentials over TLS (insecure=True would dial plaintext, which a
    # TLS server refuses): the SDK's own stub on a TLS channel without call credentials.
    with server.secure_channel() as channel:
        error = rpc_error(
            SymmetricCryptoServiceStub(channel).Encrypt,
            crypto_pb2.SymmetricEncryptRequest(key_id=key_id, plaintext=b"\0"),
        )
    with server.rest() as rest:
        answer = rest.post(f"/kms/v1/keys/{key_id}:encrypt", json={"plaintext": "AA=="})
    assert answer.status_code == 401
    assert_as_rest(error, grpc.StatusCode.UNAUTHENTICATED, answer.json())


@pytest.mark.parametrize(
    "forged",
    ["kmsh1_" + secrets.token_urlsafe(32), "not-a-kms-token", "kmsh1_"],
    ids=["well-formed", "foreign", "empty-secret"],
)
def test_forged_token_is_unauthenticated(
    server: KmsServer, keys: dict[int, symmetric_key_pb2.SymmetricKey], forged: str
) -> None:
    key_id = keys[AES_256_HSM].id
    crypto = server.sdk(iam_token=forged).client(SymmetricCryptoServiceStub)
    error = rpc_error(
        crypto.Encrypt, crypto_pb2.SymmetricEncryptRequest(key_id=key_id, plaintext=b"\0")
    )
    with server.rest(forged) as rest:
        answer = rest.post(f"/kms/v1/keys/{key_id}:encrypt", json={"plaintext": "AA=="})
    assert answer.status_code == 401
    assert_as_rest(error, grpc.StatusCode.UNAUTHENTICATED, answer.json())


def test_wrong_role_is_permission_denied(
    server: KmsServer, sdk: yandexcloud.SDK, keys: dict[int, symmetric_key_pb2.SymmetricKey]
) -> None:
    key = keys[AES_256_HSM]
    principal_id, token, _ = server.principal_with_token("sdk-encrypter")
    server.cli(
        "bindings",
        "add",
        "--key",
        key.id,
        "--role",
        "kms.keys.encrypter",
        "--subject",
        principal_id,
    )
    own = server.sdk(iam_token=token)
    own_crypto = own.client(SymmetricCryptoServiceStub)
    sealed = own_crypto.Encrypt(
        crypto_pb2.SymmetricEncryptRequest(key_id=key.id, plaintext=b"mine"), timeout=30
    )
    with server.rest(token) as rest:
        error = rpc_error(
            own_crypto.Decrypt,
            crypto_pb2.SymmetricDecryptRequest(key_id=key.id, ciphertext=sealed.ciphertext),
        )
        answer = rest.post(
            f"/kms/v1/keys/{key.id}:decrypt", json={"ciphertext": b64(sealed.ciphertext)}
        )
        assert answer.status_code == 403, answer.text
        assert_as_rest(error, grpc.StatusCode.PERMISSION_DENIED, answer.json())
        # An encrypter cannot read the key either; a key it has no role on is NOT_FOUND.
        own_keys = own.client(SymmetricKeyServiceStub)
        error = rpc_error(own_keys.Rotate, keys_pb2.RotateSymmetricKeyRequest(key_id=key.id))
        answer = rest.post(f"/kms/v1/keys/{key.id}:rotate", json={})
        assert_as_rest(error, grpc.StatusCode.PERMISSION_DENIED, answer.json())
        other = keys[AES_256].id
        error = rpc_error(
            own_crypto.Encrypt, crypto_pb2.SymmetricEncryptRequest(key_id=other, plaintext=b"x")
        )
        answer = rest.post(f"/kms/v1/keys/{other}:encrypt", json={"plaintext": "eA=="})
        assert_as_rest(error, grpc.StatusCode.NOT_FOUND, answer.json())
    opened = sdk.client(SymmetricCryptoServiceStub).Decrypt(
        crypto_pb2.SymmetricDecryptRequest(key_id=key.id, ciphertext=sealed.ciphertext), timeout=30
    )
    assert opened.plaintext == b"mine"


# --- mutual TLS (KMS_HSM_TLS_CLIENT_CA) ---


def test_mutual_tls_with_the_sdk(server_mtls: KmsServer) -> None:
    sdk = server_mtls.sdk()  # with the module CA's client certificate
    key, _ = create_key(sdk, AES_256_HSM, name="mtls")
    crypto = sdk.client(SymmetricCryptoServiceStub)
    sealed = crypto.Encrypt(
        crypto_pb2.SymmetricEncryptRequest(key_id=key.id, plaintext=b"mtls"), timeout=30
    )
    with server_mtls.rest(server_mtls.admin_token) as rest:
        r = rest.post(f"/kms/v1/keys/{key.id}:decrypt", json={"ciphertext": b64(sealed.ciphertext)})
    assert r.status_code == 200 and base64.b64decode(r.json()["plaintext"]) == b"mtls"
    # Without a client certificate the SDK's discovery already fails the handshake.
    bare = yandexcloud.SDK(
        endpoint=server_mtls.endpoint,
        iam_token=server_mtls.admin_token,
        root_certificates=server_mtls.pki.ca_pem,
    )
    with pytest.raises(grpc.RpcError) as caught:
        bare.client(SymmetricCryptoServiceStub).Encrypt(
            crypto_pb2.SymmetricEncryptRequest(key_id=key.id, plaintext=b"x"), timeout=30
        )
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE


# --- two workers; the audit chain; secrets in no log ---


def test_two_workers_audit_verify_and_no_token_in_any_log(server2: KmsServer) -> None:
    admin = server2.admin_token
    principal_id, token, _ = server2.principal_with_token("sdk-workers")
    key, _ = create_key(server2.sdk(iam_token=admin), AES_256_HSM, name="workers")
    server2.cli(
        "bindings",
        "add",
        "--key",
        key.id,
        "--role",
        "kms.keys.encrypterDecrypter",
        "--subject",
        principal_id,
    )
    workers: set[str] = set()
    calls = 0
    # Each SDK opens connections of its own, which the kernel spreads over the workers
    # (SO_REUSEPORT); every answer names its worker in x-kms-worker.
    for i in range(24):
        crypto = server2.sdk(iam_token=admin if i % 2 else token).client(SymmetricCryptoServiceStub)
        for j in range(5):
            sealed, call = crypto.Encrypt.with_call(
                crypto_pb2.SymmetricEncryptRequest(
                    key_id=key.id, plaintext=f"m{i}.{j}".encode(), aad_context=b"w"
                ),
                timeout=30,
            )
            workers.add(dict(call.trailing_metadata())["x-kms-worker"])
            opened = crypto.Decrypt(
                crypto_pb2.SymmetricDecryptRequest(
                    key_id=key.id, ciphertext=sealed.ciphertext, aad_context=b"w"
                ),
                timeout=30,
            )
            assert opened.plaintext == f"m{i}.{j}".encode()
            calls += 2
        if len(workers) == 2 and i >= 7:
            break
    assert len(workers) == 2, workers
    server2.stop()
    log = server2.log.read_text()
    assert log.count("serving gRPC on") == 2
    assert {f"worker {w}" for w in workers} <= {
        line.rsplit(" in ", 1)[1] for line in log.splitlines() if "serving gRPC on" in line
    }
    events = [json.loads(line) for line in server2.audit_log.read_text().splitlines() if line]
    grpc_crypto = [
        e
        for e in events
        if e.get("transport") == "grpc" and e.get("method", "").startswith("SymmetricCrypto.")
    ]
    assert len(grpc_crypto) == calls
    # Every API event names its transport, changes audited in their own transaction too.
    api_events = [e for e in events if e.get("type") != "checkpoint" and "." in e["method"]]
    api_events = [e for e in api_events if not e["principal_id"].startswith(("cli:", "system"))]
    assert api_events and all(e["transport"] in ("grpc", "rest") for e in api_events), api_events
    callers = {e["principal_id"] for e in grpc_crypto}
    assert principal_id in callers and len(callers) == 2
    verified = server2.cli("audit", "verify", "--checkpoints", str(server2.audit_log), check=False)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "audit chain intact" in verified.stdout
    written = server2.written()
    for secret in (admin, token):
        assert secret not in written
        assert secret.split("_", 1)[1] not in written
