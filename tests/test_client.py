"""kms_hsm.client against a real server: the session app over real HTTP (tests/conftest.py),
and small real HTTP servers in front of it that answer 503, 429, never, or an unfinished
Operation, for the retry, deadline and polling rules."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from kms_hsm.client import (
    AsyncClient,
    BackendUnavailable,
    Client,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    SymmetricKey,
    Unauthenticated,
)
from kms_hsm.errors import StatusCode

FOLDER = "b1gclientfolder"


@pytest.fixture
def client(base_url: str, admin_token: str) -> Iterator[Client]:
    """A sync client as the admin."""
    with Client(base_url, token=admin_token) as c:
        yield c


def _folder() -> str:
    return f"b1gcl{uuid.uuid4().hex[:12]}"


# --- the data plane and key management, sync ----------------------------------------------


def test_symmetric_round_trip(client: Client) -> None:
    key = client.create_key(FOLDER, name="c-sym", labels={"team": "a"})
    assert isinstance(key, SymmetricKey)
    assert key.status == "ACTIVE" and key.default_algorithm == "AES_256"
    assert key.labels == {"team": "a"} and key.primary_version is not None
    enc = client.encrypt(key.id, b"hello", aad_context=b"ctx")
    assert enc.key_id == key.id and enc.version_id == key.primary_version.id
    assert isinstance(enc.ciphertext, bytes) and b"hello" not in enc.ciphertext
    dec = client.decrypt(key.id, enc.ciphertext, aad_context=b"ctx")
    assert dec.plaintext == b"hello" and dec.version_id == enc.version_id
    assert "hello" not in repr(dec)
    dk = client.generate_data_key(key.id, aad_context=b"ctx")
    assert dk.data_key_plaintext is not None and len(dk.data_key_plaintext) == 32
    back = client.decrypt(key.id, dk.data_key_ciphertext, aad_context=b"ctx")
    assert back.plaintext == dk.data_key_plaintext
    skipped = client.generate_data_key(key.id, data_key_spec="AES_128", skip_plaintext=True)
    assert skipped.data_key_plaintext is None and skipped.data_key_ciphertext
    assert client.get_key(key.id) == key


def test_version_pin(client: Client) -> None:
    key = client.create_key(FOLDER, default_algorithm="AES_128")
    first = key.primary_version
    assert first is not None
    client.rotate_key(key.id)
    enc = client.encrypt(key.id, b"p", version_id=first.id)
    assert enc.version_id == first.id
    assert client.decrypt(key.id, enc.ciphertext).plaintext == b"p"


def test_errors_by_code(client: Client, base_url: str) -> None:
    with pytest.raises(NotFound) as nf:
        client.get_key("abjnosuchkey0000000")
    assert nf.value.code == StatusCode.NOT_FOUND
    assert getattr(nf.value, "http_status", None) == 404
    assert getattr(nf.value, "request_id", None)
    key = client.create_key(FOLDER)
    enc = client.encrypt(key.id, b"x", aad_context=b"a")
    with pytest.raises(InvalidArgument):
        client.decrypt(key.id, enc.ciphertext, aad_context=b"b")
    with pytest.raises(InvalidArgument) as bad:
        client.create_key(FOLDER, default_algorithm="AES_1024")
    assert bad.value.message
    client.update_key(key.id, status="INACTIVE")
    with pytest.raises(FailedPrecondition):
        client.encrypt(key.id, b"x")
    with Client(base_url) as anonymous, pytest.raises(Unauthenticated):
        anonymous.get_key(key.id)


def test_token_never_shown(base_url: str, admin_token: str) -> None:
    secret = "s3cr3t-" + uuid.uuid4().hex
    with Client(base_url, token=secret) as c:
        assert secret not in repr(c) and secret not in str(c)
        with pytest.raises(Unauthenticated) as err:
            c.get_key("abjnosuchkey0000000")
        assert secret not in str(err.value) and secret not in repr(err.value)
    with Client(base_url, token=admin_token) as c:
        assert admin_token not in repr(c)
    # A transport failure names the endpoint, not the token.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with Client(f"http://127.0.0.1:{port}", token=secret, timeout=2, retries=1) as c:
        with pytest.raises(BackendUnavailable) as down:
            c.get_key("k")
        assert secret not in str(down.value) and secret not in repr(down.value)


# --- async --------------------------------------------------------------------------------


def test_async_round_trip(base_url: str, admin_token: str) -> None:
    async def scenario() -> None:
        async with AsyncClient(base_url, token=admin_token) as c:
            key = await c.create_key(FOLDER, name="c-async")
            enc = await c.encrypt(key.id, b"async", aad_context=b"c")
            assert (await c.decrypt(key.id, enc.ciphertext, aad_context=b"c")).plaintext == b"async"
            dk = await c.generate_data_key(key.id)
            assert dk.data_key_plaintext is not None
            assert (await c.get_key(key.id)).id == key.id
            with pytest.raises(NotFound):
                await c.get_key("abjnosuchkey0000000")
            # Concurrency on one client.
            results = await asyncio.gather(*(c.encrypt(key.id, bytes([i])) for i in range(8)))
            plain = await asyncio.gather(*(c.decrypt(key.id, r.ciphertext) for r in results))
            assert [p.plaintext for p in plain] == [bytes([i]) for i in range(8)]

    asyncio.run(scenario())


# --- real servers in front: retries, deadline, polling ------------------------------------


class _Front:
    """A real HTTP server that answers per ``script`` and otherwise proxies to ``upstream``."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.hits: list[tuple[str, str]] = []
        self.script: list[Callable[[BaseHTTPRequestHandler], bool]] = []
        self.lock = threading.Lock()
        front = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                with front.lock:
                    front.hits.append((self.command, self.path))
                    step = front.script.pop(0) if front.script else None
                if step is not None and step(self):
                    return
                headers = {
                    k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")
                }
                r = httpx.request(
                    self.command, front.upstream + self.path, headers=headers, content=body
                )
                front.send(self, r.status_code, r.content, dict(r.headers))

            do_GET = do_POST = do_PATCH = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @staticmethod
    def send(
        h: BaseHTTPRequestHandler, status: int, body: bytes, headers: dict[str, str] | None = None
    ) -> None:
        """Answer ``status`` with ``body``."""
        h.send_response(status)
        for k, v in (headers or {}).items():
            if k.lower() not in ("content-length", "transfer-encoding", "connection", "date"):
                h.send_header(k, v)
        h.send_header("content-length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def close(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()


def _status(
    code: int, http: int, message: str, retry_after: str | None = None
) -> Callable[[BaseHTTPRequestHandler], bool]:
    def answer(h: BaseHTTPRequestHandler) -> bool:
        body = f'{{"code": {code}, "message": "{message}", "details": []}}'.encode()
        headers = {"content-type": "application/json"}
        if retry_after is not None:
            headers["retry-after"] = retry_after
        _Front.send(h, http, body, headers)
        return True

    return answer


@pytest.fixture
def front(base_url: str) -> Iterator[_Front]:
    """A scriptable real HTTP server in front of the session app."""
    f = _Front(base_url)
    yield f
    f.close()


def test_retries_503_then_succeeds(front: _Front, admin_token: str, client: Client) -> None:
    key = client.create_key(FOLDER)
    front.script = [_status(14, 503, "token busy"), _status(14, 503, "token busy")]
    with Client(front.url, token=admin_token) as c:
        assert c.decrypt(key.id, c.encrypt(key.id, b"r").ciphertext).plaintext == b"r"
    assert len(front.hits) == 4  # two 503s, the encrypt, the decrypt
    # A create (not safe to repeat) is retried on 503 too: the server did not do it.
    front.hits.clear()
    front.script = [_status(14, 503, "token busy")]
    with Client(front.url, token=admin_token) as c:
        assert c.create_key(FOLDER).status == "ACTIVE"
    assert len(front.hits) == 2


def test_retry_gives_up_with_server_error(front: _Front, admin_token: str) -> None:
    front.script = [_status(14, 503, "token busy")] * 10
    with (
        Client(front.url, token=admin_token, retries=2) as c,
        pytest.raises(BackendUnavailable) as err,
    ):
        c.get_key("abjwhatever")
    assert err.value.message == "token busy"
    assert len(front.hits) == 3


def test_retry_after_is_honoured(front: _Front, admin_token: str, client: Client) -> None:
    key = client.create_key(FOLDER)
    front.script = [_status(14, 503, "busy", retry_after="1")]
    with Client(front.url, token=admin_token) as c:
        started = time.monotonic()
        c.encrypt(key.id, b"x")
        assert time.monotonic() - started >= 1.0
    # 429 with Retry-After is retried; without it, raised at once.
    front.script = [_status(8, 429, "slow down", retry_after="1")]
    with Client(front.url, token=admin_token) as c:
        c.encrypt(key.id, b"x")
    front.script = [_status(8, 429, "slow down")]
    with Client(front.url, token=admin_token) as c, pytest.raises(ResourceExhausted):
        c.encrypt(key.id, b"x")
    # A Retry-After past the deadline: raised at once, not slept on.
    front.script = [_status(14, 503, "busy", retry_after="30")]
    with Client(front.url, token=admin_token, timeout=2) as c:
        started = time.monotonic()
        with pytest.raises(BackendUnavailable):
            c.encrypt(key.id, b"x")
        assert time.monotonic() - started < 1.0


@contextlib.contextmanager
def _silent_server() -> Iterator[str]:
    """A server that accepts connections and reads, and never answers."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    conns: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        srv.settimeout(0.1)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                conns.append(srv.accept()[0])

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.getsockname()[1]}"
    finally:
        stop.set()
        t.join()
        for c in conns:
            c.close()
        srv.close()


def test_deadline(admin_token: str) -> None:
    with _silent_server() as url:
        with Client(url, token=admin_token, timeout=1.0) as c:
            started = time.monotonic()
            with pytest.raises(DeadlineExceeded) as err:
                c.encrypt("abjk", b"x")
            elapsed = time.monotonic() - started
        assert 0.9 <= elapsed < 2.0, elapsed
        assert isinstance(err.value, BackendUnavailable)
        assert err.value.code == StatusCode.DEADLINE_EXCEEDED

        async def scenario() -> float:
            async with AsyncClient(url, token=admin_token, timeout=1.0) as c:
                started = time.monotonic()
                with pytest.raises(DeadlineExceeded):
                    await c.get_key("abjk")
                return time.monotonic() - started

        assert 0.9 <= asyncio.run(scenario()) < 2.0


def test_connection_refused_is_retried_then_unavailable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with (
        Client(f"http://127.0.0.1:{port}", retries=3) as c,
        pytest.raises(BackendUnavailable) as err,
    ):
        c.get_key("k")
    assert "cannot reach" in err.value.message and "4 attempt" in err.value.message
