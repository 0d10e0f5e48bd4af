"""`kms-hsm principals keys create|list|revoke`, the real CLI in a subprocess.

The key file must be what the official SDK loads: its own code (yandexcloud 0.413) builds
the JWT from the file, and that JWT is exchanged over REST.
"""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from yandexcloud._auth_fabric import ServiceAccountAuth, get_auth_token_requester

from kms_hsm.config import Settings
from kms_hsm.service.runtime import Runtime
from tests.conftest import serve_inprocess
from tests.test_audit import cli, snapshot_db


@pytest.fixture
def served(runtime: Runtime, settings: Settings, tmp_path: Path) -> Iterator[tuple[str, str, str]]:
    """(database url for the CLI, base url of a server on it, a principal id)."""
    principal = runtime.auth.create_principal("cli-keys")
    db = snapshot_db(settings, tmp_path / "cli.db")
    config = settings.model_copy(update={"database_url": db})
    rt = Runtime.start(config)
    try:
        with serve_inprocess(rt) as url:
            yield db, url, principal.id
    finally:
        rt.close()


def _exchange(url: str, key_file: Path) -> httpx.Response:
    document = json.loads(key_file.read_text())
    requester = get_auth_token_requester(service_account_key=document)
    assert isinstance(requester, ServiceAccountAuth)
    signed = requester.get_token_request().jwt
    return httpx.post(f"{url}/iam/v1/tokens", json={"jwt": signed}, timeout=30)


def test_keys_create_list_revoke(served: tuple[str, str, str], tmp_path: Path) -> None:
    db, url, principal_id = served
    key_file = tmp_path / "sa-key.json"
    result = cli(db, "principals", "keys", "create", principal_id, "--output", str(key_file))
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    document = json.loads(key_file.read_text())
    assert set(document) == {
        "id",
        "service_account_id",
        "created_at",
        "key_algorithm",
        "public_key",
        "private_key",
    }
    assert document["service_account_id"] == principal_id
    assert document["key_algorithm"] == "RSA_2048"
    assert document["created_at"].endswith("Z")
    assert document["private_key"].startswith("PLEASE DO NOT REMOVE THIS LINE!")
    assert "-----BEGIN PRIVATE KEY-----" in document["private_key"]
    assert "PRIVATE KEY" not in result.stdout + result.stderr

    answer = _exchange(url, key_file)
    assert answer.status_code == 200, answer.text
    assert answer.json()["iamToken"].startswith("kmsh1i_")

    listed = cli(db, "principals", "keys", "list", principal_id)
    assert listed.returncode == 0, listed.stderr
    assert document["id"] in listed.stdout and "active" in listed.stdout

    revoked = cli(db, "principals", "keys", "revoke", document["id"])
    assert revoked.returncode == 0, revoked.stderr
    assert "revoked" in cli(db, "principals", "keys", "list", principal_id).stdout
    assert _exchange(url, key_file).status_code == 401

    exported = cli(db, "audit", "export").stdout
    methods = [json.loads(line)["method"] for line in exported.splitlines()]
    assert "AuthorizedKey.Create" in methods and "AuthorizedKey.Revoke" in methods
    assert document["private_key"].splitlines()[2] not in exported


def test_keys_create_never_overwrites(served: tuple[str, str, str], tmp_path: Path) -> None:
    db, _, principal_id = served
    key_file = tmp_path / "existing.json"
    key_file.write_text("precious\n")
    result = cli(db, "principals", "keys", "create", principal_id, "--output", str(key_file))
    assert result.returncode != 0
    assert key_file.read_text() == "precious\n"
    assert cli(db, "principals", "keys", "list", principal_id).stdout.strip() == ""


def test_keys_create_for_an_unknown_principal_leaves_no_file(
    served: tuple[str, str, str], tmp_path: Path
) -> None:
    db, _, _ = served
    key_file = tmp_path / "none.json"
    result = cli(
        db, "principals", "keys", "create", "ajenosuchprincipal00", "--output", str(key_file)
    )
    assert result.returncode != 0
    assert not key_file.exists()
