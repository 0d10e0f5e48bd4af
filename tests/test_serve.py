"""`kms-hsm serve` as a user runs it: a real process, real HTTP, the embedded default."""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from kms_hsm.config import Settings
from kms_hsm.service.runtime import Runtime
from tests.conftest import KMS_HSM, free_port, init_token, serve_env, stop, wait_until_serving


def test_two_workers_each_with_one_hsm_agent_login_answer_hsm_requests(tmp_path: Path) -> None:
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen(
        [KMS_HSM, "serve", "--workers", "2"],
        env=serve_env(tmp_path / "data", port),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until_serving(proc, base_url)
        data_dir = tmp_path / "data"
        for name in ("admin-token", "user-pin", "so-pin"):
            mode = stat.S_IMODE(os.stat(data_dir / name).st_mode)
            assert mode == 0o600, name
        assert (data_dir / "softhsm2.conf").is_file()
        token = (data_dir / "admin-token").read_text().strip()
        auth = {"Authorization": f"Bearer {token}"}
        created = httpx.post(
            f"{base_url}/kms/v1/keys",
            json={"folderId": "b1g", "defaultAlgorithm": "AES_256_HSM"},
            headers=auth,
        )
        assert created.status_code == 200, created.text
        key_id = created.json()["response"]["id"]
        workers: set[str] = set()
        for i in range(200):
            # A new connection each time, so the kernel spreads them over both workers.
            with httpx.Client(headers=auth) as client:
                r = client.post(
                    f"{base_url}/kms/v1/keys/{key_id}:generateDataKey",
                    json={"dataKeySpec": "AES_256_HSM"},
                )
                assert r.status_code == 200, r.text
                workers.add(r.headers["x-kms-worker"])
                opened = client.post(
                    f"{base_url}/kms/v1/keys/{key_id}:decrypt",
                    json={"ciphertext": r.json()["dataKeyCiphertext"]},
                )
                assert opened.json()["plaintext"] == r.json()["dataKeyPlaintext"]
            if len(workers) == 2 and i > 20:
                break
        assert len(workers) == 2
        for worker in workers:
            # The worker never loads the PKCS#11 module: its HSM agent alone does.
            maps = Path(f"/proc/{worker}/maps").read_text()
            assert "softhsm" not in maps, worker
    finally:
        stop(proc)
        log.close()
    text = (tmp_path / "serve.log").read_text()
    assert text.count("HSM ready") >= 3  # pre-flight + one per worker
    # One PKCS#11 login per worker (by its agent), and no other.
    for worker in workers:
        assert text.count(f"logged in to token 'kms-hsm' for worker {worker}\n") == 1, worker
    assert token not in text
    for pin_file in ("user-pin", "so-pin"):
        assert (tmp_path / "data" / pin_file).read_text().strip() not in text
    assert "Traceback" not in text


def test_unreachable_hsm_at_start_retries_then_exits_clearly(tmp_path: Path) -> None:
    conf = tmp_path / "softhsm2.conf"
    (tmp_path / "tokens").mkdir()
    conf.write_text(f"directories.tokendir = {tmp_path / 'tokens'}\nobjectstore.backend = file\n")
    pin = _pin_file(tmp_path / "pin", "123456")
    env = serve_env(
        tmp_path / "data",
        free_port(),
        KMS_HSM_PIN_FILE=str(pin),
        KMS_HSM_HSM_STARTUP_TIMEOUT="2",
        SOFTHSM2_CONF=str(conf),
    )
    result = subprocess.run([KMS_HSM, "serve"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "HSM not ready" in result.stderr  # it retried
    assert "cannot start: HSM not reachable: token 'kms-hsm'" in result.stderr
    assert "Traceback" not in result.stderr


def test_pin_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    pin = _pin_file(tmp_path / "pin", "123456", mode=0o644)
    env = serve_env(tmp_path / "data", free_port(), KMS_HSM_PIN_FILE=str(pin))
    result = subprocess.run([KMS_HSM, "serve"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "must not be readable by group or others" in result.stderr
    assert "123456" not in result.stderr
    assert base64.b64encode(b"123456").decode() not in result.stderr


def test_a_refused_pin_is_not_tried_again(tmp_path: Path) -> None:
    """HSMs lock or zeroise after a few wrong PINs: one refusal ends the start at once."""
    init_token(tmp_path / "token")
    pin = _pin_file(tmp_path / "wrong-pin", "999999")
    env = serve_env(
        tmp_path / "data",
        free_port(),
        KMS_HSM_PIN_FILE=str(pin),
        KMS_HSM_HSM_STARTUP_TIMEOUT="20",
        SOFTHSM2_CONF=str(tmp_path / "token" / "softhsm2.conf"),
    )
    started = time.monotonic()
    result = subprocess.run([KMS_HSM, "serve"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert time.monotonic() - started < 15  # not the 20 s of retries a missing token gets
    assert "cannot start: HSM login to token 'kms-hsm' failed: PinIncorrect" in result.stderr
    assert result.stderr.count("HSM agent not restarted") == 1
    assert "999999" not in result.stderr


def _pin_file(path: Path, pin: str, mode: int = 0o600) -> Path:
    path.write_text(pin + "\n")
    path.chmod(mode)
    return path


def test_a_taken_port_is_refused_before_anything_starts(tmp_path: Path) -> None:
    """No "serving on" for a port another process holds; nothing is created either."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        for workers in ("1", "2"):
            env = serve_env(tmp_path / "data", port, KMS_HSM_WORKERS=workers)
            result = subprocess.run(
                [KMS_HSM, "serve"], env=env, capture_output=True, text=True, timeout=60
            )
            assert result.returncode != 0
            output = result.stdout + result.stderr
            assert "serving on" not in output
            assert f"cannot start: port {port} on 127.0.0.1 cannot be bound" in output
            assert "Traceback" not in output
    assert not (tmp_path / "data").exists()


def test_serving_on_is_said_only_once_the_port_is_bound(caplog: pytest.LogCaptureFixture) -> None:
    """The port taken after the pre-flight (a race): uvicorn's bind fails, no "serving on"."""
    import uvicorn

    from kms_hsm.cli.main import _announcing_server

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    def config(port: int) -> uvicorn.Config:
        return uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_config=None)

    caplog.set_level(logging.INFO, logger="kms_hsm")
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        server = _announcing_server(config(taken), lambda p: f"http://127.0.0.1:{p}")
        with pytest.raises(SystemExit):
            server.run()
    assert not server.started
    assert "serving on" not in caplog.text

    port = free_port()
    server = _announcing_server(config(port), lambda p: f"http://127.0.0.1:{p}")
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 15
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        assert server.started
        assert f"serving on http://127.0.0.1:{port}" in caplog.text
        assert httpx.get(f"http://127.0.0.1:{port}/").status_code == 204
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@contextlib.contextmanager
def _served(app: Any) -> Iterator[str]:
    """``app`` on uvicorn in a thread, over real HTTP."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", log_config=None)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.mark.parametrize("docs", [False, True], ids=["default", "KMS_HSM_DOCS=1"])
def test_docs_pages_are_off_unless_asked_for_and_the_openapi_document_stays(
    runtime: Runtime, docs: bool
) -> None:
    """Swagger UI and ReDoc load their scripts from a CDN: off by default (issue 18 §7)."""
    from kms_hsm.api.app import create_app

    settings = runtime.settings.model_copy(update={"docs": docs})
    with _served(create_app(settings, runtime)) as url:
        for page in ("/docs", "/redoc"):
            answer = httpx.get(f"{url}{page}", timeout=10)
            assert answer.status_code == (200 if docs else 404), page
        document = httpx.get(f"{url}/openapi.json", timeout=10)
        assert document.status_code == 200
        assert "/kms/v1/keys" in document.json()["paths"]


def test_kms_hsm_docs_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KMS_HSM_DOCS", "1")
    assert Settings().docs is True
    monkeypatch.delenv("KMS_HSM_DOCS")
    assert Settings().docs is False
