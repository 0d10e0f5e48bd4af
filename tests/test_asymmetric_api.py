"""Asymmetric keys over real HTTP with the real token (issue 17's acceptance over REST).

Every signature algorithm signs (Sign and SignHash) and `cryptography` verifies from the
served PEM; RSA-OAEP ciphertexts made by `cryptography` decrypt, and every bad ciphertext
gets the same answer; roles, family isolation, INACTIVE, deletion protection, paging,
Operations, access bindings, and at the end an intact audit chain with these events in it.

Keys are made once per module (4 of them RSA-4096: 1.4-2.5 s each in SoftHSM2).
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import httpx
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from kms_hsm.domain.asymmetric import EncryptionAlgorithm, SignatureAlgorithm
from kms_hsm.service.runtime import Runtime
from tests.conftest import create_key
from tests.test_audit import cli, snapshot_db

SIGNATURE_KEYS = "/kms/v1/asymmetricSignatureKeys"
ENCRYPTION_KEYS = "/kms/v1/asymmetricEncryptionKeys"
FOLDER = "b1gasymmetric"
MISSING = "abjdoesnotexist00000"
HASHES = {"sha256": hashes.SHA256, "sha384": hashes.SHA384, "sha512": hashes.SHA512}
CURVES = {"secp256r1": 256, "secp384r1": 384, "secp521r1": 521, "secp256k1": 256}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(text: str) -> bytes:
    return base64.b64decode(text)


def error(r: httpx.Response, status: int, code: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body: dict[str, Any] = r.json()
    assert body["code"] == code, body
    return body


def op_ok(r: httpx.Response, metadata_type: str) -> dict[str, Any]:
    """A done Operation whose metadata is ``metadata_type`` (the proto's full name)."""
    assert r.status_code == 200, r.text
    op: dict[str, Any] = r.json()
    assert op["done"] is True
    assert op["metadata"]["@type"] == f"type.googleapis.com/yandex.cloud.kms.v1.{metadata_type}"
    for field in ("id", "createdAt", "createdBy", "modifiedAt", "description"):
        assert op[field], field
    return op


SIG = "asymmetricsignature."
ENC = "asymmetricencryption."


def create_pair(api: httpx.Client, base: str, algorithm: str, **fields: Any) -> dict[str, Any]:
    """Create a key of the family at ``base``; the key message from the Operation."""
    signature = base == SIGNATURE_KEYS
    body = {"folderId": FOLDER, "name": f"k-{algorithm.lower()}", **fields}
    body["signatureAlgorithm" if signature else "encryptionAlgorithm"] = algorithm
    r = api.post(base, json=body)
    kind = f"{SIG}CreateAsymmetricSignature" if signature else f"{ENC}CreateAsymmetricEncryption"
    op = op_ok(r, f"{kind}KeyMetadata")
    key: dict[str, Any] = op["response"]
    assert op["metadata"]["keyId"] == key["id"]
    return key


def public_key(api: httpx.Client, base: str, key_id: str) -> Any:
    r = api.get(f"{base}/{key_id}/publicKey")
    assert r.status_code == 200, r.text
    assert r.json()["keyId"] == key_id
    pem = r.json()["publicKey"]
    assert pem.startswith("-----BEGIN PUBLIC KEY-----\n"), pem
    return serialization.load_pem_public_key(pem.encode())


@pytest.fixture(scope="module")
def signature_keys(api: httpx.Client) -> dict[SignatureAlgorithm, str]:
    """One key per signature algorithm (13)."""
    return {
        a: create_pair(api, SIGNATURE_KEYS, a.name)["id"]
        for a in SignatureAlgorithm
        if a != SignatureAlgorithm.ASYMMETRIC_SIGNATURE_ALGORITHM_UNSPECIFIED
    }


@pytest.fixture(scope="module")
def encryption_keys(api: httpx.Client) -> dict[EncryptionAlgorithm, str]:
    """One key per encryption algorithm (3)."""
    return {
        a: create_pair(api, ENCRYPTION_KEYS, a.name)["id"]
        for a in EncryptionAlgorithm
        if a != EncryptionAlgorithm.ASYMMETRIC_ENCRYPTION_ALGORITHM_UNSPECIFIED
    }


@pytest.fixture(scope="module")
def signer(api: httpx.Client) -> str:
    """A P-256 key for the lifecycle tests (cheap to make)."""
    return str(create_pair(api, SIGNATURE_KEYS, "ECDSA_NIST_P256_SHA_256")["id"])


@pytest.fixture(scope="module")
def decrypter(encryption_keys: dict[EncryptionAlgorithm, str]) -> str:
    return encryption_keys[EncryptionAlgorithm.RSA_2048_ENC_OAEP_SHA_256]


def oaep_sha256() -> padding.OAEP:
    return padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), None)


# --- Signatures ---


def _verify(key: Any, algorithm: SignatureAlgorithm, signature: bytes, data: bytes, pre: bool):
    spec = algorithm.spec
    h = HASHES[spec.hash]()
    chosen: Any = utils.Prehashed(h) if pre else h
    if spec.key_type == "RSA":
        assert isinstance(key, rsa.RSAPublicKey) and key.key_size == spec.rsa_bits
        assert len(signature) == spec.modulus_bytes
        pss = padding.PSS(padding.MGF1(HASHES[spec.hash]()), h.digest_size)
        key.verify(signature, data, pss, chosen)
    else:
        assert isinstance(key, ec.EllipticCurvePublicKey)
        assert key.curve.name == spec.curve and key.curve.key_size == CURVES[spec.curve]
        utils.decode_dss_signature(signature)  # DER, not r||s
        key.verify(signature, data, ec.ECDSA(chosen))


@pytest.mark.parametrize(
    "algorithm",
    [a for a in SignatureAlgorithm if a.value],
    ids=lambda a: a.name,
)
def test_sign_and_sign_hash_verify_with_the_served_public_key(
    api, signature_keys, algorithm
) -> None:
    key_id = signature_keys[algorithm]
    key = api.get(f"{SIGNATURE_KEYS}/{key_id}").json()
    assert key["signatureAlgorithm"] == algorithm.name and key["status"] == "ACTIVE"
    verifier = public_key(api, SIGNATURE_KEYS, key_id)
    message = b"a message to sign, " + algorithm.name.encode()
    r = api.post(f"{SIGNATURE_KEYS}/{key_id}:sign", json={"message": b64(message)})
    assert r.status_code == 200, r.text
    assert r.json()["keyId"] == key_id
    signature = unb64(r.json()["signature"])
    _verify(verifier, algorithm, signature, message, pre=False)
    with pytest.raises(InvalidSignature):
        _verify(verifier, algorithm, signature, message + b"!", pre=False)

    digest = hashlib.new(algorithm.spec.hash, b"signed by hash").digest()
    r = api.post(f"{SIGNATURE_KEYS}/{key_id}:signHash", json={"hash": b64(digest)})
    assert r.status_code == 200, r.text
    assert r.json()["keyId"] == key_id
    _verify(verifier, algorithm, unb64(r.json()["signature"]), digest, pre=True)
    # The SignHash of a message's digest is a signature of the message.
    _verify(verifier, algorithm, unb64(r.json()["signature"]), b"signed by hash", pre=False)


def _field(body: dict[str, Any]) -> str:
    violations = [d for d in body["details"] if d["@type"].endswith("google.rpc.BadRequest")]
    return str(violations[0]["fieldViolations"][0]["field"]) if violations else ""


@pytest.mark.parametrize(
    "algorithm",
    [SignatureAlgorithm.ECDSA_NIST_P384_SHA_384, SignatureAlgorithm.RSA_2048_SIGN_PSS_SHA_512],
    ids=lambda a: a.name,
)
def test_sign_limits(api, signature_keys, algorithm) -> None:
    url = f"{SIGNATURE_KEYS}/{signature_keys[algorithm]}"
    size = algorithm.spec.digest_size
    for wrong in (size - 1, size + 1, 32 if size != 32 else 48, 4096):
        body = error(api.post(f"{url}:signHash", json={"hash": b64(bytes(wrong))}), 400, 3)
        # The service names the field in the message (no BadRequest detail for this check).
        assert body["message"].startswith("hash") and str(size) in body["message"], body
    body = error(api.post(f"{url}:signHash", json={"hash": b64(bytes(4097))}), 400, 3)
    assert "hash" in body["message"], body
    assert _field(error(api.post(f"{url}:signHash", json={}), 400, 3)) == "hash"

    assert api.post(f"{url}:sign", json={"message": b64(bytes(32768))}).status_code == 200
    body = error(api.post(f"{url}:sign", json={"message": b64(bytes(32769))}), 400, 3)
    assert _field(body) == "message", body
    assert _field(error(api.post(f"{url}:sign", json={"message": ""}), 400, 3)) == "message"
    assert _field(error(api.post(f"{url}:sign", json={}), 400, 3)) == "message"
    body = error(api.post(f"{url}:sign", json={"message": "not base64!"}), 400, 3)
    assert _field(body) == "message"
    assert _field(error(api.post(f"{url}:sign", json={"plaintext": "AA=="}), 400, 3)) == "plaintext"


def test_verbs_take_only_their_http_method(api, signer, decrypter) -> None:
    for url in (f"{SIGNATURE_KEYS}/{signer}:sign", f"{ENCRYPTION_KEYS}/{decrypter}:decrypt"):
        for verb in ("GET", "PATCH", "DELETE"):
            r = api.request(verb, url)
            error(r, 405, 12)
            assert r.headers["allow"] == "POST"
    error(api.post(f"{SIGNATURE_KEYS}/{signer}:listAccessBindings"), 405, 12)
    error(api.post(f"{SIGNATURE_KEYS}/{signer}/publicKey"), 405, 12)


def test_data_plane_verbs_refuse_bad_requests_like_the_others(api, base_url, signer, decrypter):
    """Sign, SignHash and Decrypt are served by the data plane's fast path (api/app.py)."""
    for url in (
        f"{SIGNATURE_KEYS}/{signer}:sign",
        f"{SIGNATURE_KEYS}/{signer}:signHash",
        f"{ENCRYPTION_KEYS}/{decrypter}:decrypt",
    ):
        error(httpx.post(base_url + url, json={}), 401, 16)
        r = api.post(url, content=b"x" * (256 * 1024 + 1))
        assert "request body must be at most" in error(r, 400, 3)["message"]
        r = api.post(url, content=b"{}", headers={"content-type": "text/plain"})
        assert "content-type" in error(r, 400, 3)["message"]
        error(api.post(url, content=b"{"), 400, 3)
        assert api.post(url, json={"message": "AA=="}).headers["x-request-id"]
    # An unknown verb, or a verb of another family, is no method of these paths.
    error(api.post(f"{SIGNATURE_KEYS}/{signer}:decrypt", json={}), 405, 12)
    error(api.post(f"{ENCRYPTION_KEYS}/{decrypter}:sign", json={}), 405, 12)
    error(api.post(f"{SIGNATURE_KEYS}/{signer}/x:sign", json={}), 404, 5)


# --- Encryption ---


@pytest.mark.parametrize(
    "algorithm", [a for a in EncryptionAlgorithm if a.value], ids=lambda a: a.name
)
def test_oaep_ciphertexts_from_cryptography_decrypt(api, encryption_keys, algorithm) -> None:
    key_id = encryption_keys[algorithm]
    key = api.get(f"{ENCRYPTION_KEYS}/{key_id}").json()
    assert key["encryptionAlgorithm"] == algorithm.name
    pub = public_key(api, ENCRYPTION_KEYS, key_id)
    assert isinstance(pub, rsa.RSAPublicKey) and pub.key_size == algorithm.spec.rsa_bits
    longest = algorithm.spec.max_plaintext
    assert longest == {2048: 190, 3072: 318, 4096: 446}[pub.key_size]
    for message in (b"\x01", b"\x00", (bytes(range(256)) * 2)[:longest], bytes(longest)):
        ciphertext = pub.encrypt(message, oaep_sha256())
        r = api.post(f"{ENCRYPTION_KEYS}/{key_id}:decrypt", json={"ciphertext": b64(ciphertext)})
        assert r.status_code == 200, r.text
        assert r.json() == {"keyId": key_id, "plaintext": b64(message)}
    with pytest.raises(ValueError):
        pub.encrypt(bytes(longest + 1), oaep_sha256())


def _without_request_id(body: dict[str, Any]) -> dict[str, Any]:
    details = [d for d in body["details"] if not d["@type"].endswith("google.rpc.RequestInfo")]
    return {**body, "details": details}


@pytest.mark.parametrize(
    "algorithm",
    [EncryptionAlgorithm.RSA_2048_ENC_OAEP_SHA_256, EncryptionAlgorithm.RSA_4096_ENC_OAEP_SHA_256],
    ids=lambda a: a.name,
)
def test_every_bad_ciphertext_gets_the_same_answer(api, encryption_keys, algorithm) -> None:
    key_id = encryption_keys[algorithm]
    pub = public_key(api, ENCRYPTION_KEYS, key_id)
    k = algorithm.spec.modulus_bytes
    good = pub.encrypt(b"secret", oaep_sha256())
    flipped = bytearray(good)
    flipped[k // 2] ^= 0x10
    oaep_sha1 = padding.OAEP(padding.MGF1(hashes.SHA1()), hashes.SHA1(), None)
    mixed = padding.OAEP(padding.MGF1(hashes.SHA1()), hashes.SHA256(), None)
    bad = {
        "oaep-sha1": pub.encrypt(b"secret", oaep_sha1),
        "oaep-sha256-mgf1-sha1": pub.encrypt(b"secret", mixed),
        "pkcs1v15": pub.encrypt(b"secret", padding.PKCS1v15()),
        "flipped-bit": bytes(flipped),
        "flipped-first-byte": bytes([good[0] ^ 0x01]) + good[1:],
        "short": good[:-1],
        "one-byte": b"\x00",
        "long": good + b"\x00",
        "all-zero": bytes(k),
        "above-modulus": b"\xff" * k,
    }
    answers = {}
    for name, ciphertext in bad.items():
        r = api.post(f"{ENCRYPTION_KEYS}/{key_id}:decrypt", json={"ciphertext": b64(ciphertext)})
        assert r.status_code == 400, (name, r.text)
        answers[name] = (r.status_code, r.headers["content-type"], _without_request_id(r.json()))
    first = next(iter(answers.values()))
    assert first[2]["code"] == 3 and first[2]["details"] == [], first
    assert all(answer == first for answer in answers.values()), answers
    # The raw bodies differ in the request id only.
    r1 = api.post(f"{ENCRYPTION_KEYS}/{key_id}:decrypt", json={"ciphertext": b64(bad["short"])})
    r2 = api.post(f"{ENCRYPTION_KEYS}/{key_id}:decrypt", json={"ciphertext": b64(bytes(k))})
    rid1, rid2 = r1.headers["x-request-id"], r2.headers["x-request-id"]
    assert r1.content.replace(rid1.encode(), b"") == r2.content.replace(rid2.encode(), b"")
    # An empty ciphertext is a missing field, named as such.
    assert _field(error(api.post(f"{ENCRYPTION_KEYS}/{key_id}:decrypt", json={}), 400, 3)) == (
        "ciphertext"
    )


# --- Roles ---


def principal_client(runtime: Runtime, base_url: str, name: str) -> tuple[str, httpx.Client]:
    principal = runtime.auth.create_principal(name)
    token, _ = runtime.auth.issue_token(principal.id)
    client = httpx.Client(
        base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    return principal.id, client


def delta(role: str, subject: str, action: str = "ADD") -> dict[str, Any]:
    return {
        "accessBindingDeltas": [
            {
                "action": action,
                "accessBinding": {
                    "roleId": role,
                    "subject": {"id": subject, "type": "serviceAccount"},
                },
            }
        ]
    }


# What each role may do of: Sign, SignHash, signature GetPublicKey, Decrypt, encryption
# GetPublicKey, Get (both families), List (both families).
ROLE_TABLE = {
    "kms.asymmetricSignatureKeys.signer": (1, 1, 1, 0, 0, 0, 0),
    "kms.asymmetricSignatureKeys.publicKeyViewer": (0, 0, 1, 0, 0, 0, 0),
    "kms.asymmetricEncryptionKeys.decrypter": (0, 0, 0, 1, 1, 0, 0),
    "kms.asymmetricEncryptionKeys.publicKeyViewer": (0, 0, 0, 0, 1, 0, 0),
    "kms.viewer": (0, 0, 0, 0, 0, 1, 1),
    "kms.auditor": (0, 0, 0, 0, 0, 1, 1),
    "kms.keys.encrypterDecrypter": (0, 0, 0, 0, 0, 1, 0),
    "kms.editor": (1, 1, 1, 1, 1, 1, 1),
}


@pytest.fixture(scope="module")
def role_folder_keys(api: httpx.Client) -> tuple[str, str, bytes]:
    """A folder of its own with a P-256 signature key and an RSA-2048 encryption key."""
    folder = "b1gasymroles"
    sig = create_pair(api, SIGNATURE_KEYS, "ECDSA_NIST_P256_SHA_256", folderId=folder)["id"]
    enc = create_pair(api, ENCRYPTION_KEYS, "RSA_2048_ENC_OAEP_SHA_256", folderId=folder)["id"]
    ciphertext = public_key(api, ENCRYPTION_KEYS, enc).encrypt(b"m", oaep_sha256())
    return sig, enc, ciphertext


@pytest.mark.parametrize("role", sorted(ROLE_TABLE))
def test_roles(api, runtime, base_url, role_folder_keys, role) -> None:
    sig, enc, ciphertext = role_folder_keys
    principal_id, client = principal_client(runtime, base_url, f"asym-{role}")
    r = api.post(
        "/kms-hsm/v1/folders/b1gasymroles:updateAccessBindings", json=delta(role, principal_id)
    )
    assert r.status_code == 200, r.text
    s, e = f"{SIGNATURE_KEYS}/{sig}", f"{ENCRYPTION_KEYS}/{enc}"
    calls = [
        lambda: [client.post(f"{s}:sign", json={"message": "AA=="})],
        lambda: [client.post(f"{s}:signHash", json={"hash": b64(bytes(32))})],
        lambda: [client.get(f"{s}/publicKey")],
        lambda: [client.post(f"{e}:decrypt", json={"ciphertext": b64(ciphertext)})],
        lambda: [client.get(f"{e}/publicKey")],
        lambda: [client.get(s), client.get(e)],
        lambda: [
            client.get(base, params={"folderId": "b1gasymroles"})
            for base in (SIGNATURE_KEYS, ENCRYPTION_KEYS)
        ],
    ]
    with client:
        for expected, call in zip(ROLE_TABLE[role], calls, strict=True):
            for r in call():
                if expected:
                    assert r.status_code == 200, (role, r.request.url, r.text)
                else:
                    error(r, 403, 7)
        if role == "kms.asymmetricEncryptionKeys.decrypter":
            r = client.post(f"{e}:decrypt", json={"ciphertext": b64(ciphertext)})
            assert unb64(r.json()["plaintext"]) == b"m"
        # A symmetric role grants nothing on asymmetric keys' data plane, and vice versa.
        if role == "kms.keys.encrypterDecrypter":
            error(client.post(f"{e}:decrypt", json={"ciphertext": b64(ciphertext)}), 403, 7)


# --- Families ---


def _family_requests(api: httpx.Client, base: str, key_id: str) -> list[httpx.Response]:
    """Every method on ``base``'s paths that names a key, called for ``key_id``."""
    k = f"{base}/{key_id}"
    responses = [
        api.get(k),
        api.patch(k, json={"updateMask": "name", "name": "x"}),
        api.delete(k),
        api.get(f"{k}/operations"),
        api.get(f"{k}:listAccessBindings"),
        api.post(f"{k}:updateAccessBindings", json=delta("kms.viewer", "ajex")),
        api.post(f"{k}:setAccessBindings", json={"accessBindings": []}),
    ]
    if base == SIGNATURE_KEYS:
        responses += [
            api.post(f"{k}:sign", json={"message": "AA=="}),
            api.post(f"{k}:signHash", json={"hash": b64(bytes(32))}),
            api.get(f"{k}/publicKey"),
        ]
    elif base == ENCRYPTION_KEYS:
        responses += [
            api.post(f"{k}:decrypt", json={"ciphertext": b64(bytes(256))}),
            api.get(f"{k}/publicKey"),
        ]
    else:
        responses += [
            api.post(f"{k}:encrypt", json={"plaintext": "AA=="}),
            api.post(f"{k}:generateDataKey", json={}),
            api.post(f"{k}:rotate"),
            api.get(f"{k}/versions"),
        ]
    return responses


def test_a_key_is_not_found_on_another_familys_paths(api, signer, decrypter) -> None:
    symmetric = create_key(api, "AES_256")["id"]
    foreign = {
        SIGNATURE_KEYS: (decrypter, symmetric),
        ENCRYPTION_KEYS: (signer, symmetric),
        "/kms/v1/keys": (signer, decrypter),
    }
    for base, key_ids in foreign.items():
        absent = _family_requests(api, base, MISSING)
        for key_id in key_ids:
            for r, missing in zip(_family_requests(api, base, key_id), absent, strict=True):
                body = error(r, 404, 5)
                # Word for word what a key that does not exist gets.
                got = _without_request_id(body)
                got["message"] = got["message"].replace(key_id, MISSING)
                assert got == _without_request_id(missing.json()), (r.request.url, body)
    # The key is still there, untouched, on its own paths.
    assert api.get(f"{SIGNATURE_KEYS}/{signer}").status_code == 200
    assert api.get(f"{ENCRYPTION_KEYS}/{decrypter}").status_code == 200
    assert api.get(f"/kms/v1/keys/{symmetric}").json().get("name", "") != "x"
    listed = api.get(ENCRYPTION_KEYS, params={"folderId": FOLDER, "pageSize": "1000"}).json()
    assert signer not in {k["id"] for k in listed["keys"]}
    listed = api.get("/kms/v1/keys", params={"folderId": FOLDER, "pageSize": "1000"}).json()
    assert not {signer, decrypter} & {k["id"] for k in listed.get("keys", [])}


# --- Lifecycle ---


def test_inactive_keys_refuse_sign_and_decrypt_until_active_again(api, signer, decrypter) -> None:
    ciphertext = public_key(api, ENCRYPTION_KEYS, decrypter).encrypt(b"m", oaep_sha256())
    checks = [
        (SIGNATURE_KEYS, signer, f"{SIG}UpdateAsymmetricSignatureKeyMetadata",
         [(":sign", {"message": "AA=="}), (":signHash", {"hash": b64(bytes(32))})]),
        (ENCRYPTION_KEYS, decrypter, f"{ENC}UpdateAsymmetricEncryptionKeyMetadata",
         [(":decrypt", {"ciphertext": b64(ciphertext)})]),
    ]  # fmt: skip
    for base, key_id, metadata, verbs in checks:
        k = f"{base}/{key_id}"
        r = api.patch(k, json={"updateMask": "status", "status": "INACTIVE"})
        assert op_ok(r, metadata)["response"]["status"] == "INACTIVE"
        assert api.get(k).json()["status"] == "INACTIVE"
        for verb, body in verbs:
            error(api.post(f"{k}{verb}", json=body), 400, 9)
        # The public key stays readable: it is public.
        assert api.get(f"{k}/publicKey").status_code == 200
        error(api.patch(k, json={"updateMask": "status", "status": "CREATING"}), 400, 3)
        r = api.patch(k, json={"updateMask": "status", "status": "ACTIVE"})
        assert op_ok(r, metadata)["response"]["status"] == "ACTIVE"
        for verb, body in verbs:
            assert api.post(f"{k}{verb}", json=body).status_code == 200


def test_update_fields_and_mask(api) -> None:
    key = create_pair(
        api,
        SIGNATURE_KEYS,
        "ECDSA_NIST_P256_SHA_256",
        description="before",
        labels={"a": "1"},
    )
    k = f"{SIGNATURE_KEYS}/{key['id']}"
    assert key["description"] == "before" and key["labels"] == {"a": "1"}
    r = api.patch(
        k,
        json={
            "updateMask": "name,labels,deletionProtection",
            "name": "after",
            "labels": {"b": "2"},
            "deletionProtection": True,
            "description": "ignored: not in mask",
        },
    )
    updated = op_ok(r, f"{SIG}UpdateAsymmetricSignatureKeyMetadata")["response"]
    assert updated["name"] == "after" and updated["labels"] == {"b": "2"}
    assert updated["deletionProtection"] is True and updated["description"] == "before"
    assert {"@type": updated["@type"], **api.get(k).json()} == updated
    r = api.patch(k, json={"updateMask": "labels,description,deletionProtection"})
    reset = op_ok(r, f"{SIG}UpdateAsymmetricSignatureKeyMetadata")["response"]
    assert not {"labels", "description", "deletionProtection"} & set(reset)
    for body, field in (
        ({}, "updateMask"),
        ({"updateMask": "signatureAlgorithm"}, "updateMask"),
        ({"updateMask": "name", "name": "n" * 101}, "name"),
        ({"updateMask": "name", "rotationPeriod": "86400s"}, "rotationPeriod"),
    ):
        assert _field(error(api.patch(k, json=body), 400, 3)) == field, body


def test_create_refuses_bad_requests(api) -> None:
    for base, body, field in (
        (SIGNATURE_KEYS, {"folderId": FOLDER}, "signatureAlgorithm"),
        (SIGNATURE_KEYS, {"folderId": FOLDER, "signatureAlgorithm": "RSA_2048_ENC_OAEP_SHA_256"},
         "signatureAlgorithm"),
        (ENCRYPTION_KEYS, {"folderId": FOLDER, "encryptionAlgorithm": "AES_256"},
         "encryptionAlgorithm"),
        (ENCRYPTION_KEYS, {"folderId": FOLDER, "signatureAlgorithm": "ECDSA_NIST_P256_SHA_256"},
         "signatureAlgorithm"),
        (SIGNATURE_KEYS, {"signatureAlgorithm": "ECDSA_NIST_P256_SHA_256"}, "folderId"),
        (ENCRYPTION_KEYS, {"folderId": FOLDER, "encryptionAlgorithm": 3, "name": "n" * 101},
         "name"),
    ):  # fmt: skip
        assert _field(error(api.post(base, json=body), 400, 3)) == field, body


def test_deletion_protection_refuses_delete(api, token_dir) -> None:
    key = create_pair(api, ENCRYPTION_KEYS, "RSA_2048_ENC_OAEP_SHA_256", deletionProtection=True)
    k = f"{ENCRYPTION_KEYS}/{key['id']}"
    assert key["deletionProtection"] is True
    error(api.delete(k), 400, 9)
    assert api.get(k).status_code == 200
    api.patch(k, json={"updateMask": "deletionProtection"})
    op = op_ok(api.delete(k), f"{ENC}DeleteAsymmetricEncryptionKeyMetadata")
    assert op["metadata"]["keyId"] == key["id"]
    assert op["response"]["id"] == key["id"]
    assert op["response"]["encryptionAlgorithm"] == "RSA_2048_ENC_OAEP_SHA_256"
    error(api.get(k), 404, 5)
    error(api.get(f"{k}/publicKey"), 404, 5)
    error(api.delete(k), 404, 5)


# --- Paging and Operations ---


def test_list_pages(api) -> None:
    folder = "b1gasympaging"
    made = [
        create_pair(api, SIGNATURE_KEYS, "ECDSA_NIST_P256_SHA_256", folderId=folder)["id"]
        for _ in range(5)
    ]
    create_pair(api, ENCRYPTION_KEYS, "RSA_2048_ENC_OAEP_SHA_256", folderId=folder)
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        params = {"folderId": folder, "pageSize": "2"}
        if token:
            params["pageToken"] = token
        r = api.get(SIGNATURE_KEYS, params=params)
        assert r.status_code == 200, r.text
        page = r.json()
        assert len(page["keys"]) <= 2
        assert all(k["folderId"] == folder and "signatureAlgorithm" in k for k in page["keys"])
        seen += [k["id"] for k in page["keys"]]
        pages += 1
        token = page.get("nextPageToken", "")
        if not token:
            break
    assert seen == made and pages == 3
    everything = api.get(SIGNATURE_KEYS, params={"folderId": folder}).json()
    assert [k["id"] for k in everything["keys"]] == made and "nextPageToken" not in everything
    encryption = api.get(ENCRYPTION_KEYS, params={"folderId": folder}).json()["keys"]
    assert len(encryption) == 1 and "encryptionAlgorithm" in encryption[0]
    assert api.get(SIGNATURE_KEYS, params={"folderId": "b1gempty"}).json() == {}
    error(api.get(SIGNATURE_KEYS, params={"folderId": folder, "pageToken": "forged"}), 400, 3)
    error(api.get(SIGNATURE_KEYS, params={"folderId": folder, "pageSize": "1001"}), 400, 3)
    error(api.get(SIGNATURE_KEYS, params={"folderId": folder, "nope": "1"}), 400, 3)
    error(api.get(SIGNATURE_KEYS), 400, 3)


def test_operations(api) -> None:
    r = api.post(
        SIGNATURE_KEYS,
        json={"folderId": FOLDER, "name": "ops", "signatureAlgorithm": "ECDSA_NIST_P256_SHA_256"},
    )
    created = op_ok(r, f"{SIG}CreateAsymmetricSignatureKeyMetadata")
    key = created["response"]
    assert created["response"]["@type"] == (
        "type.googleapis.com/yandex.cloud.kms.v1.asymmetricsignature.AsymmetricSignatureKey"
    )
    assert set(key) == {
        "@type",
        "id",
        "folderId",
        "createdAt",
        "name",
        "status",
        "signatureAlgorithm",
    }
    k = f"{SIGNATURE_KEYS}/{key['id']}"
    updated = op_ok(
        api.patch(k, json={"updateMask": "description", "description": "d"}),
        f"{SIG}UpdateAsymmetricSignatureKeyMetadata",
    )
    assert updated["response"]["description"] == "d"
    page = api.get(f"{k}/operations", params={"pageSize": "1"}).json()
    assert [op["id"] for op in page["operations"]] == [created["id"]]
    rest = api.get(f"{k}/operations", params={"pageToken": page["nextPageToken"]}).json()
    assert [op["id"] for op in rest["operations"]] == [updated["id"]]
    everything = api.get(f"{k}/operations").json()["operations"]
    assert everything == [created, updated]
    for op in everything:
        assert api.get(f"/operations/{op['id']}").json() == op
    deleted = op_ok(api.delete(k), f"{SIG}DeleteAsymmetricSignatureKeyMetadata")
    assert deleted["response"]["id"] == key["id"]
    assert api.get(f"/operations/{deleted['id']}").json() == deleted
    error(api.get(f"{k}/operations"), 404, 5)

    r = api.post(
        ENCRYPTION_KEYS,
        json={"folderId": FOLDER, "encryptionAlgorithm": "RSA_2048_ENC_OAEP_SHA_256"},
    )
    made = op_ok(r, f"{ENC}CreateAsymmetricEncryptionKeyMetadata")
    assert made["response"]["@type"] == (
        "type.googleapis.com/yandex.cloud.kms.v1.asymmetricencryption.AsymmetricEncryptionKey"
    )
    assert made["response"]["encryptionAlgorithm"] == "RSA_2048_ENC_OAEP_SHA_256"
    ops = api.get(f"{ENCRYPTION_KEYS}/{made['response']['id']}/operations").json()
    assert ops["operations"] == [made]


# --- Access bindings ---


def test_access_binding_methods(api, runtime, base_url, signer, decrypter) -> None:
    principal_id, client = principal_client(runtime, base_url, "asym-bindings")
    s, e = f"{SIGNATURE_KEYS}/{signer}", f"{ENCRYPTION_KEYS}/{decrypter}"
    with client:
        error(client.post(f"{s}:sign", json={"message": "AA=="}), 404, 5)
        r = api.post(
            f"{s}:updateAccessBindings",
            json=delta("kms.asymmetricSignatureKeys.signer", principal_id),
        )
        assert r.status_code == 200, r.text
        op = r.json()
        assert op["done"] is True
        assert op["metadata"]["@type"].endswith("yandex.cloud.access.UpdateAccessBindingsMetadata")
        assert op["metadata"]["resourceId"] == signer
        assert client.post(f"{s}:sign", json={"message": "AA=="}).status_code == 200
        # The binding is on this key only.
        error(client.get(f"{e}/publicKey"), 404, 5)
        listed = api.get(f"{s}:listAccessBindings").json()
        assert {
            "roleId": "kms.asymmetricSignatureKeys.signer",
            "subject": {"id": principal_id, "type": "serviceAccount"},
        } in listed["accessBindings"]
        r = api.post(
            f"{e}:setAccessBindings",
            json={
                "accessBindings": [
                    {
                        "roleId": "kms.asymmetricEncryptionKeys.publicKeyViewer",
                        "subject": {"id": principal_id, "type": "serviceAccount"},
                    }
                ]
            },
        )
        assert r.status_code == 200, r.text
        assert r.json()["metadata"]["@type"].endswith(
            "yandex.cloud.access.SetAccessBindingsMetadata"
        )
        assert client.get(f"{e}/publicKey").status_code == 200
        error(client.post(f"{e}:decrypt", json={"ciphertext": b64(bytes(256))}), 403, 7)
        r = api.post(
            f"{s}:updateAccessBindings",
            json=delta("kms.asymmetricSignatureKeys.signer", principal_id, "REMOVE"),
        )
        assert r.status_code == 200, r.text
        error(client.post(f"{s}:sign", json={"message": "AA=="}), 404, 5)
        assert api.post(f"{e}:setAccessBindings", json={"accessBindings": []}).status_code == 200
        error(client.get(f"{e}/publicKey"), 404, 5)
    error(
        api.post(
            f"{s}:updateAccessBindings", json=delta("kms.asymmetricSignatureKeys.root", "ajex")
        ),
        400,
        3,
    )


# --- Audit (last: the events of the whole module are in the chain) ---


def test_audit_chain_is_intact_with_the_asymmetric_events(
    api, runtime, settings, signer, tmp_path
) -> None:
    api.post(f"{SIGNATURE_KEYS}/{signer}:sign", json={"message": "AA=="})
    events = [e.event for e in runtime.audit.events()]
    methods = {e.method for e in events}
    assert {
        "AsymmetricSignatureKey.Create",
        "AsymmetricSignatureKey.Update",
        "AsymmetricSignatureKey.Delete",
        "AsymmetricSignatureKey.UpdateAccessBindings",
        "AsymmetricSignatureCrypto.Sign",
        "AsymmetricSignatureCrypto.SignHash",
        "AsymmetricSignatureCrypto.GetPublicKey",
        "AsymmetricEncryptionKey.Create",
        "AsymmetricEncryptionKey.Delete",
        "AsymmetricEncryptionCrypto.Decrypt",
        "AsymmetricEncryptionCrypto.GetPublicKey",
    } <= methods
    last = events[-1]
    assert (last.method, last.key_id, last.outcome) == (
        "AsymmetricSignatureCrypto.Sign",
        signer,
        "OK",
    )
    assert last.transport == "rest"
    outcomes = {(e.method, e.outcome) for e in events}
    assert ("AsymmetricEncryptionCrypto.Decrypt", "INVALID_ARGUMENT") in outcomes
    assert ("AsymmetricSignatureCrypto.Sign", "FAILED_PRECONDITION") in outcomes
    result = cli(snapshot_db(settings, tmp_path / "copy.db"), "audit", "verify")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "intact" in result.stdout
