"""Roles x methods, over real HTTP: allowed or 403 exactly as access.ROLE_PERMISSIONS says,
for folder bindings and key bindings, symmetric and asymmetric keys of both families alike;
principals with no role learn nothing (404)."""

from __future__ import annotations

import base64
from collections.abc import Callable

import httpx
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from kms_hsm.service.access import ROLE_PERMISSIONS, Permission
from kms_hsm.service.methods import METHODS
from kms_hsm.service.runtime import Runtime
from tests.conftest import create_key


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def principal_client(runtime: Runtime, base_url: str, name: str) -> tuple[str, httpx.Client]:
    principal = runtime.auth.create_principal(name)
    token, _ = runtime.auth.issue_token(principal.id)
    client = httpx.Client(
        base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    return principal.id, client


def bind(api: httpx.Client, path: str, role: str, principal_id: str) -> None:
    r = api.post(f"{path}:updateAccessBindings", json=_delta(role, principal_id))
    assert r.status_code == 200, r.text


Request = Callable[[httpx.Client], httpx.Response]


SIGNATURE_KEYS = "/kms/v1/asymmetricSignatureKeys"
ENCRYPTION_KEYS = "/kms/v1/asymmetricEncryptionKeys"


def _delta(role: str, subject: str) -> dict[str, object]:
    return {
        "accessBindingDeltas": [
            {
                "action": "ADD",
                "accessBinding": {
                    "roleId": role,
                    "subject": {"id": subject, "type": "serviceAccount"},
                },
            }
        ]
    }


def create_key_pair(api: httpx.Client, base: str, **fields: object) -> dict[str, object]:
    """Create an asymmetric key over HTTP; the key message from the Operation."""
    r = api.post(base, json=fields)
    assert r.status_code == 200, r.text
    assert r.json()["done"] is True
    key: dict[str, object] = r.json()["response"]
    return key


def _ciphertext(api: httpx.Client, key_id: str) -> str:
    pem = api.get(f"{ENCRYPTION_KEYS}/{key_id}/publicKey").json()["publicKey"]
    public_key = serialization.load_pem_public_key(pem.encode())
    assert isinstance(public_key, rsa.RSAPublicKey)
    oaep = padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), None)
    return b64(public_key.encrypt(b"m", oaep))


def _key_pair_requests(
    api: httpx.Client, folder: str, base: str, service: str, key_id: str, algorithm: dict[str, str]
) -> dict[str, Request]:
    """The nine key-service methods of one asymmetric family (Delete last)."""
    k = f"{base}/{key_id}"
    operation_id = api.get(f"{k}/operations").json()["operations"][0]["id"]
    return {
        f"{service}.Create": lambda c: c.post(base, json={"folderId": folder, **algorithm}),
        f"{service}.Get": lambda c: c.get(k),
        f"{service}.List": lambda c: c.get(base, params={"folderId": folder}),
        f"{service}.ListOperations": lambda c: c.get(f"{k}/operations"),
        f"{service}.Update": lambda c: c.patch(k, json={"updateMask": "name", "name": "x"}),
        f"{service}.ListAccessBindings": lambda c: c.get(f"{k}:listAccessBindings"),
        f"{service}.UpdateAccessBindings": lambda c: c.post(
            f"{k}:updateAccessBindings", json=_delta("kms.viewer", "ajeother")
        ),
        f"{service}.SetAccessBindings": lambda c: c.post(
            f"{k}:setAccessBindings",
            json={
                "accessBindings": api.get(f"{k}:listAccessBindings")
                .json()
                .get("accessBindings", [])
            },
        ),
        # Read here, before the Delete that the matrix sends last.
        f"_{service}.Operation": lambda c: c.get(f"/operations/{operation_id}"),
        f"{service}.Delete": lambda c: c.delete(k),
    }


def requests_for(api: httpx.Client, folder: str) -> tuple[dict[str, str], dict[str, Request]]:
    """Key ids (symmetric, signature, encryption), and one request per method, each of
    which succeeds for kms.admin."""
    key = create_key(api, "AES_256_HSM", folderId=folder)
    key_id = key["id"]
    old_version = key["primaryVersion"]["id"]
    api.post(f"/kms/v1/keys/{key_id}:rotate")
    ciphertext = api.post(f"/kms/v1/keys/{key_id}:encrypt", json={"plaintext": b64(b"m")}).json()[
        "ciphertext"
    ]
    operation_id = api.get(f"/kms/v1/keys/{key_id}/operations").json()["operations"][0]["id"]
    current = api.get(f"/kms/v1/keys/{key_id}").json()["primaryVersion"]["id"]
    signing = {"signatureAlgorithm": "ECDSA_NIST_P256_SHA_256"}
    encrypting = {"encryptionAlgorithm": "RSA_2048_ENC_OAEP_SHA_256"}
    sig_id = str(create_key_pair(api, SIGNATURE_KEYS, folderId=folder, **signing)["id"])
    enc_id = str(create_key_pair(api, ENCRYPTION_KEYS, folderId=folder, **encrypting)["id"])
    asymmetric_ciphertext = _ciphertext(api, enc_id)
    k = f"/kms/v1/keys/{key_id}"
    sig = f"{SIGNATURE_KEYS}/{sig_id}"
    enc = f"{ENCRYPTION_KEYS}/{enc_id}"
    calls: dict[str, Request] = {
        "SymmetricCrypto.Encrypt": lambda c: c.post(f"{k}:encrypt", json={"plaintext": "AA=="}),
        "SymmetricCrypto.Decrypt": lambda c: c.post(
            f"{k}:decrypt", json={"ciphertext": ciphertext}
        ),
        "SymmetricCrypto.ReEncrypt": lambda c: c.post(
            f"{k}:reEncrypt", json={"sourceKeyId": key_id, "ciphertext": ciphertext}
        ),
        "SymmetricCrypto.GenerateDataKey": lambda c: c.post(
            f"{k}:generateDataKey", json={"dataKeySpec": "AES_256_HSM"}
        ),
        "SymmetricKey.Create": lambda c: c.post(
            "/kms/v1/keys", json={"folderId": folder, "defaultAlgorithm": "AES_128"}
        ),
        "SymmetricKey.Get": lambda c: c.get(k),
        "SymmetricKey.List": lambda c: c.get("/kms/v1/keys", params={"folderId": folder}),
        "SymmetricKey.ListVersions": lambda c: c.get(f"{k}/versions"),
        "SymmetricKey.ListOperations": lambda c: c.get(f"{k}/operations"),
        "SymmetricKey.Update": lambda c: c.patch(k, json={"updateMask": "name", "name": "x"}),
        "SymmetricKey.Rotate": lambda c: c.post(f"{k}:rotate"),
        "SymmetricKey.SetPrimaryVersion": lambda c: c.post(
            f"{k}:setPrimaryVersion", json={"versionId": current}
        ),
        "SymmetricKey.ScheduleVersionDestruction": lambda c: c.post(
            f"{k}:scheduleVersionDestruction", json={"versionId": old_version}
        ),
        "SymmetricKey.CancelVersionDestruction": lambda c: c.post(
            f"{k}:cancelVersionDestruction", json={"versionId": old_version}
        ),
        "SymmetricKey.ListAccessBindings": lambda c: c.get(f"{k}:listAccessBindings"),
        "SymmetricKey.UpdateAccessBindings": lambda c: c.post(
            f"{k}:updateAccessBindings", json=_delta("kms.viewer", "ajeother")
        ),
        "SymmetricKey.SetAccessBindings": lambda c: c.post(
            f"{k}:setAccessBindings",
            json={
                "accessBindings": api.get(f"{k}:listAccessBindings")
                .json()
                .get("accessBindings", [])
            },
        ),
        "Operation.Get": lambda c: c.get(f"/operations/{operation_id}"),
        "AsymmetricSignatureCrypto.Sign": lambda c: c.post(
            f"{sig}:sign", json={"message": b64(b"m")}
        ),
        "AsymmetricSignatureCrypto.SignHash": lambda c: c.post(
            f"{sig}:signHash", json={"hash": b64(bytes(32))}
        ),
        "AsymmetricSignatureCrypto.GetPublicKey": lambda c: c.get(f"{sig}/publicKey"),
        "AsymmetricEncryptionCrypto.Decrypt": lambda c: c.post(
            f"{enc}:decrypt", json={"ciphertext": asymmetric_ciphertext}
        ),
        "AsymmetricEncryptionCrypto.GetPublicKey": lambda c: c.get(f"{enc}/publicKey"),
    }
    calls.update(
        _key_pair_requests(api, folder, SIGNATURE_KEYS, "AsymmetricSignatureKey", sig_id, signing)
    )
    calls.update(
        _key_pair_requests(
            api, folder, ENCRYPTION_KEYS, "AsymmetricEncryptionKey", enc_id, encrypting
        )
    )
    # Deletes last: the other requests need their keys.
    for method in [m for m in calls if m.endswith(".Delete")]:
        calls[method] = calls.pop(method)
    calls["SymmetricKey.Delete"] = lambda c: c.delete(k)
    return {"key": key_id, "signature": sig_id, "encryption": enc_id}, calls


FOLDER_METHODS = {
    f"{service}.{verb}"
    for service in ("SymmetricKey", "AsymmetricSignatureKey", "AsymmetricEncryptionKey")
    for verb in ("Create", "List")
}
# Public methods (IamToken.Create) carry their own credential and need no role; the matrix
# calls methods over REST (Operation.Cancel is gRPC only).
KEY_METHODS = [
    m for m in METHODS if not m.startswith("Folder.") and not METHODS[m].public and METHODS[m].rest
]
KEY_PATHS = {"key": "/kms/v1/keys", "signature": SIGNATURE_KEYS, "encryption": ENCRYPTION_KEYS}


def allowed(role: str, method: str) -> bool:
    granted = ROLE_PERMISSIONS[role]
    if method == "SymmetricCrypto.ReEncrypt":
        return Permission.ENCRYPT in granted and Permission.DECRYPT in granted
    return METHODS[method].permission in granted


def _method(name: str) -> str:
    """The method a request calls: ``_<Service>.Operation`` is an Operation.Get."""
    return "Operation.Get" if name.startswith("_") else name


@pytest.mark.parametrize("scope", ["folder", "key"])
@pytest.mark.parametrize("role", sorted(ROLE_PERMISSIONS))
def test_role_method_matrix(api, runtime, base_url, role, scope) -> None:
    folder = f"b1gmatrix-{scope}-{role.replace('.', '-')}"[:50]
    key_ids, calls = requests_for(api, folder)
    principal_id, client = principal_client(runtime, base_url, f"{role}-{scope}")
    if scope == "folder":
        bind(api, f"/kms-hsm/v1/folders/{folder}", role, principal_id)
    else:
        for kind, key_id in key_ids.items():
            bind(api, f"{KEY_PATHS[kind]}/{key_id}", role, principal_id)
    assert {_method(m) for m in calls} == set(KEY_METHODS)
    with client:
        for name, call in calls.items():
            method = _method(name)
            r = call(client)
            folder_level = method in FOLDER_METHODS
            if allowed(role, method) and (scope == "folder" or not folder_level):
                assert r.status_code == 200, (role, scope, name, r.text)
            else:
                assert r.status_code == 403, (role, scope, name, r.text)
                assert r.json()["code"] == 7


def test_no_role_reveals_nothing(api, runtime, base_url) -> None:
    folder = "b1ghidden"
    key_ids, calls = requests_for(api, folder)
    _, stranger = principal_client(runtime, base_url, "stranger")
    missing_id = "abjdoesnotexist00000"
    with stranger:
        for name, call in calls.items():
            r = call(stranger)
            if _method(name) in FOLDER_METHODS:
                assert r.status_code == 403, (name, r.text)
            else:
                assert r.status_code == 404, (name, r.text)
                missing = stranger.get(f"/kms/v1/keys/{missing_id}")
                assert r.json()["code"] == missing.json()["code"] == 5
                # Word for word what a key that does not exist gets.
                message = r.json()["message"]
                for key_id in key_ids.values():
                    message = message.replace(key_id, missing_id)
                assert message in (
                    missing.json()["message"],
                    f"operation {r.json()['message'].split()[1]} not found",
                ), name


def test_all_authenticated_users_binding_and_key_scope(api, runtime, base_url) -> None:
    a = create_key(api, "AES_256", folderId="b1gshared")
    b = create_key(api, "AES_256", folderId="b1gshared")
    r = api.post(
        f"/kms/v1/keys/{a['id']}:setAccessBindings",
        json={
            "accessBindings": [
                {
                    "roleId": "kms.keys.encrypter",
                    "subject": {"id": "allAuthenticatedUsers", "type": "system"},
                }
            ]
        },
    )
    assert r.status_code == 200, r.text
    assert r.json()["metadata"]["@type"].endswith("yandex.cloud.access.SetAccessBindingsMetadata")
    assert r.json()["response"] == {"@type": "type.googleapis.com/google.protobuf.Empty"}
    _, anyone = principal_client(runtime, base_url, "anyone")
    with anyone:
        assert (
            anyone.post(f"/kms/v1/keys/{a['id']}:encrypt", json={"plaintext": "AA=="}).status_code
            == 200
        )
        assert (
            anyone.post(f"/kms/v1/keys/{b['id']}:encrypt", json={"plaintext": "AA=="}).status_code
            == 404
        )
    listed = api.get(f"/kms/v1/keys/{a['id']}:listAccessBindings").json()
    assert listed["accessBindings"] == [
        {
            "roleId": "kms.keys.encrypter",
            "subject": {"id": "allAuthenticatedUsers", "type": "system"},
        }
    ]


@pytest.mark.parametrize(
    "body",
    [
        {
            "accessBindings": [
                {"roleId": "kms.root", "subject": {"id": "x", "type": "serviceAccount"}}
            ]
        },
        {"accessBindings": [{"roleId": "kms.viewer", "subject": {"id": "x", "type": "robot"}}]},
        {"accessBindings": [{"roleId": "kms.viewer"}]},
        {"accessBindings": "nope"},
    ],
)
def test_bad_bindings_are_400(api, body) -> None:
    key = create_key(api, "AES_128")
    r = api.post(f"/kms/v1/keys/{key['id']}:setAccessBindings", json=body)
    assert r.status_code == 400, r.text
    r = api.post(f"/kms/v1/keys/{key['id']}:updateAccessBindings", json={"accessBindingDeltas": []})
    assert r.status_code == 400


def test_revoked_and_expired_tokens_are_401(api, runtime, base_url) -> None:
    from datetime import timedelta

    principal = runtime.auth.create_principal("short-lived")
    token, token_id = runtime.auth.issue_token(principal.id)
    expired, _ = runtime.auth.issue_token(principal.id, runtime.keys.clock() - timedelta(seconds=1))
    key = create_key(api, "AES_128")
    url = f"{base_url}/kms/v1/keys/{key['id']}"
    assert httpx.get(url, headers={"Authorization": f"Bearer {token}"}).status_code == 404
    assert httpx.get(url, headers={"Authorization": f"Bearer {expired}"}).status_code == 401
    runtime.auth.revoke_token(token_id)
    assert httpx.get(url, headers={"Authorization": f"Bearer {token}"}).status_code == 401
    assert len(token) >= 6 + 43  # 256 random bits
