"""The admin CLI as a new user meets it (issue 18 §7): the real `kms-hsm` in a subprocess,
against data directories made by a real `kms-hsm serve` on the embedded SoftHSM2 token.

Every mistake gets one line on stderr (``kms-hsm: …``), a non-zero exit and no traceback,
and no admin command ever leaves a database where there was none.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

from kms_hsm.cli import admin
from kms_hsm.cli.main import main
from kms_hsm.store.engine import MIGRATIONS_DIR
from tests.conftest import KMS_HSM, free_port, init_token, serve_env, stop, wait_until_serving

# ----------------------------------------------------------------------------- helpers


def _alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


HEAD = str(ScriptDirectory.from_config(_alembic_config()).get_current_head())


def run(*args: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    """The real CLI with only the settings given here (none inherited from this process)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("KMS_HSM_", "SOFTHSM2_"))}
    clean.update(env)
    return subprocess.run(
        [KMS_HSM, *args], env=clean, cwd=cwd, capture_output=True, text=True, timeout=90
    )


def one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> str:
    """Assert a failure told in one ``kms-hsm: …`` line; returns that line."""
    assert result.returncode != 0, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("kms-hsm: "), lines[0]
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


@dataclass
class Served:
    """A data directory made by `kms-hsm serve`, and the server if it still runs."""

    data_dir: Path
    port: int
    proc: subprocess.Popen[bytes] | None

    @property
    def env(self) -> dict[str, str]:
        """What an operator sets to administer it (the embedded token: no PIN setting)."""
        return {
            "KMS_HSM_DATA_DIR": str(self.data_dir),
            "KMS_HSM_PORT": str(self.port),
            "KMS_HSM_GRPC_PORT": "off",
        }

    @property
    def admin_token(self) -> str:
        return (self.data_dir / "admin-token").read_text().strip()

    def cli(self, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return run(*args, **{**self.env, **extra})


def _serve(directory: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    log = (directory / "serve.log").open("wb")
    proc = subprocess.Popen(
        [KMS_HSM, "serve"],
        env=serve_env(directory / "data", port),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    wait_until_serving(proc, f"http://127.0.0.1:{port}")
    return proc, port


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A `kms-hsm serve` that keeps running for the module."""
    directory = tmp_path_factory.mktemp("running")
    proc, port = _serve(directory)
    try:
        yield Served(directory / "data", port, proc)
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def stopped(tmp_path_factory: pytest.TempPathFactory) -> Served:
    """The data directory of a `kms-hsm serve` that ran once and was stopped."""
    directory = tmp_path_factory.mktemp("stopped")
    proc, port = _serve(directory)
    stop(proc)
    return Served(directory / "data", port, None)


def _create_key(served: Served) -> str:
    r = httpx.post(
        f"http://127.0.0.1:{served.port}/kms/v1/keys",
        json={"folderId": "b1gadmin", "defaultAlgorithm": "AES_256_HSM"},
        headers={"Authorization": f"Bearer {served.admin_token}"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    key_id: str = r.json()["response"]["id"]
    return key_id


# ------------------------------------------- no database: one line, and none created

COMMANDS = [
    ("principals", "list"),
    ("principals", "create", "ci"),
    ("principals", "revoke", "prn-x"),
    ("principals", "keys", "list", "prn-x"),
    ("tokens", "list"),
    ("tokens", "create", "prn-x"),
    ("tokens", "revoke", "tok-x"),
    ("bindings", "list"),
    ("bindings", "add", "--folder", "f", "--role", "kms.viewer", "--subject", "prn-x"),
    ("audit", "export", "--since", "24h"),
    ("audit", "verify"),
    ("hsm", "attest", "abc"),
    ("db", "upgrade"),
]


@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: " ".join(a[:2]))
def test_outside_the_data_directory_one_line_and_no_database(tmp_path: Path, args) -> None:
    """Run where no data directory is (was: a 60-line SQLAlchemy traceback)."""
    result = run(*args, cwd=tmp_path)
    line = one_line_error(result, "no database at", "kms-hsm serve", "KMS_HSM_DATA_DIR")
    assert str(tmp_path / ".kms-hsm" / "kms.db") in line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("exists", [False, True], ids=["missing-dir", "empty-dir"])
def test_a_wrong_data_dir_creates_nothing(tmp_path: Path, exists: bool) -> None:
    """Pointed at the wrong KMS_HSM_DATA_DIR (was: an empty kms.db and "success")."""
    wrong = tmp_path / "typo"
    if exists:
        wrong.mkdir()
    for args in (("principals", "list"), ("principals", "create", "x"), ("tokens", "list")):
        result = run(*args, KMS_HSM_DATA_DIR=str(wrong))
        one_line_error(result, f"no database at {wrong / 'kms.db'}", f"KMS_HSM_DATA_DIR={wrong}")
    assert list(tmp_path.rglob("*")) == ([wrong] if exists else [])


def test_an_empty_database_file_is_not_a_kms_hsm_database(tmp_path: Path) -> None:
    """An empty kms.db (what the old CLI left behind) is named, not migrated."""
    (tmp_path / "kms.db").touch()
    result = run("principals", "list", KMS_HSM_DATA_DIR=str(tmp_path))
    one_line_error(result, "holds no kms-hsm schema", "kms-hsm serve")
    assert (tmp_path / "kms.db").stat().st_size == 0
    one_line_error(run("db", "upgrade", KMS_HSM_DATA_DIR=str(tmp_path)), "no kms-hsm schema")


def test_an_unreachable_postgresql_server_is_one_line_without_its_password(tmp_path) -> None:
    url = f"postgresql+psycopg://kms:s3cret-pw@127.0.0.1:{free_port()}/kms"
    for args in (("principals", "list"), ("tokens", "create", "prn-x"), ("db", "upgrade")):
        result = run(*args, KMS_HSM_DATABASE_URL=url)
        one_line_error(result, "cannot read the database", "127.0.0.1")
        assert "s3cret-pw" not in result.stderr + result.stdout
    status = run("status", "--json", KMS_HSM_DATABASE_URL=url, cwd=tmp_path)
    assert status.returncode == admin.EXIT_NOT_READY, status.stderr
    report = json.loads(status.stdout)
    assert report["database"]["ok"] is False
    assert "s3cret-pw" not in status.stdout and "***" in report["database"]["url"]


def _database_at(path: Path, revision: str) -> str:
    """A SQLite database migrated to ``revision`` only (as an older kms-hsm left it)."""
    url = f"sqlite:///{path}"
    config = _alembic_config()
    config.set_main_option("sqlalchemy.url", url)
    command.upgrade(config, revision)
    return url


def test_a_schema_behind_is_named_and_db_upgrade_migrates_it(tmp_path: Path) -> None:
    url = _database_at(tmp_path / "old.db", "0008")
    result = run("principals", "list", KMS_HSM_DATABASE_URL=url)
    one_line_error(result, "schema revision 0008", f"needs {HEAD}", "kms-hsm db upgrade")
    upgraded = run("db", "upgrade", KMS_HSM_DATABASE_URL=url)
    assert upgraded.returncode == 0, upgraded.stderr
    assert f"upgraded from revision 0008 to {HEAD}" in upgraded.stdout
    again = run("db", "upgrade", KMS_HSM_DATABASE_URL=url)
    assert again.returncode == 0 and "nothing to do" in again.stdout
    listed = run("principals", "list", KMS_HSM_DATABASE_URL=url)
    assert listed.returncode == 0, listed.stderr


def test_a_schema_from_a_newer_version_is_named(tmp_path: Path) -> None:
    url = _database_at(tmp_path / "new.db", "head")
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        connection.execute(sa.text("UPDATE alembic_version SET version_num = '0999'"))
    engine.dispose()
    for args in (("principals", "list"), ("db", "upgrade")):
        one_line_error(run(*args, KMS_HSM_DATABASE_URL=url), "0999", "newer kms-hsm")


def test_a_bad_setting_is_named_without_its_value(tmp_path: Path) -> None:
    result = run("principals", "list", KMS_HSM_PORT="eighty", cwd=tmp_path)
    one_line_error(result, "KMS_HSM_PORT")
    assert "eighty" not in result.stderr


# ------------------------------------- mistakes against a real data directory


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("principals", "revoke", "prn-nope"), "principal prn-nope not found"),
        (("principals", "keys", "list", "prn-nope"), "principal prn-nope not found"),
        (("principals", "keys", "revoke", "ajk-nope"), "authorized key ajk-nope not found"),
        (("tokens", "create", "prn-nope"), "principal prn-nope not found"),
        (("tokens", "revoke", "tok-nope"), "token tok-nope not found"),
        (("tokens", "list", "--principal", "prn-nope"), "principal prn-nope not found"),
        (("bindings", "list", "--key", "abj-nope"), "key abj-nope not found"),
        (
            ("bindings", "add", "--folder", "f", "--role", "kms.viewer", "--subject", "prn-x"),
            "no principal prn-x",
        ),
        (
            ("bindings", "remove", "--folder", "f", "--role", "kms.viewer", "--subject", "prn-x"),
            "nothing removed",
        ),
        (("hsm", "attest", "abj-nope"), "abj-nope"),
        (("audit", "verify", "--checkpoints", "/nonexistent/audit.log"), "no checkpoint file"),
        (("audit", "export", "--output", "/proc/kms-hsm/out.jsonl"), "/proc/kms-hsm/out.jsonl"),
        (("tokens", "create", "prn-x", "--output", "/nonexistent/dir/token"), "cannot write"),
    ],
    ids=lambda v: v if isinstance(v, str) else " ".join(v[:2]),
)
def test_wrong_ids_and_paths_are_one_line(stopped: Served, args, says: str) -> None:
    one_line_error(stopped.cli(*args), says)


def test_a_token_is_not_issued_when_its_output_file_cannot_be_written(stopped: Served) -> None:
    principal = stopped.cli("principals", "create", "out-check")
    assert principal.returncode == 0, principal.stderr
    principal_id = principal.stdout.strip()
    result = stopped.cli("tokens", "create", principal_id, "--output", "/nonexistent/d/t")
    one_line_error(result, "cannot write /nonexistent/d/t")
    listed = json.loads(stopped.cli("tokens", "list", "--principal", principal_id, "--json").stdout)
    assert listed == []


def test_pin_mistakes_are_one_line_and_never_show_the_pin(stopped: Served, tmp_path) -> None:
    missing = stopped.cli("principals", "create", "x", KMS_HSM_PIN_FILE=str(tmp_path / "none"))
    one_line_error(missing, "PIN file", "does not exist")

    exposed = tmp_path / "exposed-pin"
    exposed.write_text("123456\n")
    exposed.chmod(0o644)
    result = stopped.cli("principals", "create", "x", KMS_HSM_PIN_FILE=str(exposed))
    one_line_error(result, "must not be readable by group or others")

    # A wrong PIN on a token of its own: the served token's login counter stays untouched.
    init_token(tmp_path / "token")
    wrong = tmp_path / "wrong-pin"
    wrong.write_text("999999\n")
    wrong.chmod(0o600)
    result = stopped.cli(
        "principals",
        "create",
        "x",
        KMS_HSM_PIN_FILE=str(wrong),
        SOFTHSM2_CONF=str(tmp_path / "token" / "softhsm2.conf"),
    )
    one_line_error(result, "PinIncorrect")
    assert "999999" not in result.stderr + result.stdout


def test_no_such_token_is_one_line(stopped: Served) -> None:
    result = stopped.cli(
        "principals", "create", "x", KMS_HSM_TOKEN_LABEL="no-such", KMS_HSM_HSM_STARTUP_TIMEOUT="1"
    )
    one_line_error(result, "HSM not reachable", "no-such")


def test_an_unexpected_error_is_one_line_and_its_traceback_only_on_request(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The last resort in main(): no traceback, nor the error's text, unless KMS_HSM_DEBUG=1."""

    def broken(_args: object) -> int:
        raise RuntimeError("internal detail that may quote anything")

    monkeypatch.setattr(admin, "principals_list", broken)
    monkeypatch.delenv("KMS_HSM_DEBUG", raising=False)
    assert main(["principals", "list"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("kms-hsm: unexpected error (RuntimeError)")
    assert "Traceback" not in err and "internal detail" not in err

    monkeypatch.setenv("KMS_HSM_DEBUG", "1")
    assert main(["principals", "list"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "internal detail" in err


# ------------------------------------------------------------------- tokens list


def test_tokens_list_shows_ids_principal_times_and_state_never_a_token(running: Served) -> None:
    principal = running.cli("principals", "create", "lister")
    assert principal.returncode == 0, principal.stderr
    principal_id = principal.stdout.strip()
    issued = []
    for extra in ((), ("--expires-in", "3600"), ()):
        created = running.cli("tokens", "create", principal_id, *extra)
        assert created.returncode == 0, created.stderr
        token_id = created.stderr.split("token id ")[1].split(";")[0]
        issued.append((token_id, created.stdout.strip()))
    revoked = running.cli("tokens", "revoke", issued[2][0])
    assert revoked.returncode == 0, revoked.stderr

    as_json = running.cli("tokens", "list", "--principal", principal_id, "--json")
    assert as_json.returncode == 0, as_json.stderr
    rows = {row["id"]: row for row in json.loads(as_json.stdout)}
    assert list(rows) == [token_id for token_id, _ in issued]
    assert {r["principalId"] for r in rows.values()} == {principal_id}
    assert {r["principalName"] for r in rows.values()} == {"lister"}
    first, expiring, gone = (rows[token_id] for token_id, _ in issued)
    assert (first["state"], first["expiresAt"]) == ("active", None)
    assert expiring["state"] == "active" and expiring["expiresAt"].endswith("Z")
    assert gone["state"] == "revoked"
    created_at = datetime.fromisoformat(first["createdAt"])
    assert abs(datetime.now(UTC) - created_at) < timedelta(minutes=5)

    table = running.cli("tokens", "list")
    assert table.returncode == 0, table.stderr
    header, *lines = table.stdout.splitlines()
    assert header.split() == ["TOKEN", "ID", "PRINCIPAL", "CREATED", "EXPIRES", "STATE"]
    assert any("(admin)" in line for line in lines)  # the first admin's token
    for token_id, _ in issued:
        assert any(line.startswith(token_id) for line in lines)
    everything = as_json.stdout + table.stdout + table.stderr
    for _, secret in issued:
        assert secret not in everything
    assert running.admin_token not in everything


# ------------------------------------------------------------------------- status


def test_status_of_a_running_server(running: Served) -> None:
    key_id = _create_key(running)
    result = running.cli("status", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["dataDir"] == {
        "path": str(running.data_dir),
        "exists": True,
        "setting": f"KMS_HSM_DATA_DIR={running.data_dir}",
    }
    assert report["database"]["ok"] is True
    assert report["database"]["url"] == f"sqlite:///{running.data_dir / 'kms.db'}"
    assert report["database"]["schema"] == HEAD
    assert report["token"]["reachable"] is True and report["token"]["embedded"] is True
    assert report["token"]["label"] == "kms-hsm"
    assert report["keys"]["SymmetricKey"]["ACTIVE"] >= 1
    assert report["symmetricKeyVersions"]["ACTIVE"] >= 1
    assert report["principals"] >= 1 and report["activeTokens"] >= 1
    assert report["audit"]["events"] >= 1 and len(report["audit"]["headHash"]) == 64
    server = report["server"]
    assert server["url"] == f"http://127.0.0.1:{running.port}"
    assert server["answering"] is True
    assert (server["tls"], server["grpcPort"], server["workers"]) == (False, None, 1)
    text = running.cli("status")
    assert text.returncode == 0, text.stderr
    assert "reachable" in text.stdout and "answering" in text.stdout
    assert "SymmetricKey" in text.stdout and key_id not in text.stdout
    assert running.admin_token not in result.stdout + text.stdout


def test_status_of_a_stopped_server(stopped: Served) -> None:
    result = stopped.cli("status", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["database"]["ok"] and report["token"]["reachable"]
    assert report["server"]["answering"] is False
    assert "not answering" in stopped.cli("status").stdout


def test_status_exits_3_when_the_token_is_unreachable(stopped: Served) -> None:
    result = stopped.cli(
        "status", "--json", KMS_HSM_TOKEN_LABEL="no-such", KMS_HSM_HSM_STARTUP_TIMEOUT="1"
    )
    assert result.returncode == admin.EXIT_NOT_READY, result.stderr
    report = json.loads(result.stdout)
    assert report["database"]["ok"] is True
    assert report["token"]["reachable"] is False and "no-such" in report["token"]["problem"]


def test_a_database_whose_first_serve_did_not_finish_is_left_alone(
    stopped: Served, tmp_path: Path
) -> None:
    """No root key yet: status says so (exit 3) and no command makes one, unaudited."""
    import shutil
    import sqlite3

    copy = tmp_path / "data"
    shutil.copytree(stopped.data_dir, copy)
    with contextlib.closing(sqlite3.connect(copy / "kms.db")) as db, db:
        db.execute("DELETE FROM root_keys")
        db.execute("DELETE FROM service_secrets")
    env = {**stopped.env, "KMS_HSM_DATA_DIR": str(copy)}
    result = run("status", "--json", **env)
    assert result.returncode == admin.EXIT_NOT_READY, result.stderr
    assert "no root key" in json.loads(result.stdout)["token"]["problem"]
    one_line_error(run("principals", "create", "x", **env), "no root key")
    with contextlib.closing(sqlite3.connect(copy / "kms.db")) as db:
        assert db.execute("SELECT count(*) FROM root_keys").fetchone() == (0,)
        assert db.execute("SELECT count(*) FROM service_secrets").fetchone() == (0,)


def test_status_without_a_database_says_where_and_creates_nothing(tmp_path: Path) -> None:
    result = run("status", cwd=tmp_path)
    assert result.returncode == admin.EXIT_NOT_READY, result.stderr
    assert "no database at" in result.stdout and "does not exist" in result.stdout
    assert "not checked" in result.stdout
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------- audit export --since


NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("given", "means"),
    [
        ("2026-01-31", datetime(2026, 1, 31, tzinfo=UTC)),
        ("2026-01-31T12:30:00Z", datetime(2026, 1, 31, 12, 30, tzinfo=UTC)),
        ("2026-01-31 12:30", datetime(2026, 1, 31, 12, 30, tzinfo=UTC)),
        ("2026-01-31T15:30:00+03:00", datetime(2026, 1, 31, 12, 30, tzinfo=UTC)),
        ("90s", NOW - timedelta(seconds=90)),
        ("30m", NOW - timedelta(minutes=30)),
        ("24h", NOW - timedelta(hours=24)),
        ("7d", NOW - timedelta(days=7)),
        ("2w", NOW - timedelta(weeks=2)),
    ],
)
def test_since_forms(given: str, means: datetime) -> None:
    assert admin.since_time(given, now=NOW) == means


@pytest.mark.parametrize("given", ["yesterday", "7 days", "-5d", "2026-13-01", "1y", ""])
def test_since_refuses_other_forms_saying_what_is_accepted(stopped: Served, given: str) -> None:
    result = stopped.cli("audit", "export", f"--since={given}")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    (error,) = [line for line in result.stderr.splitlines() if "error:" in line]
    assert "ISO 8601" in error and "24h" in error and "7d" in error


def test_audit_export_since(running: Served) -> None:
    _create_key(running)
    recent = running.cli("audit", "export", "--since", "1h")
    assert recent.returncode == 0, recent.stderr
    events = [json.loads(line) for line in recent.stdout.splitlines()]
    assert any(e["method"] == "SymmetricKey.Create" for e in events)
    today = datetime.now(UTC).date().isoformat()
    assert running.cli("audit", "export", "--since", today).stdout.count("\n") >= len(events)
    future = running.cli("audit", "export", "--since", "2999-01-01T00:00:00Z")
    assert future.returncode == 0 and future.stdout == ""


def test_db_upgrade_on_a_current_database_does_nothing(stopped: Served) -> None:
    result = stopped.cli("db", "upgrade")
    assert result.returncode == 0, result.stderr
    assert "nothing to do" in result.stdout


def test_the_cli_run_here_is_this_checkout() -> None:
    """Subprocesses must run this checkout's code (PYTHONPATH), not another copy's."""
    result = run("tokens", "list", "--help")
    assert result.returncode == 0, result.stderr
    assert "--principal" in result.stdout
