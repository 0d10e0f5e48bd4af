"""A throwaway PostgreSQL cluster for the tests: ``initdb`` and ``pg_ctl`` in a temporary
directory, on a free loopback port, trust auth, one database ``test``; or the server that
``KMS_HSM_TEST_DATABASE_URL`` names."""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import pytest
import sqlalchemy as sa

URL_VARIABLE = "KMS_HSM_TEST_DATABASE_URL"
DEBIAN_ROOT = Path("/usr/lib/postgresql")
INSTALL_HINT = (
    "the PostgreSQL tests start their own server with initdb and pg_ctl, which are not "
    "installed: run `bash softhsm/bootstrap.sh --dev` (or `apt-get install postgresql`), "
    f"or set {URL_VARIABLE}=postgresql://USER@HOST:PORT/DB to use a server you have "
    "(or deselect them with -m 'not postgres')"
)
# PostgreSQL refuses to run as root; as root the cluster belongs to this account, which
# Debian's postgresql package creates.
SERVICE_ACCOUNT = "postgres"


def bin_dir(root: Path = DEBIAN_ROOT, search_path: str | None = None) -> Path:
    """The directory of ``initdb`` and ``pg_ctl``: the newest Debian version, else ``PATH``."""
    versions = [p.parent for p in root.glob("*/bin") if p.parent.name.isdigit()]
    for version in sorted(versions, key=lambda p: int(p.name), reverse=True):
        if all((version / "bin" / tool).exists() for tool in ("initdb", "pg_ctl")):
            return version / "bin"
    initdb = shutil.which("initdb", path=search_path)
    if initdb and shutil.which("pg_ctl", path=str(Path(initdb).parent)):
        return Path(initdb).parent
    pytest.fail(INSTALL_HINT, pytrace=False)


def url_from_environment() -> sa.URL | None:
    """The server named by ``KMS_HSM_TEST_DATABASE_URL``, with the psycopg driver."""
    named = os.environ.get(URL_VARIABLE, "").strip()
    if not named:
        return None
    try:
        url = sa.make_url(named)
    except sa.exc.ArgumentError as exc:
        pytest.fail(f"{URL_VARIABLE} is not a database URL: {exc}", pytrace=False)
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    if url.drivername != "postgresql+psycopg":
        pytest.fail(
            f"{URL_VARIABLE} must be a postgresql:// URL, not {url.drivername}://", pytrace=False
        )
    return url


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cluster:
    """One PostgreSQL cluster in a temporary directory, stopped and removed by ``stop``."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="kms-hsm-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.port = 0
        self._owner: pwd.struct_passwd | None = None
        self._running = False
        self._removed = False
        self.startup_seconds = 0.0
        if os.geteuid() == 0:
            try:
                self._owner = pwd.getpwnam(SERVICE_ACCOUNT)
            except KeyError:
                self.remove()
                pytest.fail(
                    f"PostgreSQL will not run as root and there is no {SERVICE_ACCOUNT!r} "
                    f"account to run it as: apt-get install postgresql, or set {URL_VARIABLE}",
                    pytrace=False,
                )
            os.chown(self.root, self._owner.pw_uid, self._owner.pw_gid)

    @property
    def url(self) -> sa.URL:
        """The ``test`` database over TCP, as the superuser ``postgres`` (trust auth)."""
        return sa.URL.create(
            "postgresql+psycopg",
            username="postgres",
            host="127.0.0.1",
            port=self.port,
            database="test",
        )

    def _run(self, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        command = [str(self.bindir / args[0]), *args[1:]]
        if self._owner is not None:
            runuser = shutil.which("runuser") or "/usr/sbin/runuser"
            command = [runuser, "-u", self._owner.pw_name, "--", *command]
        return subprocess.run(
            command, cwd=self.root, capture_output=True, text=True, timeout=timeout, check=False
        )

    def start(self) -> None:
        """initdb, then pg_ctl start on a free port (another if that one was taken meanwhile),
        then the ``test`` database."""
        done = self._run(
            "initdb",
            "--pgdata",
            str(self.data),
            "--username",
            "postgres",
            "--auth",
            "trust",
            "--encoding",
            "UTF8",
            "--locale",
            "C",
            "--no-sync",
            timeout=120,
        )
        if done.returncode != 0:
            self.remove()
            pytest.fail(f"initdb failed:\n{done.stdout}{done.stderr}", pytrace=False)
        for _ in range(3):
            self.port = _free_port()
            # Later lines win; durability is worth nothing in a cluster thrown away at exit.
            with (self.data / "postgresql.conf").open("a") as conf:
                conf.write(
                    f"\nlisten_addresses = '127.0.0.1'\nport = {self.port}\n"
                    f"unix_socket_directories = '{self.root}'\n"
                    "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                )
            self._running = True
            started = self._run(
                "pg_ctl", "start", "--pgdata", str(self.data), "--log", str(self.log),
                "--wait", "--timeout", "60", timeout=90,
            )  # fmt: skip
            if started.returncode == 0:
                break
            self._pg_ctl_stop()
        else:
            log = self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""
            self.stop()
            pytest.fail(f"pg_ctl start failed:\n{started.stderr}\n{log}", pytrace=False)
        engine = sa.create_engine(self.url.set(database="postgres"), isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                conn.execute(sa.text("CREATE DATABASE test"))
        finally:
            engine.dispose()

    def _pg_ctl_stop(self) -> None:
        # One thread only (teardown, atexit and signal handlers all run on the main one).
        if not self._running:
            return
        self._running = False
        self._run(
            "pg_ctl", "stop", "--pgdata", str(self.data), "--mode", "immediate", "--wait",
            timeout=60,
        )  # fmt: skip

    def remove(self) -> None:
        """Delete the temporary directory (the cluster must be stopped)."""
        if not self._removed:
            self._removed = True
            shutil.rmtree(self.root, ignore_errors=True)

    def stop(self) -> None:
        """Stop the server at once (nothing in it is worth a clean shutdown) and delete it;
        safe to call more than once, from teardown, atexit or a signal handler."""
        self._pg_ctl_stop()
        self.remove()


@contextlib.contextmanager
def throwaway_cluster(bindir: Path) -> Iterator[Cluster]:
    """A started cluster, stopped when the block ends, at interpreter exit, or on SIGTERM."""
    cluster = Cluster(bindir)
    atexit.register(cluster.stop)
    previous = signal.getsignal(signal.SIGTERM)
    on_main_thread = threading.current_thread() is threading.main_thread()
    # pytest dies on SIGTERM without teardown or atexit; stop the cluster first, then die
    # the way SIGTERM would have.
    handle = on_main_thread and previous == signal.SIG_DFL

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        cluster.stop()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)

    if handle:
        signal.signal(signal.SIGTERM, on_sigterm)
    try:
        begun = time.monotonic()
        cluster.start()
        cluster.startup_seconds = time.monotonic() - begun
        yield cluster
    finally:
        if handle:
            signal.signal(signal.SIGTERM, previous)
        cluster.stop()
        atexit.unregister(cluster.stop)
