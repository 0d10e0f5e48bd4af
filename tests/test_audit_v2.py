"""Audit chain v2 (issue 15 §4, §5): links MAC'd under a token-wrapped key, checkpoints of
the head in the token and the JSON-lines file, and events for every change whoever makes it.

The attacks are the ones an attacker with write access to the database but without the PIN
can make: rewriting the chain with SHA-256 links (the v1 form needs no secret), cutting the
tail and moving ``audit_head`` back, restoring an older copy of the database.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib.metadata
import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from kms_hsm.audit.chain import GENESIS, AuditEvent, event_hash
from kms_hsm.audit.store import AuditLog
from kms_hsm.service.runtime import Runtime
from kms_hsm.service.scheduler import Scheduler
from kms_hsm.store.engine import MIGRATIONS_DIR, Database, make_engine, upgrade_schema
from kms_hsm.store.tables import AuditHeadRow
from tests.conftest import (
    KMS_HSM,
    REPO,
    create_key,
    free_port,
    serve_env,
    stop,
    wait_until_serving,
)
from tests.test_audit import _own_service, cli

# ---------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def service(
    token_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Runtime, httpx.Client, Path]]:
    """A service on its own database and root key, streaming to a JSON-lines file."""
    home = tmp_path_factory.mktemp("audit-v2")
    stream = home / "audit.jsonl"
    with _own_service(
        token_dir, home, "kms.db", audit_log_file=stream, audit_checkpoint_interval=0.2
    ) as (runtime, api):
        yield runtime, api, home


def _db_path(home: Path) -> Path:
    return home / "kms.db"


def _url(path: Path) -> str:
    return f"sqlite:///{path}"


def _head_seq(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        (seq,) = conn.execute("SELECT seq FROM audit_head WHERE id = 1").fetchone()
    return int(seq)


def _checkpointed(home: Path, timeout: float = 5.0) -> int:
    """Wait until the service checkpointed its current head (file line); the head's seq.

    Gives up quietly after ``timeout`` (the code before chain v2 writes no checkpoints).
    """
    seq = _head_seq(_db_path(home))
    stream = home / "audit.jsonl"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if stream.exists():
            for line in stream.read_text().splitlines():
                data = json.loads(line)
                if data.get("type") == "checkpoint" and data["seq"] >= seq:
                    return seq
        time.sleep(0.05)
    return seq


def _copy(home: Path, dest: Path) -> Path:
    """A consistent copy of the service's database (an attacker's working copy, or a backup)."""
    return _copy_file(_db_path(home), dest)


def _relink_v1(db: sqlite3.Connection, from_seq: int) -> None:
    """What an attacker without the PIN can do: recompute SHA-256 (v1) links from
    ``from_seq`` to the end and move the head to match."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(audit_events)")}
    prev_row = db.execute("SELECT hash FROM audit_events WHERE seq = ?", (from_seq - 1,))
    prev = (prev_row.fetchone() or ("0" * 64,))[0]
    rows = db.execute(
        "SELECT seq, time, principal_id, method, key_id, version_id, outcome, request_id, "
        "source FROM audit_events WHERE seq >= ? ORDER BY seq",
        (from_seq,),
    ).fetchall()
    seq = from_seq - 1
    for seq, stored_time, *fields in rows:
        when = datetime.fromisoformat(stored_time).replace(tzinfo=UTC)
        digest = event_hash(prev, seq, AuditEvent(when, *fields))
        db.execute(
            "UPDATE audit_events SET prev_hash = ?, hash = ? WHERE seq = ?", (prev, digest, seq)
        )
        if "chain" in columns:
            db.execute("UPDATE audit_events SET chain = 1 WHERE seq = ?", (seq,))
        prev = digest
    db.execute("UPDATE audit_head SET seq = ?, hash = ? WHERE id = 1", (seq, prev))


def _some_events(api: httpx.Client, n: int = 3) -> None:
    key = create_key(api, "AES_256")
    for _ in range(n):
        r = api.post(f"/kms/v1/keys/{key['id']}:encrypt", json={"plaintext": "c2VjcmV0"})
        assert r.status_code == 200


# ---------------------------------------------------------------- the four verify cases


@pytest.mark.parametrize("where", ["first", "middle"])
def test_verify_fails_for_an_edited_event_with_the_links_recomputed(
    service, tmp_path, where
) -> None:
    """Before v2: an edited event with every later SHA-256 link recomputed and the head
    moved verified as intact. Now the edit (which cannot be MAC'd) is named."""
    _runtime, api, home = service
    _some_events(api)
    last = _checkpointed(home)
    copy = _copy(home, tmp_path / "edited.db")
    victim = 1 if where == "first" else last - 2
    with sqlite3.connect(copy) as db:
        db.execute("UPDATE audit_events SET principal_id = 'x' WHERE seq = ?", (victim,))
        _relink_v1(db, victim)
    result = cli(_url(copy), "audit", "verify")
    assert result.returncode == 1, result.stdout + result.stderr
    if where == "middle":
        assert f"BROKEN at event {victim}: unkeyed (v1) event after" in result.stdout
    else:  # a whole chain rewritten as v1 links fine, but not to the token's checkpoint
        assert "differs from the checkpoint in the token" in result.stdout


def test_verify_fails_for_a_deleted_middle_event_with_the_rest_renumbered(
    service, tmp_path
) -> None:
    """Before v2: deleting an event, renumbering the later ones and recomputing their
    links verified as intact."""
    _runtime, api, home = service
    _some_events(api)
    last = _checkpointed(home)
    copy = _copy(home, tmp_path / "deleted.db")
    victim = last - 2
    with sqlite3.connect(copy) as db:
        db.execute("DELETE FROM audit_events WHERE seq = ?", (victim,))
        for seq in range(victim + 1, last + 1):
            db.execute("UPDATE audit_events SET seq = ? WHERE seq = ?", (seq - 1, seq))
        _relink_v1(db, victim)
    result = cli(_url(copy), "audit", "verify")
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"BROKEN at event {victim}" in result.stdout


def test_verify_fails_for_a_cut_tail_with_the_head_moved_back(service, tmp_path) -> None:
    """Issue 15 §5: deleting the last events and moving audit_head back verified as
    intact. The checkpoint in the token (no file given) now names the cut."""
    _runtime, api, home = service
    _some_events(api)
    last = _checkpointed(home)
    copy = _copy(home, tmp_path / "cut.db")
    keep = last - 2
    with sqlite3.connect(copy) as db:
        (kept_hash,) = db.execute("SELECT hash FROM audit_events WHERE seq = ?", (keep,)).fetchone()
        db.execute("DELETE FROM audit_events WHERE seq > ?", (keep,))
        db.execute("UPDATE audit_head SET seq = ?, hash = ? WHERE id = 1", (keep, kept_hash))
    result = cli(_url(copy), "audit", "verify")
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"BROKEN at event {keep + 1}" in result.stdout
    assert "checkpoint in the token" in result.stdout and "cut off the end" in result.stdout


def test_verify_with_the_checkpoint_file_fails_for_an_older_database_restored(
    service, tmp_path
) -> None:
    """A backup taken earlier, restored whole, is a consistent chain; the signed
    checkpoints in the JSON-lines file (kept elsewhere) show that it lost events."""
    _runtime, api, home = service
    _some_events(api, 1)
    _checkpointed(home)
    backup = _copy(home, tmp_path / "backup.db")
    assert cli(_url(backup), "audit", "verify").returncode == 0  # consistent when taken
    _some_events(api, 2)
    _checkpointed(home)
    stream = home / "audit.jsonl"
    result = cli(_url(backup), "audit", "verify", "--checkpoints", str(stream))
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"checkpoint in {stream}" in result.stdout
    assert "older database was restored" in result.stdout
    # The live database holds every checkpoint of the file.
    live = cli(_url(_db_path(home)), "audit", "verify", "--checkpoints", str(stream))
    assert live.returncode == 0, live.stdout + live.stderr
    assert "from 1 on are MAC'd" in live.stdout or "every event is MAC'd" in live.stdout


def test_verify_refuses_a_forged_checkpoint_line(service, tmp_path) -> None:
    _runtime, api, home = service
    _some_events(api, 1)
    seq = _checkpointed(home)
    forged = tmp_path / "forged.jsonl"
    line = {"type": "checkpoint", "seq": seq + 5, "hash": "0" * 64, "time": "x", "mac": "0" * 64}
    forged.write_text(json.dumps(line) + "\n")
    result = cli(_url(_db_path(home)), "audit", "verify", "--checkpoints", str(forged))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "wrong MAC (forged)" in result.stdout


# ---------------------------------------------------------------- format vectors


def test_event_mac_and_checkpoint_vectors() -> None:
    """Chain v2 is pinned byte for byte: canonical JSON, HMAC-SHA-256 link, checkpoint."""
    from kms_hsm.audit.chain import (
        ChainHead,
        ChainKey,
        Checkpoint,
        canonical_event_v2,
        event_mac,
    )

    event = AuditEvent(
        datetime(2026, 11, 28, 6, 0, 0, 123456, tzinfo=UTC),
        "ajeadmin",
        "SymmetricCrypto.Encrypt",
        "abjkey",
        "abjversion",
        "OK",
        "0b7c6ad0-8f7a-4b5e-9a43-0f7e5a1c2d3e",
        "127.0.0.1",
        "my-req 1",
    )
    secret = bytes(range(32))
    key = ChainKey(secret)
    canonical = (
        '{"client_request_id":"my-req 1","key_id":"abjkey","method":"SymmetricCrypto.Encrypt",'
        '"outcome":"OK","principal_id":"ajeadmin",'
        '"request_id":"0b7c6ad0-8f7a-4b5e-9a43-0f7e5a1c2d3e","seq":2,"source":"127.0.0.1",'
        '"time":"2026-11-28T06:00:00.123456+00:00","v":2,"version_id":"abjversion"}'
    )
    assert canonical_event_v2(2, event) == canonical
    link = "4e6e17c2ecd78a3862947e9eaddadf16eecd2686b933a8fb30a58acb0e70acb9"
    assert hmac.new(secret, ("ab" * 32 + canonical).encode(), hashlib.sha256).hexdigest() == link
    assert event_mac(key, "ab" * 32, 2, event) == link
    checkpoint = Checkpoint.make(key, ChainHead(2, link), datetime(2026, 12, 4, 10, tzinfo=UTC))
    assert json.loads(checkpoint.to_json()) == {
        "type": "checkpoint",
        "seq": 2,
        "hash": link,
        "time": "2026-12-04T10:00:00+00:00",
        "mac": "cebff78b1610e62c8bda76a8898d4cf53a399b98d6c7e4425469ee5e3696bf33",
    }
    assert checkpoint.valid(key) and not checkpoint.valid(ChainKey(bytes(32)))
    assert event_mac(key, "ab" * 32, 2, event) == link  # the keyed state is reused intact
    assert "0001" not in repr(key)


def test_transport_is_macd_when_named_and_left_out_when_not() -> None:
    """Events before issue 16 have no transport: their canonical form (and MAC) is kept."""
    from kms_hsm.audit.chain import canonical_event_v2

    fields = (datetime(2026, 12, 4, 13, 0, tzinfo=UTC), "p", "M.X", "k", "v", "OK", "r", "s")
    unnamed = AuditEvent(*fields)
    named = AuditEvent(*fields, transport="grpc")
    assert canonical_event_v2(7, unnamed) == (
        '{"client_request_id":"","key_id":"k","method":"M.X","outcome":"OK","principal_id":"p",'
        '"request_id":"r","seq":7,"source":"s","time":"2026-12-04T13:00:00+00:00","v":2,'
        '"version_id":"v"}'
    )
    assert canonical_event_v2(7, named) == (
        '{"client_request_id":"","key_id":"k","method":"M.X","outcome":"OK","principal_id":"p",'
        '"request_id":"r","seq":7,"source":"s","time":"2026-12-04T13:00:00+00:00",'
        '"transport":"grpc","v":2,"version_id":"v"}'
    )


def test_rest_events_name_their_transport(runtime, api) -> None:
    """Every API event says which API it came by; a change to it breaks the chain."""
    before = runtime.audit.head().seq
    assert api.get("/kms/v1/keys/nosuchkey").status_code == 404
    events = [c for c in runtime.audit.events() if c.seq > before]
    assert events and events[-1].event.transport == "rest"
    assert events[-1].event.method == "SymmetricKey.Get"
    # A change is audited in its own transaction, by the service: named all the same.
    r = api.post("/kms/v1/keys", json={"folderId": "b1gtransport", "defaultAlgorithm": "AES_256"})
    assert r.status_code == 200, r.text
    events = [c for c in runtime.audit.events() if c.seq > before]
    assert [(c.event.method, c.event.transport) for c in events][-1] == (
        "SymmetricKey.Create",
        "rest",
    )
    assert json.loads(events[-1].to_json())["transport"] == "rest"
    assert runtime.audit.verify().ok


def test_client_request_id_is_stored_and_exported(runtime) -> None:
    """Carried end to end: table column, v2 MAC, export (filled by the API elsewhere)."""
    event = AuditEvent(datetime.now(UTC), "p", "Test.Method", "", "", "OK", "r", "s", "odd id")
    chained = runtime.audit.record(event)
    stored = [c for c in runtime.audit.events() if c.seq == chained.seq]
    assert stored[0].event.client_request_id == "odd id" and stored[0].chain == 2
    assert json.loads(stored[0].to_json())["client_request_id"] == "odd id"
    assert runtime.audit.verify().ok


# ---------------------------------------------------------------- every change is audited


def _events(db: Path, after: int) -> list[tuple[str, str, str]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(
            "SELECT principal_id, method, key_id FROM audit_events WHERE seq > ? ORDER BY seq",
            (after,),
        ).fetchall()


def test_cli_changes_are_audited_and_the_chain_still_verifies(service) -> None:
    """Issue 15 §4: the CLI minted principals and tokens unrecorded."""
    _runtime, _api, home = service
    db = _db_path(home)
    url = _url(db)
    before = _head_seq(db)
    created = cli(url, "principals", "create", "robot")
    assert created.returncode == 0, created.stderr
    principal = created.stdout.strip()
    issued = cli(url, "tokens", "create", principal)
    assert issued.returncode == 0, issued.stderr
    token_id = issued.stderr.split("token id ")[1].split(";")[0]
    bound = cli(
        url, "bindings", "add", "--folder", "b1gcli", "--role", "kms.viewer", "--subject", principal
    )
    assert bound.returncode == 0, bound.stderr
    assert cli(url, "tokens", "revoke", token_id).returncode == 0
    assert cli(url, "principals", "revoke", principal).returncode == 0
    events = _events(db, before)
    assert [(m, k) for _p, m, k in events] == [
        ("Principal.Create", principal),
        ("Token.Create", token_id),
        ("Folder.UpdateAccessBindings", ""),
        ("Token.Revoke", token_id),
        ("Principal.Revoke", principal),
    ]
    assert all(p.startswith("cli:") for p, _m, _k in events)
    # Not db.read_bytes(): closing another descriptor of the file in this process would
    # drop the SQLite locks the in-process service holds (SQLite's "how to corrupt" 2.2).
    with sqlite3.connect(db) as conn:
        stored = repr(conn.execute("SELECT * FROM audit_events").fetchall())
    assert issued.stdout.strip() not in stored  # the token is not in the trail
    verified = cli(url, "audit", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_cli_refuses_a_binding_to_an_unknown_principal(service) -> None:
    """Issue 15 §8: a binding for a principal that does not exist was accepted."""
    _runtime, _api, home = service
    url = _url(_db_path(home))
    result = cli(
        url, "bindings", "add", "--folder", "b1gx", "--role", "kms.admin", "--subject", "ajenone"
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "no principal ajenone" in result.stderr
    with sqlite3.connect(_db_path(home)) as conn:
        rows = conn.execute("SELECT count(*) FROM access_bindings WHERE subject_id = 'ajenone'")
        assert rows.fetchone() == (0,)


def test_cli_says_when_a_binding_to_remove_is_not_there(service) -> None:
    """Issue 18 §7: `bindings remove` of a missing binding exited 0 and printed "removeed"."""
    _runtime, _api, home = service
    url = _url(_db_path(home))
    args = ("--folder", "b1gy", "--role", "kms.viewer", "--subject-type", "system")
    args += ("--subject", "allAuthenticatedUsers")
    missing = cli(url, "bindings", "remove", *args)
    assert missing.returncode == 1, missing.stdout + missing.stderr
    assert missing.stdout == ""
    assert missing.stderr.strip().splitlines() == [
        "kms-hsm: no binding kms.viewer for system:allAuthenticatedUsers on folder b1gy: "
        "nothing removed"
    ]
    added = cli(url, "bindings", "add", *args)
    assert (added.returncode, added.stdout.strip()) == (
        0,
        "added kms.viewer for system:allAuthenticatedUsers",
    )
    removed = cli(url, "bindings", "remove", *args)
    assert (removed.returncode, removed.stdout.strip()) == (
        0,
        "removed kms.viewer for system:allAuthenticatedUsers",
    )


def test_cli_prints_its_version() -> None:
    """Issue 18 §7: no --version."""
    result = subprocess.run([KMS_HSM, "--version"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0
    assert result.stdout.strip() == f"kms-hsm {importlib.metadata.version('kms-hsm')}"


def test_scheduled_rotation_and_destruction_are_audited(api, runtime, clock, wait) -> None:
    """Issue 15 §4: the scheduler destroyed versions with no event."""
    key = create_key(api, "AES_256_HSM", rotationPeriod="86400s")
    v1 = key["primaryVersion"]["id"]
    r = api.post(f"/kms/v1/keys/{key['id']}:rotate")
    assert r.status_code == 200
    r = api.post(
        f"/kms/v1/keys/{key['id']}:scheduleVersionDestruction",
        json={"versionId": v1, "pendingPeriod": "86400s"},
    )
    assert r.status_code == 200
    before = max(c.seq for c in runtime.audit.events())
    clock.advance(timedelta(days=1, seconds=1))
    result = wait(runtime.scheduler.run_once())
    assert v1 in result.destroyed and key["id"] in result.rotated
    mine = [
        (c.event.principal_id, c.event.method, c.event.version_id)
        for c in runtime.audit.events()
        if c.seq > before and c.event.key_id == key["id"]
    ]
    assert ("system:scheduler", "SymmetricKey.Rotate", mine[0][2]) == mine[0]
    assert ("system:scheduler", "SymmetricKey.DestroyVersion", v1) in mine


def test_orphan_sweep_destructions_are_audited(runtime, token_dir, wait) -> None:
    """Issue 15 §4: the orphan sweep destroyed token objects with no event."""
    root_key = wait(runtime.keyring.ensure_root_key())
    orphan = "abjorphanaudit000000"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.token_tool",
            str(token_dir),
            "plant",
            orphan,
            f"kms-hsm/{root_key}/{orphan}",
        ],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    sweep = Scheduler(runtime.keys, runtime.keyring, 0, orphan_grace=0)
    destroyed: list[bytes] = []
    deadline = time.monotonic() + 20
    while orphan.encode() not in destroyed:  # another process's object may show up late
        assert time.monotonic() < deadline, "orphan not swept"
        destroyed += wait(sweep.reconcile_orphans())
    events = [c.event for c in runtime.audit.events() if c.event.version_id == orphan]
    assert [(e.principal_id, e.method) for e in events] == [
        ("system:scheduler", "Token.DestroyOrphanObject")
    ]


def _v1_database_upgraded(url: str) -> tuple[AuditLog, int]:
    """A database at migration 0005 holding a v1 chain, then upgraded: its log and length."""
    from alembic import command
    from alembic.config import Config

    engine = make_engine(url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0005")
    prev, rows = GENESIS, []
    for seq in range(1, 4):  # what the code before chain v2 wrote
        event = AuditEvent(
            datetime(2026, 11, 1, 0, 0, seq, tzinfo=UTC), "p", "M", "k", "", "OK", "r", "s"
        )
        digest = event_hash(prev, seq, event)
        rows.append(
            {"seq": seq, "time": event.time, **event._asdict(), "prev_hash": prev, "hash": digest}
        )
        prev = digest
    for row in rows:
        del row["client_request_id"], row["transport"]  # columns of later migrations
        if engine.dialect.name == "sqlite":  # as UtcDateTime stores it there
            row["time"] = row["time"].replace(tzinfo=None).isoformat(" ", "microseconds")
    v1_table = sa.table("audit_events", *(sa.column(name) for name in rows[0]))
    with engine.begin() as connection:
        connection.execute(v1_table.insert(), rows)
        connection.execute(
            AuditHeadRow.__table__.update().where(AuditHeadRow.id == 1).values(seq=3, hash=prev)
        )
    upgrade_schema(engine)
    return AuditLog(Database(engine), chain_key=bytes(32)), 3


def test_a_v1_chain_upgraded_stays_verifiable_and_v2_begins_after_it(tmp_path) -> None:
    """Existing databases keep their v1 events; verify says where the MAC'd part begins,
    and a v1 event appended after it (a downgrade) is refused."""
    log, v1_events = _v1_database_upgraded(f"sqlite:///{tmp_path / 'old.db'}")
    log.record(AuditEvent(datetime.now(UTC), "p", "M", "k", "", "OK", "r", "s", "c"))
    log.record(AuditEvent(datetime.now(UTC), "p", "M", "k", "", "OK", "r", "s"))
    result = log.verify()
    assert result.ok and result.events == v1_events + 2 and result.mac_from == v1_events + 1
    with sqlite3.connect(tmp_path / "old.db") as db:
        _relink_v1(db, v1_events + 2)
    result = log.verify()
    assert not result.ok and result.first_broken_seq == v1_events + 2
    assert "unkeyed (v1) event after the MAC'd part began" in result.reason


def test_the_token_checkpoint_is_not_moved_back_by_a_change_on_an_older_copy(
    service, tmp_path
) -> None:
    """A CLI change on an older copy of the database (a fork behind the live chain) must
    not replace the token's checkpoint of the live head: the live chain still verifies,
    the fork does not."""
    _runtime, api, home = service
    _some_events(api, 1)
    _checkpointed(home)
    fork = _copy(home, tmp_path / "fork.db")
    _some_events(api, 3)
    live_head = _checkpointed(home)
    changed = cli(_url(fork), "principals", "create", "forked")
    assert changed.returncode == 0, changed.stderr
    assert _head_seq(fork) < live_head
    live = cli(_url(_db_path(home)), "audit", "verify")
    assert live.returncode == 0, live.stdout + live.stderr
    forked = cli(_url(fork), "audit", "verify")
    assert forked.returncode == 1, forked.stdout + forked.stderr
    assert "checkpoint in the token" in forked.stdout


def test_two_workers_checkpoint_one_chain_and_a_clean_stop_leaves_no_window(
    tmp_path: Path,
) -> None:
    """``serve --workers 2``: both workers append to one chain and checkpoint its head in
    the token and the file; after a clean stop the newest checkpoint is the last event, so
    cutting even one event off the end is caught by the token alone."""
    data = tmp_path / "data"
    stream = tmp_path / "audit.jsonl"
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    extra = {
        "KMS_HSM_AUDIT_LOG_FILE": str(stream),
        "KMS_HSM_AUDIT_CHECKPOINT_INTERVAL": "0.2",
    }
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen(
        [KMS_HSM, "serve", "--workers", "2"],
        env=serve_env(data, port, **extra),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until_serving(proc, base_url)
        auth = {"Authorization": f"Bearer {(data / 'admin-token').read_text().strip()}"}
        created = httpx.post(
            f"{base_url}/kms/v1/keys",
            json={"folderId": "b1g", "defaultAlgorithm": "AES_256"},
            headers=auth,
        )
        key_id = created.json()["response"]["id"]
        workers: set[str] = set()
        for _ in range(40):
            with httpx.Client(headers=auth) as client:  # new connections spread over workers
                r = client.post(
                    f"{base_url}/kms/v1/keys/{key_id}:encrypt", json={"plaintext": "AA=="}
                )
                assert r.status_code == 200, r.text
                workers.add(r.headers["x-kms-worker"])
            time.sleep(0.02)
        assert len(workers) == 2
    finally:
        stop(proc)
        log.close()
    assert "Traceback" not in (tmp_path / "serve.log").read_text()
    db = data / "kms.db"
    head = _head_seq(db)
    lines = [json.loads(line) for line in stream.read_text().splitlines()]
    checkpoints = [line["seq"] for line in lines if line.get("type") == "checkpoint"]
    assert len(checkpoints) >= 2 and max(checkpoints) == head
    env = serve_env(data, 0)

    def verify(url: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [KMS_HSM, "audit", "verify", "--checkpoints", str(stream)],
            env={**env, "KMS_HSM_DATABASE_URL": url},
            capture_output=True,
            text=True,
            timeout=120,
        )

    intact = verify(_url(db))
    assert intact.returncode == 0, intact.stdout + intact.stderr
    assert f"newest checkpoint: event {head} " in intact.stdout
    cut = _copy_file(db, tmp_path / "cut.db")
    with sqlite3.connect(cut) as conn:
        (kept,) = conn.execute(
            "SELECT hash FROM audit_events WHERE seq = ?", (head - 1,)
        ).fetchone()
        conn.execute("DELETE FROM audit_events WHERE seq = ?", (head,))
        conn.execute("UPDATE audit_head SET seq = ?, hash = ? WHERE id = 1", (head - 1, kept))
    stream.write_text("")  # the token alone
    broken = verify(_url(cut))
    assert broken.returncode == 1, broken.stdout + broken.stderr
    assert f"BROKEN at event {head}" in broken.stdout and "in the token" in broken.stdout


def _copy_file(source: Path, dest: Path) -> Path:
    with sqlite3.connect(source) as src, sqlite3.connect(dest) as dst:
        src.backup(dst)
    return dest


# ---------------------------------------------------------------- review of the merged work


def _cut_tail(db_path: Path, keep: int) -> None:
    with sqlite3.connect(db_path) as db:
        (kept_hash,) = db.execute("SELECT hash FROM audit_events WHERE seq = ?", (keep,)).fetchone()
        db.execute("DELETE FROM audit_events WHERE seq > ?", (keep,))
        db.execute("UPDATE audit_head SET seq = ?, hash = ? WHERE id = 1", (keep, kept_hash))


def test_a_cut_tail_stays_caught_after_the_chain_grows_past_it(
    token_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The service must not sign (and so bless) a chain that lost a checkpointed event:
    before, it replaced the token's checkpoint as soon as new events passed the old head,
    and `audit verify` then passed."""
    options = {"audit_log_file": tmp_path / "audit.jsonl", "audit_checkpoint_interval": 0.2}
    with _own_service(token_dir, tmp_path, "kms.db", **options) as (_runtime, api):
        _some_events(api, 4)
    last = _head_seq(_db_path(tmp_path))  # a clean stop checkpoints the last event
    _cut_tail(_db_path(tmp_path), last - 3)
    with _own_service(token_dir, tmp_path, "kms.db", **options) as (_runtime, api):
        _some_events(api, 4)  # well past the old head
        deadline = time.monotonic() + 5
        while "no longer holds event" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.1)
    assert _head_seq(_db_path(tmp_path)) > last
    assert f"no longer holds event {last}" in caplog.text
    result = cli(_url(_db_path(tmp_path)), "audit", "verify")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "differs from the checkpoint in the token" in result.stdout


def test_verify_holds_the_chain_against_every_checkpoint_of_the_file() -> None:
    """After a restore and regrowth the newest checkpoints agree with the new fork; the
    older ones, written before the restore, are the evidence (only the newest was kept)."""
    from kms_hsm.audit.chain import ChainHead, ChainKey, Checkpoint
    from kms_hsm.audit.checkpoints import worth_checking

    key = ChainKey(b"k" * 32)
    now = datetime(2026, 1, 1, tzinfo=UTC)
    before_restore = Checkpoint.make(key, ChainHead(5, "a" * 64), now)
    on_the_fork = Checkpoint.make(key, ChainHead(8, "b" * 64), now)
    again = Checkpoint.make(key, ChainHead(8, "b" * 64), now + timedelta(seconds=1))
    assert worth_checking([before_restore, on_the_fork, again], key) == [
        before_restore,
        on_the_fork,
    ]
    forged = before_restore._replace(mac="0" * 64)
    assert worth_checking([on_the_fork, forged], key) == [forged]


def test_a_deleted_chain_key_is_not_replaced_by_a_new_one(
    token_dir: Path, tmp_path: Path, portal, wait
) -> None:
    """Deleting the chain key's row made the next start create a new key silently; the
    old checkpoints then only looked foreign, and a rewritten chain verified."""
    from kms_hsm.audit.chain import CHAIN_KEY_NAME
    from kms_hsm.config import Settings
    from kms_hsm.errors import FailedPrecondition

    options = {"audit_log_file": tmp_path / "audit.jsonl", "audit_checkpoint_interval": 0.2}
    with _own_service(token_dir, tmp_path, "kms.db", **options) as (_runtime, api):
        _some_events(api, 1)
    with sqlite3.connect(_db_path(tmp_path)) as db:
        db.execute("DELETE FROM service_secrets WHERE name = ?", (CHAIN_KEY_NAME,))
    runtime = Runtime.start(
        Settings(
            data_dir=tmp_path,
            pin_file=token_dir / "user-pin",
            database_url=_url(_db_path(tmp_path)),
            scheduler_interval=0,
        )
    )
    try:
        with pytest.raises(FailedPrecondition, match="audit chain key is missing"):
            portal.call(runtime.open)
    finally:
        runtime.close()


def _stream_many(path: Path) -> None:
    from kms_hsm.audit.chain import ChainedEvent

    event = AuditEvent(
        datetime(2026, 1, 1, tzinfo=UTC), "p" * 40, "m", "k" * 40, "v", "OK", "r" * 36, "s"
    )
    batch = [ChainedEvent(seq, event, "0" * 64, "1" * 64) for seq in range(60)]  # ~24 KiB
    log = AuditLog(None, path)  # type: ignore[arg-type]
    for _ in range(100):
        log.stream(batch)
        log.stream_line('{"type":"checkpoint"}')


def test_workers_sharing_the_json_lines_file_never_split_each_others_lines(tmp_path) -> None:
    """Each worker process appends to one file: a batch over a buffer's 8 KiB went out in
    several writes, and another worker's line could land inside one of them."""
    import multiprocessing

    path = tmp_path / "shared.jsonl"
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_stream_many, args=(path,)) for _ in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    lines = path.read_text().splitlines()
    assert len(lines) == 4 * 100 * 61
    for line in lines:
        json.loads(line)
