"""Issue 16 acceptance with the official Python SDK (`yandexcloud`): `kms-hsm serve` in a
subprocess on a real SoftHSM2 token, gRPC over TLS with a test CA, discovery included.

Every call goes through `yandexcloud.SDK` (its discovery, credentials and operation
waiter); only the missing-token case uses a bare stub on a TLS channel, because the SDK
always sends credentials when it can. Error answers are compared with REST's for the same
request on the same server.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import yandexcloud
from google.protobuf import field_mask_pb2
from yandex.cloud.kms.v1 import symmetric_crypto_service_pb2 as crypto_pb2
from yandex.cloud.kms.v1 import symmetric_crypto_service_pb2_grpc as crypto_grpc
from yandex.cloud.kms.v1 import symmetric_key_pb2
from yandex.cloud.kms.v1 import symmetric_key_service_pb2 as keys_pb2
from yandex.cloud.kms.v1 import symmetric_key_service_pb2_grpc as keys_grpc
from yandex.cloud.operation import operation_service_pb2 as operation_pb2
from yandex.cloud.operation import operation_service_pb2_grpc as operation_grpc

from tests.grpc_support import Server, rpc_error, serve_grpc, status_details

FOLDER = "b1gsdkaccept"
AES_256 = symmetric_key_pb2.AES_256
AES_256_HSM = symmetric_key_pb2.AES_256_HSM
UNKNOWN_KEY = "abjunknownkey00000000"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with serve_grpc(tmp_path_factory.mktemp("sdk")) as server:
        yield server


@pytest.fixture(scope="module")
def sdk(served: Server) -> yandexcloud.SDK:
    return served.sdk()


@pytest.fixture(scope="module")
def crypto(sdk: yandexcloud.SDK) -> Any:
    return sdk.client(crypto_grpc.SymmetricCryptoServiceStub)


@pytest.fixture(scope="module")
def key_service(sdk: yandexcloud.SDK) -> Any:
    return sdk.client(keys_grpc.SymmetricKeyServiceStub)


def create_key(sdk: yandexcloud.SDK, algorithm: int, folder: str = FOLDER, **fields: Any) -> Any:
    """A key made through the SDK's operation helper (Create, then OperationService.Get)."""
    result = sdk.create_operation_and_get_result(
        keys_pb2.CreateSymmetricKeyRequest(folder_id=folder, default_algorithm=algorithm, **fields),
        service=keys_grpc.SymmetricKeyServiceStub,
        method_name="Create",
        response_type=symmetric_key_pb2.SymmetricKey,
        meta_type=keys_pb2.CreateSymmetricKeyMetadata,
        timeout=30,
    )
    return result


@pytest.fixture(scope="module")
def keys(sdk: yandexcloud.SDK) -> dict[str, symmetric_key_pb2.SymmetricKey]:
    made = {}
    for name, algorithm in (("AES_256_HSM", AES_256_HSM), ("AES_256", AES_256)):
        made[name] = create_key(sdk, algorithm, name=f"sdk-{name.lower()}").response
    return made


# --- keys and crypto through the SDK ---


@pytest.mark.parametrize("algorithm", [AES_256_HSM, AES_256])
def test_create_with_the_operation_helper(sdk: yandexcloud.SDK, algorithm: int) -> None:
    result = create_key(
        sdk, algorithm, name="created", description="by the sdk", labels={"team": "sdk"}
    )
    key, meta = result.response, result.meta
    assert isinstance(key, symmetric_key_pb2.SymmetricKey)
    assert isinstance(meta, keys_pb2.CreateSymmetricKeyMetadata)
    assert meta.key_id == key.id and meta.primary_version_id == key.primary_version.id
    assert key.folder_id == FOLDER and key.name == "created"
    assert dict(key.labels) == {"team": "sdk"}
    assert key.default_algorithm == algorithm
    assert key.status == symmetric_key_pb2.SymmetricKey.ACTIVE
    assert key.primary_version.hosted_by_hsm is (algorithm == AES_256_HSM)
    got = sdk.client(keys_grpc.SymmetricKeyServiceStub).Get(
        keys_pb2.GetSymmetricKeyRequest(key_id=key.id), timeout=30
    )
    assert got == key


@pytest.mark.parametrize("name", ["AES_256_HSM", "AES_256"])
def test_encrypt_decrypt_with_aad_context(crypto: Any, keys: dict[str, Any], name: str) -> None:
    key = keys[name]
    sealed = crypto.Encrypt(
        crypto_pb2.SymmetricEncryptRequest(
            key_id=key.id, plaintext=b"sdk secret", aad_context=b"ctx"
        ),
        timeout=30,
    )
    assert sealed.key_id == key.id and sealed.version_id == key.primary_version.id
    opened = crypto.Decrypt(
        crypto_pb2.SymmetricDecryptRequest(
            key_id=key.id, ciphertext=sealed.ciphertext, aad_context=b"ctx"
        ),
        timeout=30,
    )
    assert opened.plaintext == b"sdk secret" and opened.version_id == sealed.version_id
    # Another aad fails like any other decryption failure.
    error = rpc_error(
        crypto.Decrypt,
        crypto_pb2.SymmetricDecryptRequest(
            key_id=key.id, ciphertext=sealed.ciphertext, aad_context=b"other"
        ),
    )
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("skip", [False, True])
def test_generate_data_key_hsm_spec(crypto: Any, keys: dict[str, Any], skip: bool) -> None:
    key = keys["AES_256_HSM"]
    made = crypto.GenerateDataKey(
        crypto_pb2.GenerateDataKeyRequest(
            key_id=key.id,
            aad_context=b"dk",
            data_key_spec=AES_256_HSM,
            skip_plaintext=skip,
        ),
        timeout=30,
    )
    assert made.key_id == key.id and made.version_id == key.primary_version.id
    assert made.data_key_ciphertext
    opened = crypto.Decrypt(
        crypto_pb2.SymmetricDecryptRequest(
            key_id=key.id, ciphertext=made.data_key_ciphertext, aad_context=b"dk"
        ),
        timeout=30,
    )
    assert len(opened.plaintext) == 32
    if skip:
        assert made.data_key_plaintext == b""
    else:
        assert opened.plaintext == made.data_key_plaintext


def test_reencrypt_across_keys(crypto: Any, keys: dict[str, Any]) -> None:
    source, target = keys["AES_256_HSM"], keys["AES_256"]
    sealed = crypto.Encrypt(
        crypto_pb2.SymmetricEncryptRequest(key_id=source.id, plaintext=b"move", aad_context=b"s"),
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
    assert opened.plaintext == b"move"


def test_rotate_then_list_versions(sdk: yandexcloud.SDK, crypto: Any, key_service: Any) -> None:
    key = create_key(sdk, AES_256_HSM, name="rotated").response
    before = crypto.Encrypt(
        crypto_pb2.SymmetricEncryptRequest(key_id=key.id, plaintext=b"old"), timeout=30
    )
    rotated = sdk.create_operation_and_get_result(
        keys_pb2.RotateSymmetricKeyRequest(key_id=key.id),
        service=keys_grpc.SymmetricKeyServiceStub,
        method_name="Rotate",
        response_type=symmetric_key_pb2.SymmetricKey,
        meta_type=keys_pb2.RotateSymmetricKeyMetadata,
        timeout=30,
    )
    new_version = rotated.meta.new_primary_version_id
    assert rotated.meta.key_id == key.id
    assert new_version and new_version != key.primary_version.id
    assert rotated.response.primary_version.id == new_version
    listed = key_service.ListVersions(
        keys_pb2.ListSymmetricKeyVersionsRequest(key_id=key.id), timeout=30
    )
    versions = {v.id: v for v in listed.key_versions}
    assert set(versions) == {key.primary_version.id, new_version}
    assert versions[new_version].primary is True
    assert versions[key.primary_version.id].primary is False
    after = crypto.Encrypt(
        crypto_pb2.SymmetricEncryptRequest(key_id=key.id, plaintext=b"new"), timeout=30
    )
    assert after.version_id == new_version
    opened = crypto.Decrypt(
        crypto_pb2.SymmetricDecryptRequest(key_id=key.id, ciphertext=before.ciphertext),
        timeout=30,
    )
    assert (opened.plaintext, opened.version_id) == (b"old", key.primary_version.id)


def test_paged_list(sdk: yandexcloud.SDK, key_service: Any) -> None:
    folder = f"b1gpaged{uuid.uuid4().hex[:8]}"
    made = {create_key(sdk, AES_256, folder=folder, name=f"p{i}").response.id for i in range(3)}
    seen: list[str] = []
    token = ""
    for _ in range(10):
        page = key_service.List(
            keys_pb2.ListSymmetricKeysRequest(folder_id=folder, page_size=1, page_token=token),
            timeout=30,
        )
        assert len(page.keys) <= 1
        seen += [k.id for k in page.keys]
        token = page.next_page_token
        if not token:
            break
    assert sorted(seen) == sorted(made) and len(seen) == len(set(seen))


def test_list_operations_and_get_each(sdk: yandexcloud.SDK, key_service: Any) -> None:
    key = create_key(sdk, AES_256, name="operations").response
    key_service.Rotate(keys_pb2.RotateSymmetricKeyRequest(key_id=key.id), timeout=30)
    listed = key_service.ListOperations(
        keys_pb2.ListSymmetricKeyOperationsRequest(key_id=key.id), timeout=30
    )
    assert len(listed.operations) == 2
    operations = sdk.client(operation_grpc.OperationServiceStub)
    for op in listed.operations:
        assert op.done
        got = operations.Get(operation_pb2.GetOperationRequest(operation_id=op.id), timeout=30)
        assert got == op


def test_update_with_mask(sdk: yandexcloud.SDK, key_service: Any) -> None:
    key = create_key(
        sdk, AES_256, name="before", description="kept", labels={"stage": "one"}
    ).response
    updated = sdk.create_operation_and_get_result(
        keys_pb2.UpdateSymmetricKeyRequest(
            key_id=key.id,
            update_mask=field_mask_pb2.FieldMask(paths=["name", "labels"]),
            name="after",
            description="ignored: not in the mask",
            labels={"stage": "two"},
        ),
        service=keys_grpc.SymmetricKeyServiceStub,
        method_name="Update",
        response_type=symmetric_key_pb2.SymmetricKey,
        meta_type=keys_pb2.UpdateSymmetricKeyMetadata,
        timeout=30,
    )
    assert updated.meta.key_id == key.id
    got = key_service.Get(keys_pb2.GetSymmetricKeyRequest(key_id=key.id), timeout=30)
    assert got == updated.response
    assert (got.name, got.description, dict(got.labels)) == ("after", "kept", {"stage": "two"})


def test_delete(sdk: yandexcloud.SDK, key_service: Any, crypto: Any) -> None:
    key = create_key(sdk, AES_256, name="deleted").response
    deleted = sdk.create_operation_and_get_result(
        keys_pb2.DeleteSymmetricKeyRequest(key_id=key.id),
        service=keys_grpc.SymmetricKeyServiceStub,
        method_name="Delete",
        response_type=symmetric_key_pb2.SymmetricKey,
        meta_type=keys_pb2.DeleteSymmetricKeyMetadata,
        timeout=30,
    )
    assert deleted.meta.key_id == key.id
    error = rpc_error(key_service.Get, keys_pb2.GetSymmetricKeyRequest(key_id=key.id))
    assert error.code() is grpc.StatusCode.NOT_FOUND
    error = rpc_error(
        crypto.Encrypt, crypto_pb2.SymmetricEncryptRequest(key_id=key.id, plaintext=b"x")
    )
    assert error.code() is grpc.StatusCode.NOT_FOUND


# --- one ciphertext, two transports ---


@pytest.mark.parametrize("name", ["AES_256_HSM", "AES_256"])
def test_grpc_ciphertext_opens_over_rest_and_back(
    served: Server, crypto: Any, keys: dict[str, Any], name: str
) -> None:
    key_id = keys[name].id
    sealed = crypto.Encrypt(
        crypto_pb2.SymmetricEncryptRequest(key_id=key_id, plaintext=b"g2r", aad_context=b"x"),
        timeout=30,
    )
    with served.rest() as rest:
        opened = rest.post(
            f"/kms/v1/keys/{key_id}:decrypt",
            json={"ciphertext": b64(sealed.ciphertext), "aadContext": b64(b"x")},
        )
        assert opened.status_code == 200, opened.text
        assert base64.b64decode(opened.json()["plaintext"]) == b"g2r"
        made = rest.post(
            f"/kms/v1/keys/{key_id}:encrypt",
            json={"plaintext": b64(b"r2g"), "aadContext": b64(b"y")},
        )
        assert made.status_code == 200, made.text
        data_key = rest.post(
            f"/kms/v1/keys/{key_id}:generateDataKey",
            json={"dataKeySpec": "AES_256", "aadContext": b64(b"y")},
        ).json()
    back = crypto.Decrypt(
        crypto_pb2.SymmetricDecryptRequest(
            key_id=key_id,
            ciphertext=base64.b64decode(made.json()["ciphertext"]),
            aad_context=b"y",
        ),
        timeout=30,
    )
    assert back.plaintext == b"r2g"
    unwrapped = crypto.Decrypt(
        crypto_pb2.SymmetricDecryptRequest(
            key_id=key_id,
            ciphertext=base64.b64decode(data_key["dataKeyCiphertext"]),
            aad_context=b"y",
        ),
        timeout=30,
    )
    assert unwrapped.plaintext == base64.b64decode(data_key["dataKeyPlaintext"])


# --- errors: REST's code and message, with a RequestInfo ---


def assert_same_as_rest(
    error: grpc.RpcError, rest_answer: Any, code: grpc.StatusCode, request_id: str
) -> None:
    """The gRPC failure says what REST says for the same request, with a RequestInfo."""
    assert error.code() is code, (error.code(), error.details())
    body = rest_answer.json()
    assert body["code"] == code.value[0], body
    assert error.details() == body["message"]
    status, found = status_details(error)
    assert (status.code, status.message) == (code.value[0], body["message"])
    assert found["RequestInfo"].request_id == request_id


def request_id() -> str:
    return f"sdk-{uuid.uuid4().hex[:12]}"


def sdk_call(client: Any, method: str, request: Any, rid: str) -> grpc.RpcError:
    return rpc_error(getattr(client, method), request, metadata=(("x-request-id", rid),))


@pytest.mark.parametrize(
    ("method", "request_", "path", "body"),
    [
        (
            "Encrypt",
            crypto_pb2.SymmetricEncryptRequest(key_id=UNKNOWN_KEY, plaintext=b"x"),
            f"/kms/v1/keys/{UNKNOWN_KEY}:encrypt",
            {"plaintext": "eA=="},
        ),
        (
            "Decrypt",
            crypto_pb2.SymmetricDecryptRequest(key_id=UNKNOWN_KEY, ciphertext=b"\x01\x01"),
            f"/kms/v1/keys/{UNKNOWN_KEY}:decrypt",
            {"ciphertext": "AQE="},
        ),
        (
            "GenerateDataKey",
            crypto_pb2.GenerateDataKeyRequest(key_id=UNKNOWN_KEY, data_key_spec=AES_256),
            f"/kms/v1/keys/{UNKNOWN_KEY}:generateDataKey",
            {"dataKeySpec": "AES_256"},
        ),
    ],
)
def test_unknown_key_is_not_found_as_rest(
    served: Server, crypto: Any, method: str, request_: Any, path: str, body: dict[str, Any]
) -> None:
    rid = request_id()
    error = sdk_call(crypto, method, request_, rid)
    with served.rest() as rest:
        answer = rest.post(path, json=body)
    assert_same_as_rest(error, answer, grpc.StatusCode.NOT_FOUND, rid)


def test_unknown_key_and_operation_get_are_not_found(sdk: yandexcloud.SDK, served: Server) -> None:
    rid = request_id()
    error = sdk_call(
        sdk.client(keys_grpc.SymmetricKeyServiceStub),
        "Get",
        keys_pb2.GetSymmetricKeyRequest(key_id=UNKNOWN_KEY),
        rid,
    )
    with served.rest() as rest:
        answer = rest.get(f"/kms/v1/keys/{UNKNOWN_KEY}")
    assert_same_as_rest(error, answer, grpc.StatusCode.NOT_FOUND, rid)
    rid = request_id()
    error = sdk_call(
        sdk.client(operation_grpc.OperationServiceStub),
        "Get",
        operation_pb2.GetOperationRequest(operation_id="abonosuchop"),
        rid,
    )
    with served.rest() as rest:
        answer = rest.get("/operations/abonosuchop")
    assert_same_as_rest(error, answer, grpc.StatusCode.NOT_FOUND, rid)


# (method, request fields, REST verb, REST body); the key is filled in by the test.
BAD_ARGUMENTS = {
    "bad version id": (
        "Encrypt",
        {"plaintext": b"x", "version_id": "bad/id"},
        "encrypt",
        {"plaintext": "eA==", "versionId": "bad/id"},
    ),
    "over-long version id": (
        "Encrypt",
        {"plaintext": b"x", "version_id": "v" * 51},
        "encrypt",
        {"plaintext": "eA==", "versionId": "v" * 51},
    ),
    "oversize aad": (
        "Encrypt",
        {"plaintext": b"x", "aad_context": b"a" * 8193},
        "encrypt",
        {"plaintext": "eA==", "aadContext": b64(b"a" * 8193)},
    ),
    "missing plaintext": ("Encrypt", {}, "encrypt", {}),
    "oversize plaintext": (
        "Encrypt",
        {"plaintext": b"x" * 32769},
        "encrypt",
        {"plaintext": b64(b"x" * 32769)},
    ),
    "tampered ciphertext": (
        "Decrypt",
        {"ciphertext": b"\x01\x01garbage"},
        "decrypt",
        {"ciphertext": b64(b"\x01\x01garbage")},
    ),
    "missing source key": (
        "ReEncrypt",
        {"ciphertext": b"\x00"},
        "reEncrypt",
        {"ciphertext": "AA=="},
    ),
    "over-long source key": (
        "ReEncrypt",
        {"ciphertext": b"\x00", "source_key_id": "s" * 51},
        "reEncrypt",
        {"ciphertext": "AA==", "sourceKeyId": "s" * 51},
    ),
}
REQUESTS = {
    "Encrypt": crypto_pb2.SymmetricEncryptRequest,
    "Decrypt": crypto_pb2.SymmetricDecryptRequest,
    "ReEncrypt": crypto_pb2.SymmetricReEncryptRequest,
}


@pytest.mark.parametrize("case", list(BAD_ARGUMENTS))
def test_bad_argument_is_invalid_argument_as_rest(
    served: Server, crypto: Any, keys: dict[str, Any], case: str
) -> None:
    method, fields, verb, body = BAD_ARGUMENTS[case]
    key_id = keys["AES_256"].id
    rid = request_id()
    error = sdk_call(crypto, method, REQUESTS[method](key_id=key_id, **fields), rid)
    with served.rest() as rest:
        answer = rest.post(f"/kms/v1/keys/{key_id}:{verb}", json=body)
    assert_same_as_rest(error, answer, grpc.StatusCode.INVALID_ARGUMENT, rid)


def test_missing_token_is_unauthenticated_as_rest(served: Server, keys: dict[str, Any]) -> None:
    key_id = keys["AES_256"].id
    rid = request_id()
    # The SDK cannot be made to send nothing over TLS (insecure=True drops TLS, which the
    # server then refuses): a bare stub on a TLS channel sends only what it is given.
    with served.secure_channel() as channel:
        error = rpc_error(
            crypto_grpc.SymmetricCryptoServiceStub(channel).Encrypt,
            crypto_pb2.SymmetricEncryptRequest(key_id=key_id, plaintext=b"x"),
            metadata=(("x-request-id", rid),),
        )
    answer = httpx.post(
        f"{served.rest_url}/kms/v1/keys/{key_id}:encrypt",
        json={"plaintext": "eA=="},
        verify=served.ssl_context(),
        timeout=30,
    )
    assert_same_as_rest(error, answer, grpc.StatusCode.UNAUTHENTICATED, rid)


def test_insecure_sdk_against_tls_is_refused(served: Server, keys: dict[str, Any]) -> None:
    sdk = served.sdk()
    plain = sdk.client(
        crypto_grpc.SymmetricCryptoServiceStub, endpoint=served.endpoint, insecure=True
    )
    error = rpc_error(
        plain.Encrypt, crypto_pb2.SymmetricEncryptRequest(key_id=keys["AES_256"].id, plaintext=b"x")
    )
    assert error.code() is grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("forged", ["kmsh1_" + "A" * 43, "not-a-kms-token", "kmsh1_"])
def test_forged_token_is_unauthenticated_as_rest(
    served: Server, keys: dict[str, Any], forged: str
) -> None:
    key_id = keys["AES_256"].id
    rid = request_id()
    crypto = served.sdk(iam_token=forged).client(crypto_grpc.SymmetricCryptoServiceStub)
    error = sdk_call(
        crypto, "Encrypt", crypto_pb2.SymmetricEncryptRequest(key_id=key_id, plaintext=b"x"), rid
    )
    with served.rest(token=forged) as rest:
        answer = rest.post(f"/kms/v1/keys/{key_id}:encrypt", json={"plaintext": "eA=="})
    assert_same_as_rest(error, answer, grpc.StatusCode.UNAUTHENTICATED, rid)


@pytest.fixture(scope="module")
def encrypter(served: Server, keys: dict[str, Any]) -> str:
    """A principal's token holding only kms.keys.encrypter on the AES_256 key."""
    principal_id, token, _ = served.principal("sdk-encrypter")
    served.cli(
        "bindings",
        "add",
        "--key",
        keys["AES_256"].id,
        "--role",
        "kms.keys.encrypter",
        "--subject",
        principal_id,
    )
    return token


def test_wrong_role_is_permission_denied_as_rest(
    served: Server, crypto: Any, keys: dict[str, Any], encrypter: str
) -> None:
    key_id = keys["AES_256"].id
    theirs = served.sdk(iam_token=encrypter).client(crypto_grpc.SymmetricCryptoServiceStub)
    # The role it has works.
    sealed = theirs.Encrypt(
        crypto_pb2.SymmetricEncryptRequest(key_id=key_id, plaintext=b"mine"), timeout=30
    )
    rid = request_id()
    error = sdk_call(
        theirs,
        "Decrypt",
        crypto_pb2.SymmetricDecryptRequest(key_id=key_id, ciphertext=sealed.ciphertext),
        rid,
    )
    with served.rest(token=encrypter) as rest:
        answer = rest.post(
            f"/kms/v1/keys/{key_id}:decrypt", json={"ciphertext": b64(sealed.ciphertext)}
        )
    assert_same_as_rest(error, answer, grpc.StatusCode.PERMISSION_DENIED, rid)
    # A key it has no role on is, as over REST, one that does not exist.
    other = keys["AES_256_HSM"].id
    rid = request_id()
    error = sdk_call(
        theirs, "Encrypt", crypto_pb2.SymmetricEncryptRequest(key_id=other, plaintext=b"x"), rid
    )
    with served.rest(token=encrypter) as rest:
        answer = rest.post(f"/kms/v1/keys/{other}:encrypt", json={"plaintext": "eA=="})
    assert_same_as_rest(error, answer, grpc.StatusCode.NOT_FOUND, rid)


def test_denials_are_audited_with_the_transport(
    served: Server, crypto: Any, keys: dict[str, Any]
) -> None:
    rid = request_id()
    sdk_call(
        crypto,
        "Encrypt",
        crypto_pb2.SymmetricEncryptRequest(key_id=UNKNOWN_KEY, plaintext=b"x"),
        rid,
    )
    events = served.wait_for_audit(lambda e: e.get("request_id") == rid)
    assert [(e["method"], e["transport"]) for e in events] == [("SymmetricCrypto.Encrypt", "grpc")]
    assert events[0]["outcome"] != "OK"


def test_no_token_in_the_logs(served: Server, encrypter: str) -> None:
    logs = served.log.read_text() + (served.audit.read_text() if served.audit.exists() else "")
    for secret in (served.admin_token, encrypter):
        assert secret not in logs
    assert "kmsh1_" not in logs


# --- `serve --workers 2` ---


def test_two_workers_serve_the_sdk_audit_verifies_no_token_logged(tmp_path: Path) -> None:
    with serve_grpc(tmp_path, "--workers", "2") as server:
        sdk = server.sdk()
        key = create_key(sdk, AES_256_HSM, name="workers").response
        workers: set[str] = set()
        calls = 0
        # Each SDK has channels of its own, so a new connection that the kernel hands to
        # either worker (SO_REUSEPORT); the worker answers its pid in x-kms-worker.
        for _ in range(40):
            crypto = server.sdk().client(crypto_grpc.SymmetricCryptoServiceStub)
            for n in range(3):
                sealed, call = crypto.Encrypt.with_call(
                    crypto_pb2.SymmetricEncryptRequest(
                        key_id=key.id, plaintext=b"w%d" % n, aad_context=b"w"
                    ),
                    timeout=30,
                )
                opened = crypto.Decrypt(
                    crypto_pb2.SymmetricDecryptRequest(
                        key_id=key.id, ciphertext=sealed.ciphertext, aad_context=b"w"
                    ),
                    timeout=30,
                )
                assert opened.plaintext == b"w%d" % n
                workers.add(dict(call.trailing_metadata())["x-kms-worker"])
                calls += 2
            if len(workers) == 2 and calls >= 60:
                break
        assert len(workers) == 2, workers
        assert server.log.read_text().count("serving gRPC on") == 2
        token = server.admin_token
        grpc_events = server.wait_for_audit(
            lambda e: e.get("transport") == "grpc" and e.get("method") == "SymmetricCrypto.Decrypt"
        )
        assert len(grpc_events) >= calls // 2
    verified = server.cli("audit", "verify", check=False)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    logs = server.log.read_text() + server.audit.read_text()
    assert token not in logs and "kmsh1_" not in logs
