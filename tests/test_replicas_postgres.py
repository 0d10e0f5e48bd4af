"""Two `kms-hsm serve` replicas on one PostgreSQL database and one token directory."""

from __future__ import annotations

import base64
import random
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import KMS_HSM, free_port, init_token, serve_env, stop, wait_until_serving

pytestmark = pytest.mark.postgres


def _replica(root: Path, name: str, url: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = serve_env(
        root / name,
        port,
        KMS_HSM_DATABASE_URL=url,
        KMS_HSM_PIN_FILE=str(root / "token" / "user-pin"),
        SOFTHSM2_CONF=str(root / "token" / "softhsm2.conf"),
    )
    log = (root / f"{name}.log").open("wb")
    proc = subprocess.Popen([KMS_HSM, "serve"], env=env, stdout=log, stderr=subprocess.STDOUT)
    return proc, f"http://127.0.0.1:{port}"


def test_two_replicas_share_keys_and_keep_one_primary(tmp_path: Path, postgres_url: str) -> None:
    init_token(tmp_path / "token")
    # Started together: migrations and the first admin are serialised by the database.
    (proc_a, url_a), (proc_b, url_b) = (
        _replica(tmp_path, "a", postgres_url),
        _replica(tmp_path, "b", postgres_url),
    )
    try:
        wait_until_serving(proc_a, url_a)
        wait_until_serving(proc_b, url_b)
        tokens = [p.read_text().strip() for p in tmp_path.glob("*/admin-token")]
        assert len(tokens) == 1  # exactly one first admin
        auth = {"Authorization": f"Bearer {tokens[0]}"}
        a = httpx.Client(base_url=url_a, headers=auth, timeout=30)
        b = httpx.Client(base_url=url_b, headers=auth, timeout=30)

        key = a.post("/kms/v1/keys", json={"folderId": "b1g", "defaultAlgorithm": "AES_256_HSM"})
        key_id = key.json()["response"]["id"]
        enc = b.post(f"/kms/v1/keys/{key_id}:encrypt", json={"plaintext": "aGk="})
        assert enc.status_code == 200, enc.text  # usable on the other replica at once
        dec = a.post(
            f"/kms/v1/keys/{key_id}:decrypt", json={"ciphertext": enc.json()["ciphertext"]}
        )
        assert base64.b64decode(dec.json()["plaintext"]) == b"hi"

        errors: list[str] = []
        sealed: list[str] = []
        stop_at = time.monotonic() + 5

        def hammer(client: httpx.Client, seed: int) -> None:
            rng = random.Random(seed)
            while time.monotonic() < stop_at:
                choice = rng.random()
                if choice < 0.3:
                    r = client.post(f"/kms/v1/keys/{key_id}:rotate")
                elif choice < 0.6:
                    versions = client.get(
                        f"/kms/v1/keys/{key_id}/versions", params={"pageSize": 1000}
                    ).json()["keyVersions"]
                    r = client.post(
                        f"/kms/v1/keys/{key_id}:setPrimaryVersion",
                        json={"versionId": rng.choice(versions)["id"]},
                    )
                else:
                    r = client.post(f"/kms/v1/keys/{key_id}:encrypt", json={"plaintext": "aGk="})
                    if r.status_code == 200:
                        sealed.append(r.json()["ciphertext"])
                if r.status_code != 200:
                    errors.append(f"{r.status_code} {r.text}")

        workers = [
            threading.Thread(target=hammer, args=(client, n))
            for n, client in enumerate([a, b, a, b])
        ]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        assert errors == []
        for client in (a, b):
            versions = client.get(
                f"/kms/v1/keys/{key_id}/versions", params={"pageSize": 1000}
            ).json()["keyVersions"]
            primaries = [v["id"] for v in versions if v.get("primary")]
            assert len(primaries) == 1
            assert (
                client.get(f"/kms/v1/keys/{key_id}").json()["primaryVersion"]["id"] == primaries[0]
            )
        for i, ciphertext in enumerate(sealed):
            client = (a, b)[i % 2]
            r = client.post(f"/kms/v1/keys/{key_id}:decrypt", json={"ciphertext": ciphertext})
            assert r.status_code == 200, r.text
        a.close()
        b.close()
    finally:
        stop(proc_a)
        stop(proc_b)
