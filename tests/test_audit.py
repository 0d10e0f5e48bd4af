"""The audit trail: one event per request, tamper-evident, fail-closed; the admin CLI."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from sqlalchemy.dialects import sqlite as sqlite_dialect

from kms_hsm.audit.chain import (
    GENESIS,
    AuditEvent,
    canonical_event,
    canonical_event_v2,
    event_hash,
)
from kms_hsm.audit.store import sqlite_time
from kms_hsm.config import Settings
from kms_hsm.service.runtime import Runtime, prepare
from kms_hsm.store.tables import AuditEventRow
from tests.conftest import KMS_HSM, create_key, serve_inprocess


def cli(db_url: str, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    """The real CLI on ``db_url``, with the session token's PIN (changes and verify need it)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KMS_HSM_")}
    env["KMS_HSM_DATABASE_URL"] = db_url
    env["KMS_HSM_PIN_FILE"] = str(Path(os.environ["SOFTHSM2_CONF"]).parent / "user-pin")
    env.update(extra)
    return subprocess.run([KMS_HSM, *args], env=env, capture_output=True, text=True, timeout=60)


def snapshot_db(settings: Settings, dest: Path) -> str:
    """A consistent copy of the session SQLite database (WAL included)."""
    source = settings.effective_database_url().removeprefix("sqlite:///")
    with sqlite3.connect(source) as src, sqlite3.connect(dest) as dst:
        src.backup(dst)
    return f"sqlite:///{dest}"


def test_each_request_leaves_one_event_and_denials_too(api, runtime, base_url) -> None:
    before = sum(1 for _ in runtime.audit.events())
    key = create_key(api, "AES_256_HSM")
    api.post(f"/kms/v1/keys/{key['id']}:encrypt", json={"plaintext": "AA=="})
    httpx.post(f"{base_url}/kms/v1/keys/{key['id']}:encrypt", json={"plaintext": "AA=="})
    api.post(f"/kms/v1/keys/{key['id']}:decrypt", json={"ciphertext": "AQI="})
    events = list(runtime.audit.events())[before:]
    assert [(e.event.method, e.event.outcome) for e in events] == [
        ("SymmetricKey.Create", "OK"),
        ("SymmetricCrypto.Encrypt", "OK"),
        ("SymmetricCrypto.Encrypt", "UNAUTHENTICATED"),
        ("SymmetricCrypto.Decrypt", "INVALID_ARGUMENT"),
    ]
    assert all(e.event.key_id == key["id"] for e in events)
    assert events[1].event.version_id == key["primaryVersion"]["id"]
    assert events[0].event.principal_id and events[2].event.principal_id == ""
    assert all(e.event.request_id and e.event.source == "127.0.0.1" for e in events)


def test_untouched_chain_verifies(api, settings, tmp_path) -> None:
    create_key(api, "AES_128")
    result = cli(snapshot_db(settings, tmp_path / "copy.db"), "audit", "verify")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "intact" in result.stdout


@pytest.mark.parametrize("tamper", ["alter", "delete", "reorder", "truncate"])
def test_tampering_is_named_by_verify(api, settings, tmp_path, tamper) -> None:
    for _ in range(3):
        create_key(api, "AES_128")
    url = snapshot_db(settings, tmp_path / "copy.db")
    with sqlite3.connect(tmp_path / "copy.db") as db:
        (last,) = db.execute("SELECT max(seq) FROM audit_events").fetchone()
        victim = last - 2
        if tamper == "alter":
            db.execute(
                "UPDATE audit_events SET outcome='OK', principal_id='x' WHERE seq=?", (victim,)
            )
        elif tamper == "delete":
            db.execute("DELETE FROM audit_events WHERE seq=?", (victim,))
        elif tamper == "reorder":
            a = db.execute("SELECT * FROM audit_events WHERE seq=?", (victim,)).fetchone()
            b = db.execute("SELECT * FROM audit_events WHERE seq=?", (victim + 1,)).fetchone()
            db.execute("DELETE FROM audit_events WHERE seq IN (?, ?)", (victim, victim + 1))
            marks = ",".join("?" * len(a))
            db.execute(f"INSERT INTO audit_events VALUES ({marks})", (victim, *b[1:]))
            db.execute(f"INSERT INTO audit_events VALUES ({marks})", (victim + 1, *a[1:]))
        else:
            db.execute("DELETE FROM audit_events WHERE seq=?", (last,))
            victim = last
    result = cli(url, "audit", "verify")
    assert result.returncode == 1, result.stdout
    assert f"BROKEN at event {victim}" in result.stdout


def test_audit_export_since(api, settings, tmp_path) -> None:
    create_key(api, "AES_128")
    url = snapshot_db(settings, tmp_path / "copy.db")
    everything = cli(url, "audit", "export").stdout.splitlines()
    assert everything and all(json.loads(line)["hash"] for line in everything)
    last_time = json.loads(everything[-1])["time"]
    recent = cli(url, "audit", "export", "--since", last_time).stdout.splitlines()
    assert 1 <= len(recent) < len(everything)


@contextlib.contextmanager
def _own_service(
    token_dir: Path, tmp_path: Path, db_name: str, **settings: Any
) -> Iterator[tuple[Runtime, httpx.Client]]:
    """A runtime on its own SQLite file, served over real HTTP, and an admin client."""
    config = Settings(
        data_dir=tmp_path,
        pin_file=token_dir / "user-pin",
        database_url=f"sqlite:///{tmp_path / db_name}",
        scheduler_interval=0,
        **settings,
    )
    prepare(config)
    runtime = Runtime.start(config)
    token = (tmp_path / "admin-token").read_text().strip()
    try:
        with (
            serve_inprocess(runtime) as base_url,
            httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {token}"}) as api,
        ):
            yield runtime, api
    finally:
        runtime.close()


def test_audit_failure_fails_the_request_closed(token_dir, tmp_path) -> None:
    """A real write failure (a trigger refusing inserts) -> 503, no ciphertext, no key."""
    with _own_service(token_dir, tmp_path, "closed.db") as (_runtime, api):
        key = create_key(api, "AES_256_HSM")
        with sqlite3.connect(tmp_path / "closed.db") as db:
            db.execute(
                "CREATE TRIGGER audit_down BEFORE INSERT ON audit_events "
                "BEGIN SELECT RAISE(ABORT, 'audit store full'); END"
            )
        r = api.post(f"/kms/v1/keys/{key['id']}:encrypt", json={"plaintext": "c2VjcmV0"})
        assert r.status_code == 503 and r.json()["code"] == 14
        assert "ciphertext" not in r.text
        r = api.post(
            "/kms/v1/keys", json={"folderId": "b1gtestfolder", "defaultAlgorithm": "AES_128"}
        )
        assert r.status_code == 503
        with sqlite3.connect(tmp_path / "closed.db") as db:
            (keys,) = db.execute("SELECT count(*) FROM keys").fetchone()
        assert keys == 1  # the refused create left nothing behind
        with sqlite3.connect(tmp_path / "closed.db") as db:
            db.execute("DROP TRIGGER audit_down")
        r = api.post(f"/kms/v1/keys/{key['id']}:encrypt", json={"plaintext": "c2VjcmV0"})
        assert r.status_code == 200


def test_audit_wal_is_checkpointed_by_the_batchers_thread(token_dir, tmp_path) -> None:
    """The batcher's own thread checkpoints the WAL while the service runs."""
    with _own_service(token_dir, tmp_path, "ckpt.db") as (runtime, api):
        key = create_key(api, "AES_256")
        for _ in range(20):
            r = api.post(f"/kms/v1/keys/{key['id']}:encrypt", json={"plaintext": "c2VjcmV0"})
            assert r.status_code == 200
        checkpointer = runtime.audit_batcher.checkpointer
        assert checkpointer is not None
        deadline = time.monotonic() + 5
        while checkpointer.stats.runs == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert checkpointer.stats.runs > 0 and checkpointer.stats.failures == 0
    assert checkpointer._thread is None  # stopped with the runtime


def test_principal_and_token_cli(api, settings, base_url) -> None:
    url = settings.effective_database_url()
    created = cli(url, "principals", "create", "ci-robot")
    assert created.returncode == 0, created.stderr
    principal_id = created.stdout.strip()
    issued = cli(url, "tokens", "create", principal_id)
    token = issued.stdout.strip()
    token_id = issued.stderr.split("token id ")[1].split(";")[0]
    assert token.startswith("kmsh1_")
    key = create_key(api, "AES_128", folderId="b1gcli")
    auth = {"Authorization": f"Bearer {token}"}
    assert httpx.get(f"{base_url}/kms/v1/keys/{key['id']}", headers=auth).status_code == 404
    bound = cli(
        url,
        "bindings",
        "add",
        "--folder",
        "b1gcli",
        "--role",
        "kms.viewer",
        "--subject",
        principal_id,
    )
    assert bound.returncode == 0, bound.stderr
    assert httpx.get(f"{base_url}/kms/v1/keys/{key['id']}", headers=auth).status_code == 200
    listed = cli(url, "bindings", "list", "--folder", "b1gcli").stdout
    assert f"kms.viewer\tserviceAccount:{principal_id}" in listed
    assert token_id in cli(url, "principals", "list").stdout
    assert token not in cli(url, "principals", "list").stdout
    assert cli(url, "tokens", "revoke", token_id).returncode == 0
    assert httpx.get(f"{base_url}/kms/v1/keys/{key['id']}", headers=auth).status_code == 401
    second = cli(url, "tokens", "create", principal_id).stdout.strip()
    assert cli(url, "principals", "revoke", principal_id).returncode == 0
    r = httpx.get(
        f"{base_url}/kms/v1/keys/{key['id']}", headers={"Authorization": f"Bearer {second}"}
    )
    assert r.status_code == 401


def test_secrets_are_refused_on_the_command_line() -> None:
    for arg in ("--pin=1234", "--so-pin", "--token=abc"):
        result = subprocess.run([KMS_HSM, arg, "serve"], capture_output=True, text=True)
        assert result.returncode == 2
        assert "refused" in result.stderr and "1234" not in result.stderr


def test_events_are_streamed_as_json_lines(token_dir, tmp_path) -> None:
    stream = tmp_path / "audit.jsonl"
    with _own_service(token_dir, tmp_path, "stream.db", audit_log_file=stream) as (runtime, api):
        key = create_key(api, "AES_128")
        for _ in range(5):
            api.post(f"/kms/v1/keys/{key['id']}:encrypt", json={"plaintext": "c2VjcmV0"})
        exported = io.StringIO()
        runtime.audit.export(exported)
    lines = [json.loads(line) for line in stream.read_text().splitlines()]
    streamed = [line for line in lines if line.get("type") != "checkpoint"]
    assert streamed == [json.loads(line) for line in exported.getvalue().splitlines()]
    assert [e["method"] for e in streamed] == ["SymmetricKey.Create"] + [
        "SymmetricCrypto.Encrypt"
    ] * 5
    assert "c2VjcmV0" not in stream.read_text()


@given(
    st.integers(min_value=1, max_value=2**62),
    st.lists(st.text(max_size=70), min_size=7, max_size=7),
    st.datetimes(timezones=st.just(UTC)),
)
def test_canonical_event_is_sorted_compact_json(seq, texts, time) -> None:
    """The hand-built canonical forms are exactly json.dumps(sort_keys, no spaces), so
    chains written before and after them verify alike (v1 without client_request_id; an
    empty transport is left out of v2, as in the events written before it existed)."""
    transport = texts[1][:3]
    event = AuditEvent(time, *texts, client_request_id=texts[0][::-1], transport=transport)
    body = {**event._asdict(), "time": time.isoformat(), "seq": seq}
    if not transport:
        del body["transport"]
    v2 = json.dumps({**body, "v": 2}, sort_keys=True, separators=(",", ":"))
    body.pop("transport", None)
    del body["client_request_id"]
    expected = json.dumps(body, sort_keys=True, separators=(",", ":"))
    assert canonical_event(seq, event) == expected
    assert canonical_event(seq, event, time.isoformat()) == expected
    assert canonical_event_v2(seq, event) == v2
    assert canonical_event_v2(seq, event, time.isoformat()) == v2


def test_event_hash_vector() -> None:
    """A fixed event hashes to a fixed value (the chain format must not drift)."""
    event = AuditEvent(
        datetime(2026, 11, 28, 6, 0, 0, 123456, tzinfo=UTC),
        "ajeadmin",
        "SymmetricCrypto.Encrypt",
        "abjkey",
        "abjversion",
        "OK",
        "0b7c6ad0-8f7a-4b5e-9a43-0f7e5a1c2d3e",
        "127.0.0.1",
    )
    expected = hashlib.sha256(
        (
            GENESIS + '{"key_id":"abjkey","method":"SymmetricCrypto.Encrypt","outcome":"OK",'
            '"principal_id":"ajeadmin","request_id":"0b7c6ad0-8f7a-4b5e-9a43-0f7e5a1c2d3e",'
            '"seq":1,"source":"127.0.0.1","time":"2026-11-28T06:00:00.123456+00:00",'
            '"version_id":"abjversion"}'
        ).encode()
    ).hexdigest()
    assert event_hash(GENESIS, 1, event) == expected


@given(st.datetimes(timezones=st.sampled_from([UTC, timezone(timedelta(hours=3))])))
@example(datetime(2026, 11, 28, 6, 0, 0, 0, tzinfo=UTC))
@example(datetime(1, 1, 1, 0, 0, 0, 1, tzinfo=UTC))
def test_sqlite_time_is_what_the_orm_stores(value) -> None:
    """The audit insert writes times as the ORM column type would, so reads agree; also
    when the text is cut out of the isoformat() the hash used (no microseconds too)."""
    column_type = AuditEventRow.__table__.c.time.type
    dialect = sqlite_dialect.dialect()
    orm = column_type.dialect_impl(dialect).bind_processor(dialect)
    stored = orm(column_type.process_bind_param(value, dialect))
    assert sqlite_time(value) == stored
    assert sqlite_time(value, value.isoformat()) == stored


@pytest.mark.parametrize(
    "args",
    [
        ("tokens", "create", "prn-x", "--expires-in", "0"),  # was: a token that never expires
        ("tokens", "create", "prn-x", "--expires-in", "-5"),
        ("bindings", "add", "--role", "kms.admin", "--subject", "prn-x"),  # was: every folder
    ],
)
def test_cli_refuses_what_would_silently_grant_more(settings, tmp_path, args) -> None:
    result = cli(snapshot_db(settings, tmp_path / "cli.db"), *args)
    assert result.returncode == 2, result.stderr
    assert "usage:" in result.stderr


def test_a_replaced_request_id_is_audited_beside_the_new_one(api, runtime) -> None:
    """A client X-Request-Id that does not look like one is kept, escaped, in its own field."""
    key = create_key(api, "AES_256")

    def audited(header: str) -> tuple[AuditEvent, httpx.Response]:
        before = sum(1 for _ in runtime.audit.events())
        r = api.post(
            f"/kms/v1/keys/{key['id']}:encrypt",
            json={"plaintext": "AA=="},
            headers={"X-Request-Id": header},
        )
        assert r.status_code == 200, r.text
        (event,) = [e.event for e in list(runtime.audit.events())[before:]]
        return event, r

    event, _ = audited("req:42")
    assert (event.request_id, event.client_request_id) == ("req:42", "")
    event, r = audited("a\tb c")
    assert event.request_id == r.headers["x-request-id"] != "a\tb c"
    assert event.client_request_id == "a\\x09b c"
