"""Session fixtures: a real SoftHSM2 token made by softhsm/init-token.sh, a real database,
and the app served by uvicorn over real HTTP on loopback."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
import uvicorn
from anyio.from_thread import BlockingPortal, start_blocking_portal

# Before anything imports grpc: this process holds SDK channels while it starts servers and
# CLIs by fork + exec (see kms_hsm/grpc/__init__.py for why the handlers must be off).
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")

from kms_hsm.api.app import create_app
from kms_hsm.config import Settings
from kms_hsm.crypto.pkcs11.sessions import SessionManager
from kms_hsm.service.runtime import Runtime, prepare
from tests import pg_cluster

REPO = Path(__file__).resolve().parent.parent
SOFTHSM_MODULE = os.environ.get("KMS_HSM_PKCS11_LIBRARY", "/usr/lib/softhsm/libsofthsm2.so")


def init_token(data_dir: Path, label: str = "kms-hsm") -> None:
    """Run the same init script that docker-compose and the embedded default use."""
    if not Path(SOFTHSM_MODULE).exists():
        pytest.fail(f"SoftHSM2 is not installed ({SOFTHSM_MODULE}): apt-get install -y softhsm2")
    env = dict(os.environ, PYTHON=sys.executable, KMS_HSM_TOKEN_LABEL=label)
    subprocess.run(
        ["bash", str(REPO / "softhsm" / "init-token.sh"), str(data_dir)], env=env, check=True
    )


def free_port() -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def token_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh SoftHSM2 token for this test session; SOFTHSM2_CONF points at it."""
    data_dir = tmp_path_factory.mktemp("token")
    init_token(data_dir)
    os.environ["SOFTHSM2_CONF"] = str(data_dir / "softhsm2.conf")
    return data_dir


@pytest.fixture(scope="session")
def fault_shim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The PKCS#11 module of the outage tests (tests/faults/pkcs11_fault_shim.c), built here:
    it forwards to SoftHSM2 and fails or holds every call while its control file exists."""
    out = tmp_path_factory.mktemp("shim") / "libpkcs11-fault.so"
    source = REPO / "tests" / "faults" / "pkcs11_fault_shim.c"
    flags = ["-shared", "-fPIC", "-O2", "-Wall", "-Werror"]
    subprocess.run(["gcc", *flags, "-o", str(out), str(source), "-ldl"], check=True, timeout=60)
    return out


@pytest.fixture(scope="session")
def settings(token_dir: Path) -> Settings:
    """Settings for the in-process runtime: the session token, SQLite in the same dir."""
    return Settings(
        data_dir=token_dir,
        pin_file=token_dir / "user-pin",
        database_url=f"sqlite:///{token_dir / 'kms.db'}",
        scheduler_interval=0,
    )


class SteppingClock:
    """Real time plus an offset that tests move forward (never back)."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def advance(self, delta: timedelta) -> None:
        self.offset += delta


@pytest.fixture(scope="session")
def clock() -> SteppingClock:
    """The injected clock of the session runtime."""
    return SteppingClock()


@pytest.fixture(scope="session")
def portal() -> Iterator[BlockingPortal]:
    """An event loop on a thread of its own, for tests that call the async services."""
    with start_blocking_portal() as portal:
        yield portal


Await = Callable[[Awaitable[object]], object]


@pytest.fixture(scope="session")
def wait(portal: BlockingPortal) -> Await:
    """``wait(coroutine)``: its result, awaited on the portal's loop (and its HSM agent)."""

    def run(awaitable: Awaitable[object]) -> object:
        async def inner() -> object:
            return await awaitable

        return portal.call(inner)

    return run


@pytest.fixture(scope="session")
def runtime(settings: Settings, clock: SteppingClock, portal: BlockingPortal) -> Iterator[Runtime]:
    """Database migrated, admin token issued, HSM agent logged in; scheduler not running."""
    prepare(settings)
    rt = Runtime.start(settings, clock)
    portal.call(rt.open)
    yield rt
    rt.close()


def token_key_ids(token_dir: Path) -> set[str]:
    """The ``CKA_ID`` of every secret key in the token, read by a process of its own: a
    process's view of the token can miss what another process changed (softhsm-facts.md)."""
    listed = subprocess.run(
        [sys.executable, "-m", "tests.token_tool", str(token_dir), "list"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    return set(json.loads(listed.stdout))


@pytest.fixture(scope="session")
def token_sessions(runtime: Runtime, settings: Settings) -> Iterator[SessionManager]:
    """The tests' own view of the session token, to inspect what the service left in it.

    The service never uses this: its processes reach the token only through their agents.
    """
    sessions = SessionManager(settings.pkcs11_library, settings.token_label, settings.read_pin())
    sessions.start()
    yield sessions
    sessions.close()


@pytest.fixture(scope="session")
def admin_token(runtime: Runtime, settings: Settings) -> str:
    """The bearer token written at first start."""
    return settings.admin_token_file.read_text().strip()


@contextlib.contextmanager
def serve_inprocess(runtime: Runtime) -> Iterator[str]:
    """The app for ``runtime`` on uvicorn in a background thread, over real HTTP."""
    port = free_port()
    config = uvicorn.Config(
        create_app(runtime=runtime), host="127.0.0.1", port=port, log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if time.monotonic() > deadline:
            pytest.fail("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="session")
def base_url(runtime: Runtime) -> Iterator[str]:
    """The session app over real HTTP."""
    with serve_inprocess(runtime) as url:
        yield url


def nodelay() -> httpx.HTTPTransport:
    """A client transport with TCP_NODELAY: httpx writes headers and body separately, and
    Nagle's algorithm would then wait for the server's delayed ACK (~40 ms a request)."""
    return httpx.HTTPTransport(socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])


@pytest.fixture(scope="session")
def api(base_url: str, admin_token: str) -> Iterator[httpx.Client]:
    """An HTTP client that authenticates as the admin."""
    with httpx.Client(
        base_url=base_url,
        headers={"Authorization": f"Bearer {admin_token}"},
        timeout=30,
        transport=nodelay(),
    ) as client:
        yield client


def create_key(api: httpx.Client, algorithm: str, **fields: object) -> dict[str, object]:
    """Create a key over HTTP and return the key message from the Operation."""
    body = {"folderId": "b1gtestfolder", "name": f"k-{algorithm.lower()}", **fields}
    body["defaultAlgorithm"] = algorithm
    r = api.post("/kms/v1/keys", json=body)
    assert r.status_code == 200, r.text
    op = r.json()
    assert op["done"] is True
    key: dict[str, object] = op["response"]
    return key


KMS_HSM = str(Path(sys.executable).with_name("kms-hsm"))


def serve_env(data_dir: Path, port: int, **extra: str) -> dict[str, str]:
    """Environment for a `kms-hsm serve` subprocess on the embedded default."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KMS_HSM_", "SOFTHSM2_"))}
    # gRPC off unless a test asks for it: the embedded default would serve 50051 in each.
    env.update(KMS_HSM_GRPC_PORT="off", KMS_HSM_DATA_DIR=str(data_dir), KMS_HSM_PORT=str(port))
    env.update(extra)
    return env


def wait_until_serving(proc: subprocess.Popen[bytes], base_url: str, timeout: float = 60) -> None:
    """Poll until the server answers (401 without a token) or the process dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"kms-hsm serve exited with {proc.returncode}")
        try:
            if httpx.get(f"{base_url}/kms/v1/keys/probe", timeout=1).status_code == 401:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    pytest.fail("kms-hsm serve did not start in time")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if it lingers."""
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[sa.URL]:
    """The PostgreSQL server of this session: the one ``KMS_HSM_TEST_DATABASE_URL`` names,
    else a throwaway cluster started here (tests/pg_cluster.py) and stopped at the end."""
    named = pg_cluster.url_from_environment()
    if named is not None:
        yield named
        return
    with pg_cluster.throwaway_cluster(pg_cluster.bin_dir()) as cluster:
        yield cluster.url


@pytest.fixture
def postgres_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh schema in the session's PostgreSQL database, dropped afterwards."""
    if request.node.get_closest_marker("postgres") is None:
        # So that `-m "not postgres"` runs nothing that needs the server (checked before
        # the server is started).
        pytest.fail(f"{request.node.nodeid} uses PostgreSQL: mark it @pytest.mark.postgres")
    postgres_server: sa.URL = request.getfixturevalue("postgres_server")
    schema = f"kms_test_{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(postgres_server)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    except sa.exc.OperationalError as exc:
        engine.dispose()
        pytest.fail(f"PostgreSQL at {postgres_server!r} is required: {exc}")
    url = postgres_server.update_query_dict({"options": f"-csearch_path={schema}"})
    yield url.render_as_string(hide_password=False)
    with engine.begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
    engine.dispose()
