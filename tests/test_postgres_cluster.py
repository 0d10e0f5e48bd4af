"""The PostgreSQL tests bring their own server (issue 15 finding 9): a throwaway cluster per
test session, gone when the session ends or is interrupted, unless KMS_HSM_TEST_DATABASE_URL
names one; every test that needs it carries the `postgres` marker."""

from __future__ import annotations

import os
import pwd
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa

from tests import pg_cluster
from tests.conftest import REPO

# Run by a pytest of its own (see _child): reports the server it was given, then holds
# if asked to, so that the parent can interrupt it mid-test.
CHILD_TEST = """
import os, time
import psycopg
import pytest
import sqlalchemy as sa

@pytest.mark.postgres
def test_report(postgres_url):
    engine = sa.create_engine(postgres_url)
    with engine.connect() as conn:
        port = conn.execute(sa.text("SHOW port")).scalar()
        data = conn.execute(sa.text("SHOW data_directory")).scalar()
    engine.dispose()
    print(f"\\nSERVER {port} {data}", flush=True)
    if os.environ.get("CHILD_HOLD"):
        time.sleep(300)
"""

UNMARKED_TEST = """
def test_unmarked(postgres_url):
    pass
"""

NEED_POSTGRES = {
    "tests/test_replicas_postgres.py::test_two_replicas_share_keys_and_keep_one_primary",
    "tests/test_scheduler_replicas.py::test_two_processes_rotate_and_destroy_exactly_once"
    "[postgres]",
    "tests/test_hostile_input.py::test_postgres_refuses_what_it_cannot_store",
}


def _child(tmp_path: Path, source: str, **env: str) -> subprocess.Popen[str]:
    """pytest on one test file outside tests/, with the project's fixtures as a plugin."""
    test_file = tmp_path / "child" / "test_child.py"
    test_file.parent.mkdir(exist_ok=True)
    test_file.write_text(source)
    environment = {k: v for k, v in os.environ.items() if k != pg_cluster.URL_VARIABLE}
    environment.update(PYTHONPATH=str(REPO), **env)
    command = [sys.executable, "-m", "pytest", "-q", "-s", "-p", "tests.conftest"]
    command += ["-p", "no:cacheprovider", "-c", str(REPO / "pyproject.toml")]
    command += ["--rootdir", str(test_file.parent), str(test_file)]
    return subprocess.Popen(
        command,
        cwd=REPO,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _reported_server(proc: subprocess.Popen[str]) -> tuple[int, Path, str]:
    """The child's (port, data directory) line, and everything it printed up to it."""
    assert proc.stdout is not None
    seen = ""
    for line in proc.stdout:
        seen += line
        if line.startswith("SERVER "):
            _, port, data = line.split(maxsplit=2)
            return int(port), Path(data.strip()), seen
    proc.wait(timeout=60)
    pytest.fail(f"the child reported no server (exit {proc.returncode}):\n{seen}")


def _postgres_processes(data_dir: Path) -> list[str]:
    """Command lines of live processes started on ``data_dir``."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if str(data_dir).encode() in args:
            found.append(b" ".join(args).decode(errors="replace"))
    return found


def _assert_gone(port: int, data_dir: Path) -> None:
    assert not data_dir.exists(), f"{data_dir} was left behind"
    assert _postgres_processes(data_dir) == []
    # Not a bare TCP connect: another process may have been given the port since.
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(
            host="127.0.0.1", port=port, user="postgres", dbname="test", connect_timeout=5
        ).close()


@pytest.mark.postgres
def test_the_tests_start_their_own_server(postgres_url: str) -> None:
    engine = sa.create_engine(postgres_url)
    with engine.connect() as conn:
        port = conn.execute(sa.text("SHOW port")).scalar()
        data_dir = conn.execute(sa.text("SHOW data_directory")).scalar()
        database = conn.execute(sa.text("SELECT current_database()")).scalar()
    engine.dispose()
    assert sa.make_url(postgres_url).port == int(str(port))
    assert database == "test"
    if os.environ.get(pg_cluster.URL_VARIABLE):
        return
    # Not the machine's server: a cluster of this session's in a temporary directory.
    assert Path(str(data_dir)).is_relative_to(tempfile.gettempdir()), data_dir
    assert int(str(port)) != 5432
    if os.geteuid() == 0:
        owner = Path(str(data_dir)).stat().st_uid
        assert owner == pwd.getpwnam(pg_cluster.SERVICE_ACCOUNT).pw_uid


@pytest.mark.postgres
def test_a_named_server_is_used_instead(tmp_path: Path, postgres_server: sa.URL) -> None:
    # The parent's server stands for "a server you have"; named without the driver, as a
    # user would write it.
    named = postgres_server.set(drivername="postgresql").render_as_string(hide_password=False)
    proc = _child(tmp_path, CHILD_TEST, **{pg_cluster.URL_VARIABLE: named})
    port, _, seen = _reported_server(proc)
    out = seen + (proc.communicate(timeout=120)[0] or "")
    assert proc.returncode == 0, out
    assert port == postgres_server.port
    assert "initdb" not in out


@pytest.mark.postgres
@pytest.mark.parametrize("ending", ["finished", "SIGINT", "SIGTERM"])
def test_the_throwaway_cluster_is_gone_after_the_session(tmp_path: Path, ending: str) -> None:
    hold = {} if ending == "finished" else {"CHILD_HOLD": "1"}
    proc = _child(tmp_path, CHILD_TEST, **hold)
    try:
        port, data_dir, seen = _reported_server(proc)
        assert port != 5432
        assert data_dir.exists()
        if ending != "finished":
            proc.send_signal(getattr(signal, ending))
        out = seen + (proc.communicate(timeout=120)[0] or "")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if ending == "finished":
        assert proc.returncode == 0, out
    _assert_gone(port, data_dir)


def test_an_unmarked_test_cannot_use_postgres(tmp_path: Path) -> None:
    proc = _child(tmp_path, UNMARKED_TEST)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 1, out
    assert "mark it @pytest.mark.postgres" in out


def test_every_test_that_needs_postgres_is_marked() -> None:
    # `-m "not postgres"` selects the complement, so this also says that it runs none of them.
    files = sorted({node.split("::")[0] for node in NEED_POSTGRES})
    listed = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "postgres", *files],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert {line for line in listed.stdout.splitlines() if "::" in line} == NEED_POSTGRES


def test_without_initdb_the_tests_say_how_to_install_it(tmp_path: Path) -> None:
    with pytest.raises(pytest.fail.Exception, match="apt-get install postgresql"):
        pg_cluster.bin_dir(root=tmp_path, search_path=str(tmp_path))
