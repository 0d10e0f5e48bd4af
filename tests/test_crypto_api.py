"""SymmetricCrypto over real HTTP against the real token: round trips, data keys, errors."""

from __future__ import annotations

import base64
import itertools
import time

import httpx
import pytest

from tests.conftest import create_key

ALGORITHMS = ["AES_128", "AES_192", "AES_256", "AES_256_HSM"]
SPECS = {
    "AES_128": 16,
    "AES_192": 24,
    "AES_256": 32,
    "AES_256_HSM": 32,
    "SYMMETRIC_ALGORITHM_UNSPECIFIED": 32,
}
UNIFORM = "ciphertext is invalid or was not produced with this key and context"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def keys(api: httpx.Client) -> dict[str, str]:
    return {alg: str(create_key(api, alg)["id"]) for alg in ALGORITHMS}


def encrypt(api: httpx.Client, key_id: str, plaintext: bytes, aad: bytes | None = None) -> dict:
    body = {"plaintext": b64(plaintext)}
    if aad is not None:
        body["aadContext"] = b64(aad)
    r = api.post(f"/kms/v1/keys/{key_id}:encrypt", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def decrypt(api: httpx.Client, key_id: str, ciphertext: str, aad: bytes | None = None):
    body = {"ciphertext": ciphertext}
    if aad is not None:
        body["aadContext"] = b64(aad)
    return api.post(f"/kms/v1/keys/{key_id}:decrypt", json=body)


def test_create_returns_operation_with_primary_version(api: httpx.Client) -> None:
    r = api.post(
        "/kms/v1/keys",
        json={
            "folderId": "b1gfolder",
            "name": "demo",
            "description": "d",
            "labels": {"env": "test"},
            "defaultAlgorithm": "AES_256_HSM",
            "rotationPeriod": "86400s",
            "deletionProtection": True,
        },
    )
    assert r.status_code == 200, r.text
    op = r.json()
    assert op["done"] is True
    assert (
        op["metadata"]["@type"]
        == "type.googleapis.com/yandex.cloud.kms.v1.CreateSymmetricKeyMetadata"
    )
    key = op["response"]
    assert key["@type"] == "type.googleapis.com/yandex.cloud.kms.v1.SymmetricKey"
    assert op["metadata"]["keyId"] == key["id"]
    assert op["metadata"]["primaryVersionId"] == key["primaryVersion"]["id"]
    assert key["primaryVersion"]["primary"] is True
    assert key["primaryVersion"]["hostedByHsm"] is True
    assert key["primaryVersion"]["status"] == "ACTIVE"
    assert key["status"] == "ACTIVE"
    assert key["rotationPeriod"] == "86400s"
    assert key["labels"] == {"env": "test"}
    assert key["createdAt"].endswith("Z")
    got = api.get(f"/kms/v1/keys/{key['id']}").json()
    assert {k: v for k, v in key.items() if k != "@type"} == got
    again = api.get(f"/operations/{op['id']}").json()
    assert again == op


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("aad", [None, b"", b"context-1"])
def test_encrypt_decrypt_round_trip(api, keys, algorithm, aad) -> None:
    key_id = keys[algorithm]
    for plaintext in (b"x", b"hello world", bytes(range(256)) * 128):
        enc = encrypt(api, key_id, plaintext, aad)
        assert enc["keyId"] == key_id
        r = decrypt(api, key_id, enc["ciphertext"], aad)
        assert r.status_code == 200, r.text
        assert base64.b64decode(r.json().get("plaintext", "")) == plaintext
        assert r.json()["versionId"] == enc["versionId"]


@pytest.mark.parametrize(
    ("algorithm", "spec", "skip"),
    list(itertools.product(ALGORITHMS, SPECS, [False, True])),
)
def test_generate_data_key_matrix(api, keys, algorithm, spec, skip) -> None:
    key_id = keys[algorithm]
    r = api.post(
        f"/kms/v1/keys/{key_id}:generateDataKey",
        json={"dataKeySpec": spec, "skipPlaintext": skip, "aadContext": b64(b"ctx")},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    if skip:
        assert not body.get("dataKeyPlaintext")
    else:
        assert len(base64.b64decode(body["dataKeyPlaintext"])) == SPECS[spec]
    opened = decrypt(api, key_id, body["dataKeyCiphertext"], b"ctx")
    assert opened.status_code == 200, opened.text
    data_key = base64.b64decode(opened.json()["plaintext"])
    assert len(data_key) == SPECS[spec]
    if not skip:
        assert data_key == base64.b64decode(body["dataKeyPlaintext"])
    assert decrypt(api, key_id, body["dataKeyCiphertext"], b"other").status_code == 400


@pytest.mark.parametrize(
    ("source", "target"), [("AES_256", "AES_256_HSM"), ("AES_256_HSM", "AES_128")]
)
def test_re_encrypt_across_keys_and_back(api, keys, source, target) -> None:
    original = encrypt(api, keys[source], b"secret", b"a1")
    r = api.post(
        f"/kms/v1/keys/{keys[target]}:reEncrypt",
        json={
            "sourceKeyId": keys[source],
            "sourceAadContext": b64(b"a1"),
            "aadContext": b64(b"a2"),
            "ciphertext": original["ciphertext"],
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["keyId"] == keys[target]
    assert body["sourceKeyId"] == keys[source]
    assert body["sourceVersionId"] == original["versionId"]
    r2 = decrypt(api, keys[target], body["ciphertext"], b"a2")
    assert base64.b64decode(r2.json()["plaintext"]) == b"secret"
    back = api.post(
        f"/kms/v1/keys/{keys[source]}:reEncrypt",
        json={
            "sourceKeyId": keys[target],
            "sourceAadContext": b64(b"a2"),
            "ciphertext": body["ciphertext"],
        },
    )
    assert back.status_code == 200, back.text
    r3 = decrypt(api, keys[source], back.json()["ciphertext"])
    assert base64.b64decode(r3.json()["plaintext"]) == b"secret"


def test_encrypt_with_explicit_version(api, keys) -> None:
    key = api.get(f"/kms/v1/keys/{keys['AES_256_HSM']}").json()
    version = key["primaryVersion"]["id"]
    r = api.post(
        f"/kms/v1/keys/{key['id']}:encrypt",
        json={"versionId": version, "plaintext": b64(b"v")},
    )
    assert r.status_code == 200 and r.json()["versionId"] == version
    r = api.post(
        f"/kms/v1/keys/{key['id']}:encrypt",
        json={"versionId": "abjnosuchversion", "plaintext": b64(b"v")},
    )
    assert r.status_code == 404 and r.json()["code"] == 5


@pytest.mark.parametrize("algorithm", ["AES_256", "AES_256_HSM"])
def test_tampered_wrong_aad_wrong_key_truncated_all_look_the_same(api, keys, algorithm) -> None:
    key_id = keys[algorithm]
    enc = encrypt(api, key_id, b"payload", b"right")
    raw = base64.b64decode(enc["ciphertext"])
    other_key = keys["AES_128" if algorithm == "AES_256_HSM" else "AES_256_HSM"]
    cases = {
        "header": bytes([raw[0]]) + bytes([raw[1]]) + bytes([raw[2] ^ 1]) + raw[3:],
        "nonce": raw[:25] + bytes([raw[25] ^ 1]) + raw[26:],
        "body": raw[:-20] + bytes([raw[-20] ^ 1]) + raw[-19:],
        "tag": raw[:-1] + bytes([raw[-1] ^ 0x80]),
        "truncated": raw[:-1],
        "short": raw[:5],
        "format": bytes([9]) + raw[1:],
    }
    for name, ciphertext in cases.items():
        r = decrypt(api, key_id, b64(ciphertext), b"right")
        assert r.status_code == 400, name
        assert r.json()["code"] == 3 and r.json()["message"] == UNIFORM, name
    for r in (
        decrypt(api, key_id, enc["ciphertext"], b"wrong"),
        decrypt(api, key_id, enc["ciphertext"]),
        decrypt(api, other_key, enc["ciphertext"], b"right"),
    ):
        assert r.status_code == 400
        assert r.json() == {**r.json(), "code": 3, "message": UNIFORM}


def test_unknown_key_is_404(api) -> None:
    for path, body in (
        ("abjunknownkey00000000:encrypt", {"plaintext": "AA=="}),
        ("abjunknownkey00000000:decrypt", {"ciphertext": "AQE="}),
        ("abjunknownkey00000000:generateDataKey", {"dataKeySpec": "AES_256"}),
    ):
        r = api.post(f"/kms/v1/keys/{path}", json=body)
        assert r.status_code == 404, (path, r.text)
        assert r.json()["code"] == 5
    assert api.get("/kms/v1/keys/abjunknownkey00000000").status_code == 404
    assert api.get("/operations/abonosuchop").status_code == 404


@pytest.mark.parametrize(
    ("verb", "body", "field"),
    [
        ("encrypt", {"plaintext": "not base64!"}, "plaintext"),
        ("encrypt", {"plaintext": 5}, "plaintext"),
        ("encrypt", {}, "plaintext"),
        ("encrypt", {"plaintext": ""}, "plaintext"),
        ("encrypt", {"plaintext": b64(b"x" * 32769)}, "plaintext"),
        ("encrypt", {"plaintext": "AA==", "aadContext": b64(b"a" * 8193)}, "aadContext"),
        ("encrypt", {"plaintext": "AA==", "versionId": "v" * 51}, "versionId"),
        ("encrypt", {"plaintext": "AA==", "bogus": 1}, "bogus"),
        ("generateDataKey", {"dataKeySpec": "AES_512"}, "dataKeySpec"),
        ("generateDataKey", {"dataKeySpec": 77}, "dataKeySpec"),
        ("generateDataKey", {"skipPlaintext": "yes"}, "skipPlaintext"),
        ("decrypt", {"ciphertext": "%%%"}, "ciphertext"),
        ("reEncrypt", {"ciphertext": "AA=="}, "sourceKeyId"),
        ("reEncrypt", {"ciphertext": "AA==", "sourceKeyId": "s" * 51}, "sourceKeyId"),
    ],
)
def test_bad_input_is_400_naming_the_field(api, keys, verb, body, field) -> None:
    r = api.post(f"/kms/v1/keys/{keys['AES_256']}:{verb}", json=body)
    assert r.status_code == 400, r.text
    error = r.json()
    assert error["code"] == 3
    assert field in error["message"]
    assert any(d.get("requestId") for d in error["details"])


def test_over_long_key_id_and_bad_bodies(api) -> None:
    r = api.post(f"/kms/v1/keys/{'k' * 51}:encrypt", json={"plaintext": "AA=="})
    assert r.status_code == 400 and "keyId" in r.json()["message"]
    r = api.post(
        "/kms/v1/keys/abc:encrypt", content=b"[1,2]", headers={"content-type": "application/json"}
    )
    assert r.status_code == 400
    r = api.post(
        "/kms/v1/keys/abc:encrypt", content=b"{", headers={"content-type": "application/json"}
    )
    assert r.status_code == 400
    r = api.post(
        "/kms/v1/keys/abc:encrypt", content=b"plaintext=AA", headers={"content-type": "text/plain"}
    )
    assert r.status_code == 400
    r = api.post(
        "/kms/v1/keys/abc:encrypt",
        content=b"{" + b" " * (300 * 1024) + b"}",
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 400


def test_snake_case_and_urlsafe_base64_are_accepted(api, keys) -> None:
    r = api.post(
        f"/kms/v1/keys/{keys['AES_256']}:encrypt",
        json={"plaintext": "-_8", "aad_context": "YQ"},
    )
    assert r.status_code == 200, r.text
    opened = decrypt(api, keys["AES_256"], r.json()["ciphertext"], b"a")
    assert base64.b64decode(opened.json()["plaintext"]) == b"\xfb\xff"


def test_missing_or_wrong_token_is_401(base_url: str, keys) -> None:
    url = f"{base_url}/kms/v1/keys/{keys['AES_256']}:encrypt"
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic abc"}):
        r = httpx.post(url, json={"plaintext": "AA=="}, headers=headers)
        assert r.status_code == 401, headers
        assert r.json()["code"] == 16
    r = httpx.get(f"{base_url}/kms/v1/keys/{keys['AES_256']}")
    assert r.status_code == 401


def test_create_validation(api) -> None:
    cases = [
        ({"name": "x", "defaultAlgorithm": "AES_256"}, "folderId"),
        ({"folderId": "f", "defaultAlgorithm": "AES_999"}, "defaultAlgorithm"),
        ({"folderId": "f"}, "defaultAlgorithm"),
        ({"folderId": "f", "defaultAlgorithm": "GOST_R_3412_2015_K"}, "defaultAlgorithm"),
        ({"folderId": "f", "defaultAlgorithm": "AES_256", "name": "n" * 101}, "name"),
        ({"folderId": "f", "defaultAlgorithm": "AES_256", "labels": {"Bad": "x"}}, "labels"),
        (
            {"folderId": "f", "defaultAlgorithm": "AES_256", "rotationPeriod": "1d"},
            "rotationPeriod",
        ),
        (
            {"folderId": "f", "defaultAlgorithm": "AES_256", "rotationPeriod": "0s"},
            "rotationPeriod",
        ),
    ]
    for body, field in cases:
        r = api.post("/kms/v1/keys", json=body)
        assert r.status_code == 400, (body, r.text)
        assert field in r.json()["message"], (body, r.json())


def test_a_readyz_flood_makes_one_token_round_trip_a_second(base_url: str, runtime) -> None:
    """/readyz needs no credentials: its token round-trip is shared for a second, so a
    flood of probes cannot become a flood of HSM calls (issue 15)."""
    with httpx.Client(base_url=base_url) as client:
        before = runtime.hsm_probes
        started = time.monotonic()
        for _ in range(30):
            r = client.get("/readyz")
            assert r.status_code == 200, r.text
            assert r.json()["checks"] == {"database": "ok", "hsm": "ok"}
        seconds = time.monotonic() - started
    assert 1 <= runtime.hsm_probes - before <= int(seconds) + 2
