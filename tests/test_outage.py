"""HSM outages injected at the PKCS#11 boundary by a real module (tests/faults/*.c, built
here with gcc) that forwards to SoftHSM2 and fails every call while a control file exists.
The service must answer 503/14 quickly, keep serving cached software keys, report itself
unready, and recover on its own, in the same process, once the fault clears."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import (
    KMS_HSM,
    SOFTHSM_MODULE,
    free_port,
    init_token,
    serve_env,
    stop,
    wait_until_serving,
)

FAULTS = {
    "CKR_DEVICE_REMOVED": "0x32",
    "CKR_SESSION_HANDLE_INVALID": "0xB3",
    "CKR_TOKEN_NOT_PRESENT": "0xE0",
}


@pytest.fixture(scope="module")
def server(fault_shim, tmp_path_factory):
    root = tmp_path_factory.mktemp("outage")
    init_token(root / "token")
    fault = root / "fault"
    port = free_port()
    env = serve_env(
        root / "data",
        port,
        KMS_HSM_PKCS11_LIBRARY=str(fault_shim),
        KMS_HSM_FAULT_REAL_MODULE=SOFTHSM_MODULE,
        KMS_HSM_FAULT_FILE=str(fault),
        KMS_HSM_PIN_FILE=str(root / "token" / "user-pin"),
        KMS_HSM_CALL_TIMEOUT="2",
        SOFTHSM2_CONF=str(root / "token" / "softhsm2.conf"),
    )
    log = (root / "serve.log").open("wb")
    proc = subprocess.Popen([KMS_HSM, "serve"], env=env, stdout=log, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(proc, base_url)
        token = (root / "data" / "admin-token").read_text().strip()
        client = httpx.Client(
            base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=30
        )
        yield client, fault, root / "serve.log"
        client.close()
    finally:
        stop(proc)
        log.close()


def _key(client: httpx.Client, algorithm: str) -> str:
    r = client.post("/kms/v1/keys", json={"folderId": "b1g", "defaultAlgorithm": algorithm})
    assert r.status_code == 200, r.text
    return r.json()["response"]["id"]


def _encrypt(client: httpx.Client, key_id: str) -> httpx.Response:
    return client.post(f"/kms/v1/keys/{key_id}:encrypt", json={"plaintext": "aGVsbG8="})


@pytest.mark.parametrize("fault_name", list(FAULTS))
def test_outage_gives_fast_503_then_recovers_in_process(server, fault_name) -> None:
    client, fault, log = server
    hsm_key, soft_key = _key(client, "AES_256_HSM"), _key(client, "AES_256")
    before = _encrypt(client, hsm_key)
    assert before.status_code == 200
    old_ciphertext = before.json()["ciphertext"]
    assert _encrypt(client, soft_key).status_code == 200  # its material is now cached
    worker = before.headers["x-kms-worker"]
    assert client.get("/readyz").status_code == 200

    fault.write_text(FAULTS[fault_name])
    try:
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            started = time.monotonic()
            r = _encrypt(client, hsm_key)
            assert r.status_code == 503, r.text
            assert r.json()["code"] == 14
            assert time.monotonic() - started < 2.0  # the configured call timeout
            gdk = client.post(
                f"/kms/v1/keys/{hsm_key}:generateDataKey", json={"dataKeySpec": "AES_256_HSM"}
            )
            assert gdk.status_code == 503
            assert _encrypt(client, soft_key).status_code == 200
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["database"] == "ok"
        assert ready.json()["checks"]["hsm"] != "ok"
    finally:
        fault.unlink()

    cleared = time.monotonic()
    while True:
        r = _encrypt(client, hsm_key)
        if r.status_code == 200:
            break
        assert r.status_code == 503
        assert time.monotonic() - cleared < 5, "not recovered within 5 s"
        time.sleep(0.05)
    assert r.headers["x-kms-worker"] == worker  # same process, no restart
    opened = client.post(f"/kms/v1/keys/{hsm_key}:decrypt", json={"ciphertext": old_ciphertext})
    assert base64.b64decode(opened.json()["plaintext"]) == b"hello"
    # Data keys again too: their one-call C_WrapKey goes through the module's function
    # table (this shim exports little more than C_GetFunctionList).
    made = client.post(
        f"/kms/v1/keys/{hsm_key}:generateDataKey", json={"dataKeySpec": "AES_256_HSM"}
    )
    assert made.status_code == 200, made.text
    back = client.post(
        f"/kms/v1/keys/{hsm_key}:decrypt",
        json={"ciphertext": made.json()["dataKeyCiphertext"]},
    )
    assert back.json()["plaintext"] == made.json()["dataKeyPlaintext"]
    assert client.get("/readyz").status_code == 200
    text = log.read_text()
    assert "HSM reinitialised" in text
    assert "Traceback" not in text


def test_hung_token_costs_one_call_timeout_not_the_process(server) -> None:
    """A token that stops answering: HSM requests get 503 within the call timeout (2 s),
    software keys keep working, and service resumes once the token answers again."""
    client, fault, _log = server
    hsm_key, soft_key = _key(client, "AES_256_HSM"), _key(client, "AES_256")
    assert _encrypt(client, hsm_key).status_code == 200
    assert _encrypt(client, soft_key).status_code == 200
    fault.write_text("hang")
    try:
        started = time.monotonic()
        r = _encrypt(client, hsm_key)
        assert r.status_code == 503 and r.json()["code"] == 14
        assert time.monotonic() - started < 2.0 + 1.0
        for _ in range(5):
            started = time.monotonic()
            assert _encrypt(client, hsm_key).status_code == 503
            assert time.monotonic() - started < 0.5  # marked down: fails at once
            assert _encrypt(client, soft_key).status_code == 200
    finally:
        fault.unlink()
    cleared = time.monotonic()
    while _encrypt(client, hsm_key).status_code != 200:
        assert time.monotonic() - cleared < 5, "not recovered within 5 s"
        time.sleep(0.05)


def _agent_pid(worker: int) -> int:
    children = []
    for task in Path(f"/proc/{worker}/task").iterdir():
        children += (task / "children").read_text().split()
    agents = [
        int(pid)
        for pid in children
        if b"kms_hsm.crypto.pkcs11.agent" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]
    assert len(agents) == 1, agents
    return agents[0]


def test_hsm_agent_gets_the_pin_only_over_its_socket(server) -> None:
    """The agent's command line and environment carry no PIN."""
    client, _fault, log = server
    hsm_key = _key(client, "AES_256_HSM")
    r = _encrypt(client, hsm_key)
    assert r.status_code == 200
    agent = _agent_pid(int(r.headers["x-kms-worker"]))
    pin = (log.parent / "token" / "user-pin").read_text().strip()
    assert pin.encode() not in Path(f"/proc/{agent}/cmdline").read_bytes()
    assert pin.encode() not in Path(f"/proc/{agent}/environ").read_bytes()


def test_killed_hsm_agent_is_replaced(server) -> None:
    """An agent that dies (here: SIGKILL) costs at most the calls in flight; the worker
    starts a new one and serves HSM keys again, software keys throughout."""
    client, _fault, log = server
    hsm_key, soft_key = _key(client, "AES_256_HSM"), _key(client, "AES_256")
    r = _encrypt(client, hsm_key)
    assert r.status_code == 200
    assert _encrypt(client, soft_key).status_code == 200  # its material is now cached
    worker = int(r.headers["x-kms-worker"])
    old_agent = _agent_pid(worker)
    os.kill(old_agent, signal.SIGKILL)
    assert _encrypt(client, soft_key).status_code == 200
    started = time.monotonic()
    while (r := _encrypt(client, hsm_key)).status_code != 200:
        assert r.status_code == 503, r.text
        assert time.monotonic() - started < 5, "no new agent within 5 s"
        time.sleep(0.05)
    assert int(r.headers["x-kms-worker"]) == worker
    assert _agent_pid(worker) != old_agent
    assert "exited" in log.read_text()
