"""SIGKILL in the middle of a mixed load: after a restart every key whose create returned
200 exists, every returned ciphertext decrypts, and HSM objects left without a database
row are reconciled (destroyed, and said so in the log)."""

from __future__ import annotations

import base64
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from tests.conftest import KMS_HSM, REPO, free_port, init_token, serve_env, stop, wait_until_serving


def _serve(root: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = serve_env(
        root / "data",
        port,
        KMS_HSM_PIN_FILE=str(root / "token" / "user-pin"),
        SOFTHSM2_CONF=str(root / "token" / "softhsm2.conf"),
        KMS_HSM_SCHEDULER_INTERVAL="0.5",
        KMS_HSM_ORPHAN_GRACE="1",
    )
    return subprocess.Popen(
        [KMS_HSM, "serve"], env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT
    )


def _token_tool(root: Path, *args: str) -> str:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run(
        [sys.executable, "-m", "tests.token_tool", str(root / "token"), *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return out.stdout.strip()


def test_sigkill_mid_load_loses_nothing_acknowledged(tmp_path: Path) -> None:
    init_token(tmp_path / "token")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    proc = _serve(tmp_path, port, log)
    wait_until_serving(proc, base)
    token = (tmp_path / "data" / "admin-token").read_text().strip()
    auth = {"Authorization": f"Bearer {token}"}

    created: list[str] = []
    sealed: list[tuple[str, str, bytes]] = []
    stop_load = threading.Event()

    def load(n: int) -> None:
        with httpx.Client(base_url=base, headers=auth, timeout=10) as client:
            i = 0
            while not stop_load.is_set():
                i += 1
                algorithm = "AES_256_HSM" if (n + i) % 2 else "AES_128"
                try:
                    r = client.post(
                        "/kms/v1/keys", json={"folderId": "b1gcrash", "defaultAlgorithm": algorithm}
                    )
                    if r.status_code != 200:
                        continue
                    key_id = r.json()["response"]["id"]
                    created.append(key_id)
                    plaintext = f"{n}-{i}".encode()
                    r = client.post(
                        f"/kms/v1/keys/{key_id}:encrypt",
                        json={"plaintext": base64.b64encode(plaintext).decode()},
                    )
                    if r.status_code == 200:
                        sealed.append((key_id, r.json()["ciphertext"], plaintext))
                except httpx.HTTPError:
                    return  # the server died under us

    threads = [threading.Thread(target=load, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    time.sleep(3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    stop_load.set()
    for t in threads:
        t.join(timeout=30)
    assert len(created) > 10 and len(sealed) > 10

    # What an interrupted create leaves behind: a token object with no database row.
    with sqlite3.connect(tmp_path / "data" / "kms.db") as db:
        (root_key,) = db.execute("SELECT key_id FROM root_keys").fetchone()
    orphan = "abjorphan00000000000"
    _token_tool(tmp_path, "plant", orphan, f"kms-hsm/{root_key}/{orphan}")
    assert orphan in json.loads(_token_tool(tmp_path, "list"))

    proc = _serve(tmp_path, port, log)
    try:
        wait_until_serving(proc, base)
        with httpx.Client(base_url=base, headers=auth, timeout=30) as client:
            for key_id in created:
                assert client.get(f"/kms/v1/keys/{key_id}").status_code == 200, key_id
            for key_id, ciphertext, plaintext in sealed:
                r = client.post(f"/kms/v1/keys/{key_id}:decrypt", json={"ciphertext": ciphertext})
                assert r.status_code == 200, r.text
                assert base64.b64decode(r.json()["plaintext"]) == plaintext
        deadline = time.monotonic() + 20
        while f"destroyed HSM object {orphan}" not in log.read_text():
            assert time.monotonic() < deadline, "orphan not reconciled"
            time.sleep(0.2)
    finally:
        stop(proc)
    remaining = set(json.loads(_token_tool(tmp_path, "list")))
    assert orphan not in remaining
    with sqlite3.connect(tmp_path / "data" / "kms.db") as db:
        live = {
            v
            for (v,) in db.execute(
                "SELECT id FROM key_versions WHERE hosted_by_hsm = 1 AND status != 3"
            )
        }
    versions_in_token = {i for i in remaining if i.startswith("abj")}
    assert versions_in_token == live  # no orphan survived, nothing live was lost
