"""The HTTP front against hostile connections (issue 15 findings 1 and 2): oversized and
half-sent request heads, and more connections than a worker may hold. A real `kms-hsm serve`
process, raw sockets for the attacker, httpx for the client."""

from __future__ import annotations

import base64
import resource
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from cryptography.hazmat.primitives.asymmetric import ec

from tests.conftest import KMS_HSM, free_port, serve_env, stop, wait_until_serving
from tests.test_tls import _issue, _write

HEADER_TIMEOUT = 1.0


@dataclass
class Served:
    proc: subprocess.Popen[bytes]
    port: int
    url: str
    token: str
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[object]:
    """``serve(*args, nofile=None, **env)``: a `kms-hsm serve` process, stopped afterwards."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(*args: str, nofile: int | None = None, **env: str) -> Served:
        port = free_port()
        data = tmp_path / f"data-{port}"
        log = tmp_path / f"serve-{port}.log"

        def limit_fds() -> None:
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        with log.open("wb") as out:
            proc = subprocess.Popen(
                [KMS_HSM, "serve", *args],
                env=serve_env(data, port, **env),
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=limit_fds,
            )
        procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        if "--tls-cert" not in args:
            wait_until_serving(proc, url)
        token = ""
        deadline = time.monotonic() + 60
        while not token and time.monotonic() < deadline:
            admin = data / "admin-token"
            token = admin.read_text().strip() if admin.exists() else ""
            time.sleep(0.05)
        return Served(proc, port, url, token, log)

    yield start
    for proc in procs:
        stop(proc)


def connect(port: int, timeout: float = 10) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_all(sock: socket.socket, timeout: float) -> bytes:
    """Everything the server sends until it closes; raises TimeoutError if it does not."""
    sock.settimeout(timeout)
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except ConnectionResetError:
        pass
    return b"".join(chunks)


def head(size: int) -> bytes:
    """A GET /healthz head of exactly ``size`` bytes."""
    start = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: "
    end = b"\r\n\r\n"
    return start + b"a" * (size - len(start) - len(end)) + end


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def encrypt_key(s: Served, algorithm: str) -> str:
    r = httpx.post(
        f"{s.url}/kms/v1/keys",
        json={"folderId": "b1g-front", "defaultAlgorithm": algorithm},
        headers={"Authorization": f"Bearer {s.token}"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    return str(r.json()["response"]["id"])


def encrypt(client: httpx.Client, key_id: str) -> httpx.Response:
    return client.post(
        f"/kms/v1/keys/{key_id}:encrypt",
        json={"plaintext": base64.b64encode(b"front").decode()},
    )


def test_heads_up_to_the_limit_are_served_beyond_it_431_and_closed(serve) -> None:
    s = serve()
    with connect(s.port) as sock:
        sock.sendall(head(16 * 1024) + head(16 * 1024))  # two at the limit, keep-alive
        sock.settimeout(10)
        got = b""
        while got.count(b"HTTP/1.1 200") < 2:
            got += sock.recv(65536)
    for size in (16 * 1024 + 1, 64 * 1024):
        with connect(s.port) as sock:
            sock.sendall(head(size))
            answer = read_all(sock, 10)
        assert answer.startswith(b"HTTP/1.1 431 "), (size, answer[:100])
        assert b"connection: close" in answer
    assert "Traceback" not in s.text()


def test_an_endless_header_costs_neither_memory_nor_other_clients_time(serve) -> None:
    s = serve()
    key_id = encrypt_key(s, "AES_256_HSM")
    before = rss_kib(s.proc.pid)
    sent = 0
    started = time.monotonic()
    with connect(s.port) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Flood: ")
        chunk = b"a" * (1 << 20)
        with pytest.raises(OSError):  # reset once the server gives up on it
            while sent < 200 << 20:
                sock.sendall(chunk)
                sent += len(chunk)
    # Finding: 200 MiB were read, parsed for 45 s and grew the worker by 190 MB.
    assert time.monotonic() - started < 10
    assert sent < 32 << 20, sent  # the kernel's buffers, not the server's
    assert rss_kib(s.proc.pid) - before < 20_000
    with httpx.Client(base_url=s.url, headers={"Authorization": f"Bearer {s.token}"}) as client:
        assert encrypt(client, key_id).status_code == 200


def test_a_head_not_sent_in_time_is_closed(serve) -> None:
    s = serve(KMS_HSM_HEADER_TIMEOUT=str(HEADER_TIMEOUT))
    # Finding: 50 connections with half a request line stayed open for good.
    half = [connect(s.port) for _ in range(50)]
    for sock in half:
        sock.sendall(b"GET /hea")
    silent = connect(s.port)
    trickle = connect(s.port)
    started = time.monotonic()
    trickled = b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
    try:
        # A byte every 0.2 s keeps no connection open past the deadline of its head.
        for i in range(len(trickled)):
            try:
                trickle.send(trickled[i : i + 1])
            except OSError:
                break
            time.sleep(0.2)
            if time.monotonic() - started > 4 * HEADER_TIMEOUT:
                break
        assert time.monotonic() - started < 4 * HEADER_TIMEOUT + 1
        for sock in half:
            answer = read_all(sock, 10)
            assert answer.startswith(b"HTTP/1.1 408 "), answer[:100]
        assert read_all(silent, 10) == b""  # nothing sent, nothing said: closed quietly
        assert read_all(trickle, 10).startswith(b"HTTP/1.1 408 ")
    finally:
        for sock in [*half, silent, trickle]:
            sock.close()
    # Idle time between requests is the keep-alive timeout (uvicorn's 5 s), not this one.
    with connect(s.port) as sock:
        sock.sendall(head(100))
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        time.sleep(2 * HEADER_TIMEOUT)
        sock.sendall(head(100))
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
    assert "Traceback" not in s.text()


def fill(port: int, count: int) -> list[socket.socket]:
    """``count`` connections that each sent half a request line (fewer if refused)."""
    opened = []
    for _ in range(count):
        try:
            sock = connect(port, timeout=2)
            sock.sendall(b"POST /kms/v1/ke")
        except OSError:
            continue
        opened.append(sock)
    return opened


def still_open(socks: list[socket.socket]) -> int:
    """How many of ``socks`` the server has not closed."""
    count = 0
    for sock in socks:
        sock.setblocking(False)
        try:
            if sock.recv(1) == b"":
                continue
        except BlockingIOError:
            count += 1
        except OSError:
            continue
    return count


@pytest.mark.parametrize(
    ("how", "cap"),
    [("setting, two workers", 40), ("open-file limit", 400 - 256)],
)
def test_a_full_house_of_half_open_connections_does_not_take_the_service_down(
    serve, how: str, cap: int
) -> None:
    if how.startswith("setting"):
        s = serve("--workers", "2", KMS_HSM_MAX_CONNECTIONS=str(cap // 2))
        attackers = 4 * cap
    else:
        # Finding: ~20,200 half-open connections used up the file descriptors: every request
        # failed, and so did the scheduler and PKCS#11. Here the worker may open 400 files.
        s = serve(nofile=400)
        attackers = 600
    hsm_key = encrypt_key(s, "AES_256_HSM")
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft[0], min(4096, soft[1])), soft[1]))
    half = fill(s.port, attackers)
    try:
        with httpx.Client(
            base_url=s.url, headers={"Authorization": f"Bearer {s.token}"}, timeout=10
        ) as client:
            for _ in range(5):
                assert encrypt(client, hsm_key).status_code == 200
                assert client.get("/healthz").status_code == 200
        assert still_open(half) <= cap
        # Still serving while the attacker keeps coming.
        half += fill(s.port, cap)
        with httpx.Client(base_url=s.url, timeout=10) as client:
            assert client.get("/healthz").status_code == 200
    finally:
        for sock in half:
            sock.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, soft)
    text = s.text()
    shedding = text.count("client connections (the cap)")
    assert 1 <= shedding <= (2 if how.startswith("setting") else 1), text[-3000:]
    if not how.startswith("setting"):
        assert f"allows {cap} client connections per worker" in text
    assert "Traceback" not in text
    assert "Too many open files" not in text


def test_limits_hold_over_tls(serve, tmp_path: Path) -> None:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _issue("front-ca", ca_key, ca_key, "front-ca", ca=True)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _issue("127.0.0.1", key, ca_key, "front-ca", ca=False, server=True)
    ca_file = _write(tmp_path / "ca.pem", cert=ca)
    s = serve(
        "--tls-cert",
        str(_write(tmp_path / "server.pem", cert=cert)),
        "--tls-key",
        str(_write(tmp_path / "server.key", key=key)),
        KMS_HSM_HEADER_TIMEOUT=str(HEADER_TIMEOUT),
        KMS_HSM_MAX_CONNECTIONS="20",
    )
    context = ssl.create_default_context(cafile=str(ca_file))
    deadline = time.monotonic() + 60
    while True:
        try:
            r = httpx.get(f"https://127.0.0.1:{s.port}/healthz", verify=context, timeout=2)
            break
        except httpx.HTTPError:
            assert time.monotonic() < deadline and s.proc.poll() is None
            time.sleep(0.2)
    assert r.status_code == 200

    def tls_connect() -> ssl.SSLSocket:
        return context.wrap_socket(connect(s.port), server_hostname="127.0.0.1")

    # Before its handshake a connection is not yet HTTP's: the handshake has the same
    # deadline (asyncio's default is 60 s, uvicorn has no option for it).
    started = time.monotonic()
    with connect(s.port) as raw:
        assert read_all(raw, 10) == b""
    assert time.monotonic() - started < 3 * HEADER_TIMEOUT
    with tls_connect() as sock:
        sock.sendall(head(64 * 1024))
        assert read_all(sock, 10).startswith(b"HTTP/1.1 431 ")
    with tls_connect() as sock:
        sock.sendall(b"GET /heal")
        assert read_all(sock, 10).startswith(b"HTTP/1.1 408 ")
    half = [tls_connect() for _ in range(40)]
    try:
        for sock in half:
            sock.sendall(b"GET /heal")
        r = httpx.get(f"https://127.0.0.1:{s.port}/healthz", verify=context, timeout=10)
        assert r.status_code == 200
    finally:
        for sock in half:
            sock.close()
    assert s.text().count("client connections (the cap)") == 1


async def _hello(scope: dict[str, object], receive: object, send: Callable[..., Any]) -> None:
    if scope["type"] != "http":
        return
    if scope["method"] == "POST":
        while (await receive()).get("more_body"):  # type: ignore[attr-defined]
            pass
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.mark.parametrize("parser", ["httptools", "h11"])
def test_both_parsers_keep_the_limits(parser: str) -> None:
    from kms_hsm.api import protocol

    base = {"httptools": protocol.NoDelayHttpProtocol, "h11": protocol.H11GuardedProtocol}
    limited = type(
        "Limited",
        (base[parser],),
        {"limits": protocol.ConnectionLimits(2048, HEADER_TIMEOUT, 8)},
    )
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(_hello, host="127.0.0.1", port=port, http=limited, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    try:
        with connect(port) as sock:
            sock.sendall(head(2048) + head(2048))
            got = b""
            while got.count(b"HTTP/1.1 200") < 2:
                got += sock.recv(65536)
        with connect(port) as sock:
            sock.sendall(head(2049))
            assert read_all(sock, 10).startswith(b"HTTP/1.1 431 ")
        with connect(port) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost")
            assert read_all(sock, 10).startswith(b"HTTP/1.1 408 ")
        with connect(port) as sock:
            sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nab")
            time.sleep(0.2)
            sock.sendall(b"cd" + b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\na")
            answer = read_all(sock, 10)
            assert answer.startswith(b"HTTP/1.1 200 "), answer[:100]
            assert b"HTTP/1.1 408 " in answer, answer
        with connect(port) as sock:  # a request without body sets no body deadline
            sock.sendall(head(100))
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
            time.sleep(1.5 * HEADER_TIMEOUT)
            sock.sendall(head(100))
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        half = fill(port, 20)
        with connect(port) as sock:
            sock.sendall(head(100))
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        assert still_open(half) <= 8
        for sock in half:
            sock.close()
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def slow_bodies(port: int, count: int) -> list[socket.socket]:
    """``count`` connections that each sent a whole encrypt head and one byte of its body."""
    opened = []
    for _ in range(count):
        try:
            sock = connect(port, timeout=2)
            sock.sendall(
                b"POST /kms/v1/keys/abc:encrypt HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/json\r\nContent-Length: 65536\r\n\r\n{"
            )
        except OSError:
            continue
        opened.append(sock)
    return opened


def test_slow_bodies_neither_hold_the_connection_cap_nor_stay_open(serve) -> None:
    cap = 10
    s = serve(KMS_HSM_HEADER_TIMEOUT=str(HEADER_TIMEOUT), KMS_HSM_MAX_CONNECTIONS=str(cap))
    key_id = encrypt_key(s, "AES_256_HSM")
    # Finding: a head and one byte of body, then silence, held a place for good, unevictable
    # and without authentication: with the cap full every new connection was refused.
    slow = slow_bodies(s.port, cap)
    started = time.monotonic()
    try:
        served: list[str] = []
        while len(served) < 2 and time.monotonic() - started < 20:
            try:
                with httpx.Client(
                    base_url=s.url, headers={"Authorization": f"Bearer {s.token}"}, timeout=10
                ) as client:
                    if not served:
                        assert encrypt(client, key_id).status_code == 200
                        served.append("encrypt")
                    assert client.get("/healthz").status_code == 200
                    served.append("healthz")
            except httpx.TransportError:
                time.sleep(0.1)
        took = time.monotonic() - started
        assert served == ["encrypt", "healthz"], served
        # Overdue after one timeout, closed by the next connection or by 1.25 timeouts.
        assert took < 4 * HEADER_TIMEOUT + 2, took
        for sock in slow:
            answer = read_all(sock, 10)
            assert answer == b"" or answer.startswith(b"HTTP/1.1 408 "), answer[:100]
    finally:
        for sock in slow:
            sock.close()
    text = s.text()
    assert "Traceback" not in text
    assert "request body not received in time" not in text or "408" in text


def test_a_body_sent_in_time_is_served_and_a_late_one_408(serve) -> None:
    s = serve(KMS_HSM_HEADER_TIMEOUT=str(HEADER_TIMEOUT))
    body = b'{"plaintext": "Zm9v"}'
    start = (
        b"POST /kms/v1/keys/abc:encrypt HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n"
        % (s.token.encode(), len(body))
    )
    with connect(s.port) as sock:  # slower than the deadline in total: 408, then closed
        sock.sendall(start)
        started = time.monotonic()
        try:
            for i in range(len(body) - 1):  # never the whole body
                sock.send(body[i : i + 1])
                time.sleep(0.2)
                if time.monotonic() - started > 2 * HEADER_TIMEOUT:
                    break
        except OSError:
            pass
        answer = read_all(sock, 10)
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:100]
        assert b"request body not received in time" in answer
    with connect(s.port) as sock:  # in time, in pieces: answered (the key does not exist)
        sock.sendall(start)
        for i in range(0, len(body), 8):
            time.sleep(0.1)
            sock.send(body[i : i + 8])
        assert sock.recv(65536).startswith(b"HTTP/1.1 404 ")
    assert "Traceback" not in s.text()


class _Conn:
    def __init__(self, evictable: bool) -> None:
        self.can_go = evictable
        self.evicted = False

    def evictable(self) -> bool:
        return self.can_go

    def evict(self) -> None:
        self.evicted = True


def test_the_cap_keeps_in_line_the_connections_it_cannot_close_yet() -> None:
    from kms_hsm.api import protocol

    front = protocol._Front()
    busy, idle = _Conn(False), _Conn(True)
    for conn in (busy, idle):
        assert front.admit(conn, 2)  # type: ignore[arg-type]
    newcomer = _Conn(True)
    assert front.admit(newcomer, 2)  # type: ignore[arg-type]
    assert idle.evicted and not busy.evicted
    # Finding: `busy` was dropped from the queue when skipped, so it could never be closed
    # to make room, even once it owed no response.
    assert list(front.waiting) == [busy, newcomer]
    busy.can_go = True
    assert front.admit(_Conn(True), 2)  # type: ignore[arg-type]
    assert busy.evicted
