"""A full workload at DEBUG logging: no PIN, token, plaintext, data key, AAD or key material
may appear in the logs (text, and KMS_HSM_LOG_FORMAT=json with its per-call records), the
SQLite file or the audit trail."""

from __future__ import annotations

import base64
import io
import json
import logging
import secrets
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from kms_hsm.crypto.pkcs11.hsm import HsmCrypto
from kms_hsm.crypto.token import ROOT_KEY_PREFIX
from kms_hsm.logs import JsonFormatter
from kms_hsm.service.keyring import _material_aad
from kms_hsm.store.tables import KeyVersionRow
from tests.conftest import create_key


def forms(secret: bytes) -> list[bytes]:
    """Every way a secret could be written down."""
    return [
        secret,
        secret.hex().encode(),
        base64.b64encode(secret),
        base64.b64encode(secret).rstrip(b"="),
        base64.urlsafe_b64encode(secret).rstrip(b"="),
    ]


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_no_secret_anywhere(
    api, runtime, settings, token_dir, admin_token, tmp_path, wait, token_sessions, log_format
) -> None:
    log_file = tmp_path / "debug.log"
    handler = logging.FileHandler(log_file)
    if log_format == "json":
        # The service's JSON lines: every field of every record, the calls' own included.
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s %(args)s"))
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    for quiet in ("httpx", "httpcore", "hpack"):  # the test's own client, not the server
        logging.getLogger(quiet).setLevel(logging.WARNING)
    secrets_seen: list[bytes] = [admin_token.encode()]
    try:
        principal = runtime.auth.create_principal("leak-check")
        token, _ = runtime.auth.issue_token(principal.id)
        secrets_seen.append(token.encode())
        software = create_key(api, "AES_256")["id"]
        hsm = create_key(api, "AES_256_HSM")["id"]
        for key_id in (software, hsm):
            plaintext = b"PLAINTEXT-" + secrets.token_hex(16).encode()
            aad = b"AAD-" + secrets.token_hex(16).encode()
            secrets_seen += [plaintext, aad]
            ct = api.post(
                f"/kms/v1/keys/{key_id}:encrypt",
                json={
                    "plaintext": base64.b64encode(plaintext).decode(),
                    "aadContext": base64.b64encode(aad).decode(),
                },
            ).json()["ciphertext"]
            api.post(
                f"/kms/v1/keys/{key_id}:decrypt",
                json={"ciphertext": ct, "aadContext": base64.b64encode(aad).decode()},
            )
            api.post(f"/kms/v1/keys/{key_id}:decrypt", json={"ciphertext": ct})  # wrong AAD
            api.post(
                f"/kms/v1/keys/{software if key_id == hsm else hsm}:reEncrypt",
                json={
                    "sourceKeyId": key_id,
                    "ciphertext": ct,
                    "sourceAadContext": base64.b64encode(aad).decode(),
                },
            )
            for spec in ("AES_256", "AES_256_HSM"):
                dk = api.post(
                    f"/kms/v1/keys/{key_id}:generateDataKey", json={"dataKeySpec": spec}
                ).json()
                secrets_seen.append(base64.b64decode(dk["dataKeyPlaintext"]))
        httpx.get(f"{api.base_url}/kms/v1/keys/{hsm}", headers={"Authorization": "Bearer " + token})
        httpx.get(
            f"{api.base_url}/kms/v1/keys/{hsm}", headers={"Authorization": "Bearer wrong-" + token}
        )
        wait(runtime.keys.rotate(software, "test"))
        wait(runtime.scheduler.run_once())
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        handler.close()

    secrets_seen += [
        (token_dir / "user-pin").read_text().strip().encode(),
        (token_dir / "so-pin").read_text().strip().encode(),
    ]
    # The software key material itself, unwrapped the way the service does it.
    hsm_crypto = HsmCrypto(token_sessions)
    with runtime.keyring._db.read() as session:
        rows = session.scalars(select(KeyVersionRow).where(KeyVersionRow.key_id == software)).all()
    for row in rows:
        assert row.wrapped_material is not None and row.root_key_id is not None
        secrets_seen.append(
            hsm_crypto.decrypt(
                ROOT_KEY_PREFIX + row.root_key_id.encode(),
                row.wrapped_material[:12],
                row.wrapped_material[12:],
                _material_aad(software, row.id),
            )
        )

    export = io.StringIO()
    runtime.audit.export(export)
    db_path = Path(settings.effective_database_url().removeprefix("sqlite:///"))
    places = {
        "log": log_file.read_bytes(),
        "database": b"".join(p.read_bytes() for p in db_path.parent.glob(db_path.name + "*")),
        "audit export": export.getvalue().encode(),
    }
    assert len(places["log"]) > 1000  # DEBUG really was on
    # The per-call records were written (at DEBUG in text, where the JSON ones are INFO).
    if log_format == "json":
        records = [json.loads(line) for line in places["log"].splitlines()]
        assert any(
            r["logger"] == "kms_hsm.calls"
            and r["method"] == "SymmetricCrypto.GenerateDataKey"
            and r["outcome"] == "OK"
            for r in records
        )
    else:
        assert b"kms_hsm.calls DEBUG SymmetricCrypto.GenerateDataKey rest OK" in places["log"]
    for where, data in places.items():
        for secret in secrets_seen:
            for form in forms(secret):
                assert form not in data, f"a secret ({form[:12]!r}...) appears in the {where}"
