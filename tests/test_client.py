"""kms_hsm.client against a real server: the session app over real HTTP (tests/conftest.py),
and small real HTTP servers in front of it that answer 503, 429, never, or an unfinished
Operation, for the retry, deadline and polling rules."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import inspect
import json
import logging
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from kms_hsm.client import (
    AccessBinding,
    AccessBindingDelta,
    AsyncClient,
    BackendUnavailable,
    Client,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    Operation,
    ResourceExhausted,
    Subject,
    SymmetricKey,
    Unauthenticated,
    Unimplemented,
    Unknown,
    calls,
)
from kms_hsm.client._api import _Api, _Method, _operation_result, _Pages
from kms_hsm.client.models import Status
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
    assert bad.value.message and getattr(bad.value, "field", None) == "defaultAlgorithm"
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


def test_token_and_plaintext_not_in_logs(
    client: Client, admin_token: str, caplog: pytest.LogCaptureFixture
) -> None:
    key = client.create_key(FOLDER)
    with caplog.at_level(logging.DEBUG):
        sealed = client.encrypt(key.id, b"plaintext-marker-7731", aad_context=b"aad-marker-5521")
        client.decrypt(key.id, sealed.ciphertext, aad_context=b"aad-marker-5521")
    assert caplog.records  # httpx and httpcore did log, at DEBUG
    text = "\n".join(r.getMessage() for r in caplog.records)
    for secret in (admin_token, "plaintext-marker-7731", "aad-marker-5521"):
        assert secret not in text
        assert base64.b64encode(secret.encode()).decode() not in text


def test_one_client_many_threads(client: Client) -> None:
    key = client.create_key(FOLDER)

    def round_trip(i: int) -> bytes:
        sealed = client.encrypt(key.id, i.to_bytes(4, "big"))
        return client.decrypt(key.id, sealed.ciphertext).plaintext

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(round_trip, range(64)))
    assert results == [i.to_bytes(4, "big") for i in range(64)]


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


_HOP_HEADERS = ("content-length", "content-encoding", "transfer-encoding", "connection", "date")


class _Front:
    """A real HTTP server that answers per ``script`` and otherwise proxies to ``upstream``."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.hits: list[tuple[str, str]] = []
        self.script: list[Callable[[BaseHTTPRequestHandler], bool]] = []
        # Applied to each proxied JSON answer: (method, path, body) -> body.
        self.rewrite: Callable[[str, str, Any], Any] | None = None
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
                content = r.content
                if front.rewrite is not None and r.status_code == 200:
                    changed = front.rewrite(self.command, self.path, json.loads(content))
                    content = json.dumps(changed).encode()
                front.send(self, r.status_code, content, dict(r.headers))

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
            if k.lower() not in _HOP_HEADERS:
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
    # A create (not safe to repeat) is retried on a 503 only with Retry-After, the server's
    # sign that it refused before doing anything: a 503 from a COMMIT that failed half-way
    # may follow work that was done, and a second Create would make a second key.
    front.hits.clear()
    front.script = [_status(14, 503, "token busy", retry_after="0")]
    with Client(front.url, token=admin_token) as c:
        assert c.create_key(FOLDER).status == "ACTIVE"
    assert len(front.hits) == 2
    front.hits.clear()
    front.script = [_status(14, 503, "database unavailable")]
    with Client(front.url, token=admin_token) as c, pytest.raises(BackendUnavailable):
        c.create_key(FOLDER)
    assert len(front.hits) == 1


def test_internal_retried_only_when_safe(front: _Front, admin_token: str, client: Client) -> None:
    key = client.create_key(FOLDER)
    front.script = [_status(13, 500, "internal error")]
    with Client(front.url, token=admin_token) as c:
        assert c.encrypt(key.id, b"x").key_id == key.id
        front.script = [_status(13, 500, "internal error")]
        with pytest.raises(Internal, match="internal error"):
            c.rotate_key(key.id)


def test_async_retries(front: _Front, admin_token: str, client: Client) -> None:
    key = client.create_key(FOLDER)
    front.script = [_status(14, 503, "token busy"), _status(8, 429, "slow", retry_after="1")]

    async def scenario() -> bytes:
        async with AsyncClient(front.url, token=admin_token) as c:
            sealed = await c.encrypt(key.id, b"async retry")
            return (await c.decrypt(key.id, sealed.ciphertext)).plaintext

    started = time.monotonic()
    assert asyncio.run(scenario()) == b"async retry"
    assert time.monotonic() - started >= 1.0
    assert len(front.hits) == 4


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
def _silent_server(conns: list[socket.socket] | None = None) -> Iterator[str]:
    """A server that accepts connections and reads, and never answers."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    conns = [] if conns is None else conns
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


@contextlib.contextmanager
def _trickling_server() -> Iterator[str]:
    """A server that answers 200 and then sends its body a byte every 0.2 s, for ever."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n")
            conn.sendall(b"content-length: 1000000\r\n\r\n")
            while not stop.is_set():
                conn.sendall(b" ")
                time.sleep(0.2)

    def accept() -> None:
        srv.settimeout(0.1)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                conn = srv.accept()[0]
                threading.Thread(target=serve, args=(conn,), daemon=True).start()

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.getsockname()[1]}"
    finally:
        stop.set()
        t.join()
        srv.close()


def test_deadline_holds_against_a_trickling_answer(admin_token: str) -> None:
    """httpx's timeouts bound each read; the call's deadline bounds the whole answer."""
    with _trickling_server() as url:
        with Client(url, token=admin_token, timeout=1.0) as c:
            started = time.monotonic()
            with pytest.raises(DeadlineExceeded):
                c.get_key("abjk")
            assert time.monotonic() - started < 2.5

        async def scenario() -> float:
            async with AsyncClient(url, token=admin_token, timeout=1.0) as c:
                started = time.monotonic()
                with pytest.raises(DeadlineExceeded):
                    await c.get_key("abjk")
                return time.monotonic() - started

        assert asyncio.run(scenario()) < 2.5


def test_attempt_timeout_retries_only_safe_calls(admin_token: str) -> None:
    conns: list[socket.socket] = []
    with _silent_server(conns) as url:
        c = Client(url, token=admin_token, timeout=1.2, attempt_timeout=0.3)
        with c:
            started = time.monotonic()
            with pytest.raises(DeadlineExceeded):
                c.get_key("abjk")  # safe: a new attempt after each 0.3 s
            assert 1.1 <= time.monotonic() - started < 2.0
            time.sleep(0.2)  # the accept loop polls every 0.1 s
            assert len(conns) >= 3
            conns.clear()
            started = time.monotonic()
            with pytest.raises(DeadlineExceeded, match="attempt timeout"):
                c.create_key(FOLDER)  # not safe: one attempt, then the error
            assert time.monotonic() - started < 0.8
            time.sleep(0.2)
            assert len(conns) == 1


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


def test_unfinished_operation_is_polled(front: _Front, admin_token: str) -> None:
    def undone(method: str, path: str, body: Any) -> Any:
        if method == "POST" and path == "/kms/v1/keys":
            return {k: v for k, v in body.items() if k not in ("done", "response")}
        return body

    front.rewrite = undone
    with Client(front.url, token=admin_token) as c:
        key = c.create_key(FOLDER, name="polled")
    assert key.name == "polled"
    assert [m for m, _ in front.hits] == ["POST", "GET"]
    assert front.hits[1][1].startswith("/operations/")

    async def polled() -> SymmetricKey:
        async with AsyncClient(front.url, token=admin_token) as c:
            return await c.create_key(FOLDER, name="polled async")

    front.hits.clear()
    assert asyncio.run(polled()).name == "polled async"
    assert [m for m, _ in front.hits] == ["POST", "GET"]

    # An Operation that never finishes: DeadlineExceeded at the deadline, not later.
    front.hits.clear()
    front.rewrite = lambda method, path, body: {
        k: v for k, v in body.items() if k not in ("done", "response")
    }
    with Client(front.url, token=admin_token, timeout=1.5) as c:
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded, match="not done"):
            c.create_key(FOLDER)
        assert time.monotonic() - started < 2.0
    assert len(front.hits) > 2


def test_read_reset_retried_only_when_safe(front: _Front, admin_token: str, client: Client) -> None:
    key = client.create_key(FOLDER)

    def reset(h: BaseHTTPRequestHandler) -> bool:
        # Close without an answer: the client sees the connection dropped mid-request.
        h.close_connection = True
        h.connection.shutdown(socket.SHUT_RDWR)
        return True

    front.script = [reset]
    with Client(front.url, token=admin_token) as c:
        assert c.encrypt(key.id, b"x").key_id == key.id  # safe: sent again
    front.script = [reset]
    with Client(front.url, token=admin_token) as c, pytest.raises(BackendUnavailable):
        c.rotate_key(key.id)  # not safe to repeat: raised
    assert len(client.list_versions(key.id).versions) == 1


def test_operation_error_is_raised() -> None:
    call = calls.create_key(FOLDER)
    failed = Operation(id="op1", done=True, error=Status(9, "key is not active"))
    with pytest.raises(FailedPrecondition, match="key is not active"):
        _operation_result(call, failed)
    with pytest.raises(Unimplemented):
        _operation_result(call, Operation(id="op2", done=True, error=Status(12, "nope")))


def test_arguments_are_checked() -> None:
    with pytest.raises(ValueError):
        Client("localhost:8443")
    with pytest.raises(ValueError):
        Client("http://localhost:1", timeout=0)


# --- every method, sync and async ---------------------------------------------------------

API_METHODS = {name for name, value in vars(_Api).items() if isinstance(value, _Method | _Pages)}


class _Caller:
    """Calls a client's methods by name and records which were called; async via a Runner."""

    def __init__(self, client: Client | AsyncClient, runner: asyncio.Runner | None) -> None:
        self.client = client
        self.runner = runner
        self.called: set[str] = set()

    def __call__(self, method: str, /, *args: Any, **kwargs: Any) -> Any:
        self.called.add(method)
        result = getattr(self.client, method)(*args, **kwargs)
        if self.runner is None:
            return list(result) if method.startswith("iter_") else result
        if method.startswith("iter_"):

            async def collect() -> list[Any]:
                return [item async for item in result]

            return self.runner.run(collect())
        return self.runner.run(result)


def _exercise(c: _Caller, admin_token: str) -> None:
    folder = _folder()
    # Symmetric keys.
    key = c(
        "create_key",
        folder,
        name="every",
        description="d",
        labels={"a": "b"},
        default_algorithm="AES_192",
        rotation_period=timedelta(days=30),
        deletion_protection=True,
    )
    assert key.rotation_period == timedelta(days=30) and key.deletion_protection
    assert key.default_algorithm == "AES_192" and key.description == "d"
    op = c("create_key_operation", folder, name="raw")
    assert isinstance(op, Operation) and op.done and op.response_type.endswith("SymmetricKey")
    other = SymmetricKey.from_json(op.response or {})
    got = c("get_operation", op.id)
    assert got.id == op.id and got.done
    assert c("get_key", key.id).id == key.id
    page = c("list_keys", folder, page_size=1)
    assert len(page.keys) == 1 and page.next_page_token
    assert {k.id for k in c("iter_keys", folder, page_size=1)} == {key.id, other.id}
    updated = c("update_key", key.id, name="renamed", labels={})
    assert updated.name == "renamed" and updated.labels == {} and updated.description == "d"
    op = c("update_key_operation", key.id, description="raw update")
    assert op.done and op.response and op.response["description"] == "raw update"
    first = key.primary_version
    assert first is not None
    second = c("rotate_key", key.id)
    assert second.primary and second.id != first.id
    op = c("rotate_key_operation", key.id)
    assert op.done and op.response_type == "yandex.cloud.kms.v1.SymmetricKey"
    assert c("set_primary_version", key.id, first.id).primary_version.id == first.id
    versions = c("list_versions", key.id, page_size=2)
    assert len(versions.versions) == 2 and versions.next_page_token
    assert len(c("iter_versions", key.id, page_size=2)) == 3
    scheduled = c(
        "schedule_version_destruction", key.id, second.id, pending_period=timedelta(days=2)
    )
    assert scheduled.status == "SCHEDULED_FOR_DESTRUCTION" and scheduled.destroy_at is not None
    assert c("cancel_version_destruction", key.id, second.id).status == "ACTIVE"
    enc = c("encrypt", key.id, b"data", aad_context=b"a1")
    re = c(
        "re_encrypt",
        other.id,
        enc.ciphertext,
        source_key_id=key.id,
        source_aad_context=b"a1",
        aad_context=b"a2",
    )
    assert re.key_id == other.id and re.source_key_id == key.id
    assert re.source_version_id == first.id
    assert c("decrypt", other.id, re.ciphertext, aad_context=b"a2").plaintext == b"data"
    dk = c("generate_data_key", key.id, data_key_spec="AES_128")
    assert dk.data_key_plaintext is not None and len(dk.data_key_plaintext) == 16
    ops = c("list_key_operations", key.id, page_size=2)
    assert len(ops.operations) == 2 and ops.next_page_token
    assert len(c("iter_key_operations", key.id)) >= 7
    with pytest.raises(FailedPrecondition):
        c("delete_key", key.id)  # deletion protection
    c("update_key", key.id, deletion_protection=False)
    assert c("delete_key", key.id).id == key.id
    op = c("delete_key_operation", other.id)
    assert op.done
    with pytest.raises(NotFound):
        c("get_key", other.id)

    # Access bindings.
    sa = Subject("ajeclient" + uuid.uuid4().hex[:8], "serviceAccount")
    encrypter = AccessBinding("kms.keys.encrypter", sa)
    viewer = AccessBinding("kms.viewer", sa)
    kept = c("create_key", folder)
    assert c("set_key_access_bindings", kept.id, [encrypter]) is None
    assert c("list_key_access_bindings", kept.id).access_bindings == [encrypter]
    c("update_key_access_bindings", kept.id, [AccessBindingDelta("ADD", viewer)])
    assert set(c("iter_key_access_bindings", kept.id, page_size=1)) == {encrypter, viewer}
    c("update_key_access_bindings", kept.id, [AccessBindingDelta("REMOVE", viewer)])
    assert c("list_key_access_bindings", kept.id).access_bindings == [encrypter]
    c("set_folder_access_bindings", folder, [viewer])
    c("update_folder_access_bindings", folder, [AccessBindingDelta("ADD", encrypter)])
    assert set(c("list_folder_access_bindings", folder).access_bindings) == {viewer, encrypter}
    assert set(c("iter_folder_access_bindings", folder)) == {viewer, encrypter}

    # Asymmetric signature keys.
    sig = c("create_signature_key", folder, name="sig", labels={"x": "y"})
    assert sig.signature_algorithm == "ECDSA_NIST_P256_SHA_256" and sig.status == "ACTIVE"
    assert c("get_signature_key", sig.id) == sig
    assert [k.id for k in c("list_signature_keys", folder).keys] == [sig.id]
    assert [k.id for k in c("iter_signature_keys", folder)] == [sig.id]
    assert c("update_signature_key", sig.id, description="signer").description == "signer"
    pem = c("get_signature_public_key", sig.id)
    public = serialization.load_pem_public_key(pem.public_key.encode())
    assert isinstance(public, ec.EllipticCurvePublicKey)
    signed = c("sign", sig.id, b"message")
    public.verify(signed.signature, b"message", ec.ECDSA(hashes.SHA256()))
    digest = hashes.Hash(hashes.SHA256())
    digest.update(b"other")
    hashed = c("sign_hash", sig.id, digest.finalize())
    public.verify(hashed.signature, b"other", ec.ECDSA(hashes.SHA256()))
    c("set_signature_key_access_bindings", sig.id, [viewer])
    c("update_signature_key_access_bindings", sig.id, [AccessBindingDelta("ADD", encrypter)])
    bound = c("list_signature_key_access_bindings", sig.id).access_bindings
    assert set(bound) == {viewer, encrypter}
    assert len(c("list_signature_key_operations", sig.id).operations) >= 2
    assert c("delete_signature_key", sig.id).id == sig.id

    # Asymmetric encryption keys.
    enc_key = c("create_encryption_key", folder, name="rsa")
    assert enc_key.encryption_algorithm == "RSA_2048_ENC_OAEP_SHA_256"
    assert c("get_encryption_key", enc_key.id) == enc_key
    assert [k.id for k in c("list_encryption_keys", folder).keys] == [enc_key.id]
    assert [k.id for k in c("iter_encryption_keys", folder)] == [enc_key.id]
    assert c("update_encryption_key", enc_key.id, name="rsa2").name == "rsa2"
    pem = c("get_encryption_public_key", enc_key.id)
    rsa_public = serialization.load_pem_public_key(pem.public_key.encode())
    assert isinstance(rsa_public, rsa.RSAPublicKey)
    oaep = padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), None)
    sealed = rsa_public.encrypt(b"for the hsm", oaep)
    assert c("asymmetric_decrypt", enc_key.id, sealed).plaintext == b"for the hsm"
    c("set_encryption_key_access_bindings", enc_key.id, [viewer])
    c("update_encryption_key_access_bindings", enc_key.id, [AccessBindingDelta("REMOVE", viewer)])
    assert c("list_encryption_key_access_bindings", enc_key.id).access_bindings == []
    assert len(c("list_encryption_key_operations", enc_key.id).operations) >= 2
    assert c("delete_encryption_key", enc_key.id).id == enc_key.id

    # IAM: the admin's bearer token exchanged for a short-lived IAM token.
    iam = c("create_iam_token", yandex_passport_oauth_token=admin_token)
    assert iam.iam_token and iam.iam_token not in repr(iam)


def test_every_method_sync(client: Client, admin_token: str) -> None:
    caller = _Caller(client, None)
    _exercise(caller, admin_token)
    assert caller.called == API_METHODS


def test_every_method_async(base_url: str, admin_token: str) -> None:
    with asyncio.Runner() as runner:
        aclient = AsyncClient(base_url, token=admin_token)
        caller = _Caller(aclient, runner)
        try:
            _exercise(caller, admin_token)
        finally:
            runner.run(aclient.aclose())
    assert caller.called == API_METHODS


def test_ids_are_path_segments_and_odd_answers_are_errors(
    client: Client, front: _Front, admin_token: str
) -> None:
    # An id with "/", "?" or "#" is sent percent-encoded, as one path segment: the server
    # refuses it rather than serving another route. (The server decodes "%3A" before
    # routing, so "abj:rotate" meets the :rotate route, which has no GET: 405.)
    expected = {
        "abj/../../iam/v1/tokens": NotFound,
        "abj?folderId=x": InvalidArgument,
        "abj#x": InvalidArgument,
        "abj:rotate": Unimplemented,
    }
    for odd, error in expected.items():
        with pytest.raises(error):
            client.get_key(odd)
    # A 200 of the wrong shape is an error, not a half-filled result.
    key = client.create_key(FOLDER)
    front.rewrite = lambda method, path, body: {"unexpected": True}
    with Client(front.url, token=admin_token) as c, pytest.raises(Unknown, match="unexpected"):
        c.get_key(key.id)


def test_both_clients_have_the_same_methods() -> None:
    sync, asyn = Client("http://127.0.0.1:9"), AsyncClient("http://127.0.0.1:9")
    try:
        for name in API_METHODS:
            s, a = getattr(sync, name), getattr(asyn, name)
            assert inspect.signature(s) == inspect.signature(a).replace(
                return_annotation=inspect.signature(s).return_annotation
            ), name
            assert s.__doc__ and s.__doc__ == a.__doc__, name
            assert inspect.iscoroutinefunction(a) or inspect.isasyncgenfunction(a), name
        assert str(inspect.signature(sync.iter_keys).return_annotation) == "Iterator[SymmetricKey]"
        assert inspect.signature(sync.create_key).return_annotation == "SymmetricKey"
        assert inspect.signature(sync.create_key_operation).return_annotation == "Operation"
        assert Client.encrypt.__doc__ == calls.encrypt.__doc__
    finally:
        sync.close()
        asyncio.run(asyn.aclose())


def _dummy_call(build: Callable[..., calls.Call[Any]]) -> calls.Call[Any]:
    """``build`` called with placeholder values for its required parameters."""
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    for p in inspect.signature(build).parameters.values():
        if p.default is not inspect.Parameter.empty:
            continue
        value: Any = (
            b"x" if p.annotation == "bytes" else [] if "Iterable" in p.annotation else "id1"
        )
        if p.kind is inspect.Parameter.KEYWORD_ONLY:
            kwargs[p.name] = value
        else:
            args.append(value)
    return build(*args, **kwargs)


def test_every_openapi_operation_has_a_method() -> None:
    spec = json.loads((Path(__file__).parent.parent / "kms_hsm/api/openapi.json").read_text())
    served = {
        (method.upper(), re.sub(r"\{[^}]+\}", "{}", path))
        for path, item in spec["paths"].items()
        for method in item
        if method in ("get", "post", "patch", "delete", "put")
    }
    covered = set()
    for name in API_METHODS:
        build = vars(_Api)[name].build
        call = _dummy_call(build)
        covered.add((call.method, call.path.replace("id1", "{}")))
    assert served == covered
