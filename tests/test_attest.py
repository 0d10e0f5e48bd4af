"""``kms-hsm hsm attest``: custody read from the token, through the real CLI in a subprocess
against the session's database and SoftHSM2 token."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from kms_hsm.crypto.pkcs11.hsm import HsmCrypto
from kms_hsm.domain.model import Algorithm
from kms_hsm.service.keys import KeySpec
from kms_hsm.service.runtime import Runtime
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
