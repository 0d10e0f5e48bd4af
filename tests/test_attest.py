"""``kms-hsm hsm attest``: custody read from the token, through the real CLI in a subprocess
against the session's database and SoftHSM2 token."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from kms_hsm.crypto.pkcs11.hsm import HsmCrypto
from kms_hsm.domain.asymmetric import EncryptionAlgorithm, KeyFamily, SignatureAlgorithm
from kms_hsm.domain.model import Algorithm
from kms_hsm.service.key_pairs import KeyPairSpec
from kms_hsm.service.keys import KeySpec
from kms_hsm.service.runtime import Runtime
from kms_hsm.store.tables import KeyRow
from tests.conftest import KMS_HSM

FLAGS = {
    "CKA_SENSITIVE": True,
    "CKA_ALWAYS_SENSITIVE": True,
    "CKA_EXTRACTABLE": False,
    "CKA_NEVER_EXTRACTABLE": True,
    "CKA_LOCAL": True,
    "CKA_PRIVATE": True,
}


def attest(settings, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``kms-hsm hsm attest`` as an operator would: database URL and PIN file."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KMS_HSM_")}
    env["KMS_HSM_DATABASE_URL"] = settings.database_url
    env["KMS_HSM_PIN_FILE"] = str(Path(os.environ["SOFTHSM2_CONF"]).parent / "user-pin")
    return subprocess.run(
        [KMS_HSM, "hsm", "attest", *args], env=env, capture_output=True, text=True, timeout=60
    )


def _create(runtime: Runtime, wait, algorithm: Algorithm) -> tuple[str, str]:
    op = wait(
        runtime.keys.create(
            KeySpec("b1gattest", "a", "", {}, algorithm, None, False), created_by="test"
        )
    )
    value = op.metadata["value"]
    return value["key_id"], value["primary_version_id"]


def test_hsm_key_versions_are_attested_from_the_token(runtime, wait, settings) -> None:
    key_id, first = _create(runtime, wait, Algorithm.AES_256_HSM)
    wait(runtime.keys.rotate(key_id, by="test"))
    result = attest(settings, key_id, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["keyId"] == key_id
    assert report["family"] == "SymmetricKey"
    assert report["algorithm"] == "AES_256_HSM"
    assert report["ok"] is True
    assert report["publicKeyMatches"] is None
    assert len(report["objects"]) == 2
    assert first in {o["objectId"] for o in report["objects"]}
    for obj in report["objects"]:
        assert obj["present"] is True
        assert obj["attributes"] == FLAGS
        assert obj["role"].startswith("version ")

    table = attest(settings, key_id)
    assert table.returncode == 0, table.stderr
    assert f"key {key_id}: SymmetricKey, AES_256_HSM" in table.stdout
    assert "CKA_NEVER_EXTRACTABLE" in table.stdout
    assert first in table.stdout
    assert table.stdout.rstrip().endswith("custody: as required")


def test_software_versions_attest_the_root_key_that_wraps_them(runtime, wait, settings) -> None:
    key_id, version_id = _create(runtime, wait, Algorithm.AES_256)
    result = attest(settings, key_id, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is True
    [root] = report["objects"]
    assert root["role"].startswith("root key ")
    assert root["objectId"].startswith("kms-hsm:root:")
    assert root["attributes"] == FLAGS
    assert any(version_id in note and "software material" in note for note in report["notes"])


def test_a_missing_token_object_is_reported_and_fails(
    runtime, wait, settings, token_sessions
) -> None:
    key_id, version_id = _create(runtime, wait, Algorithm.AES_256_HSM)
    assert HsmCrypto(token_sessions).destroy_key(version_id.encode())
    result = attest(settings, key_id, "--json")
    assert result.returncode == 3, result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is False
    assert report["objects"][0]["present"] is False
    table = attest(settings, key_id)
    assert table.returncode == 3
    assert "MISSING" in table.stdout
    assert "custody: NOT AS REQUIRED" in table.stdout


def test_an_unknown_key_is_one_clear_line(runtime, settings) -> None:
    result = attest(settings, "abjnosuchkey00000000")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.strip().splitlines() == ["kms-hsm: key abjnosuchkey00000000 not found"]


def _create_pair(runtime: Runtime, wait, family: KeyFamily, algorithm: int) -> str:
    op = wait(
        runtime.key_pairs.create(
            family, KeyPairSpec("b1gattest", "pair", algorithm=algorithm), by="test"
        )
    )
    return str(op.metadata["value"]["key_id"])


def _stored_public_key(runtime: Runtime, key_id: str) -> bytes:
    with runtime.keyring.database.read() as session:
        row = session.get(KeyRow, key_id)
        assert row is not None and row.public_key is not None
        return bytes(row.public_key)


def test_key_pairs_attest_the_private_key_and_the_public_key_fingerprint(
    runtime, wait, settings
) -> None:
    cases = [
        (KeyFamily.ASYMMETRIC_SIGNATURE, SignatureAlgorithm.ECDSA_NIST_P256_SHA_256),
        (KeyFamily.ASYMMETRIC_ENCRYPTION, EncryptionAlgorithm.RSA_2048_ENC_OAEP_SHA_256),
    ]
    for family, algorithm in cases:
        key_id = _create_pair(runtime, wait, family, int(algorithm))
        result = attest(settings, key_id, "--json")
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        assert report["family"] == family.service
        assert report["algorithm"] == algorithm.name
        [private] = report["objects"]
        assert private["objectId"] == key_id
        assert private["role"] == "private key"
        assert private["attributes"] == FLAGS
        stored = hashlib.sha256(_stored_public_key(runtime, key_id)).hexdigest()
        assert report["storedPublicKeySha256"] == stored
        assert report["publicKeySha256"] == stored
        assert report["publicKeyMatches"] is True
        assert report["ok"] is True

        table = attest(settings, key_id)
        assert table.returncode == 0, table.stderr
        assert f"public key SHA-256, from the token: {stored}" in table.stdout
        assert "public key: matches the stored one" in table.stdout


def test_a_public_key_that_differs_from_the_stored_one_fails(runtime, wait, settings) -> None:
    family = KeyFamily.ASYMMETRIC_SIGNATURE
    key_id = _create_pair(runtime, wait, family, int(SignatureAlgorithm.ECDSA_NIST_P256_SHA_256))
    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    with runtime.keyring.database.write() as session:
        row = session.get(KeyRow, key_id)
        assert row is not None
        row.public_key = other.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    result = attest(settings, key_id, "--json")
    assert result.returncode == 3, result.stderr
    report = json.loads(result.stdout)
    assert report["publicKeyMatches"] is False
    assert report["objects"][0]["attributes"] == FLAGS  # the private key itself is fine
    assert "public key: DOES NOT MATCH the stored one" in attest(settings, key_id).stdout
