"""A bounded load against `kms-hsm serve --workers 2`: 64 concurrent clients of mixed
crypto on software and HSM keys for a minute; zero non-2xx, and every ciphertext returned
decrypts afterwards. Correctness under load, not a benchmark (that is bench/)."""

from __future__ import annotations

import asyncio
import base64
import os
import random
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import KMS_HSM, free_port, serve_env, stop, wait_until_serving

SECONDS = float(os.environ.get("KMS_HSM_LOAD_SECONDS", "60"))
CLIENTS = 64


async def _post(client: httpx.AsyncClient, url: str, body: dict, stats: dict) -> httpx.Response:
    """POST, retrying a connection the server closed while idle (a keep-alive race, not an
    answer); any answer at all, 2xx or not, is returned and judged by the caller."""
    for attempt in range(3):
        try:
            return await client.post(url, json=body)
        except httpx.TransportError:
            stats["transport_retries"] += 1
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


async def _client(base: str, auth: dict[str, str], keys: list[str], seed: int, stats: dict) -> None:
    rng = random.Random(seed)
    deadline = time.monotonic() + SECONDS
    transport = httpx.AsyncHTTPTransport(
        socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
    )
    async with httpx.AsyncClient(
        base_url=base, headers=auth, timeout=60, transport=transport
    ) as client:
        while time.monotonic() < deadline:
            key_id = rng.choice(keys)
            plaintext = rng.randbytes(rng.randint(1, 512))
            aad = rng.randbytes(8)
            kind = rng.random()
            if kind < 0.5:
                r = await _post(
                    client,
                    f"/kms/v1/keys/{key_id}:encrypt",
                    {
                        "plaintext": base64.b64encode(plaintext).decode(),
                        "aadContext": base64.b64encode(aad).decode(),
                    },
                    stats,
                )
                if r.status_code == 200:
                    stats["sealed"].append((key_id, r.json()["ciphertext"], aad, plaintext))
            elif kind < 0.8:
                spec = rng.choice(["AES_256", "AES_256_HSM", "AES_128"])
                r = await _post(
                    client,
                    f"/kms/v1/keys/{key_id}:generateDataKey",
                    {"dataKeySpec": spec, "aadContext": base64.b64encode(aad).decode()},
                    stats,
                )
                if r.status_code == 200:
                    body = r.json()
                    stats["sealed"].append(
                        (
                            key_id,
                            body["dataKeyCiphertext"],
                            aad,
                            base64.b64decode(body["dataKeyPlaintext"]),
                        )
                    )
            elif stats["sealed"]:
                key_id, ciphertext, aad, expected = rng.choice(stats["sealed"])
                r = await _post(
                    client,
                    f"/kms/v1/keys/{key_id}:decrypt",
                    {"ciphertext": ciphertext, "aadContext": base64.b64encode(aad).decode()},
                    stats,
                )
                if r.status_code == 200 and base64.b64decode(r.json()["plaintext"]) != expected:
                    stats["wrong"] += 1
            else:
                continue
            stats["requests"] += 1
            if r.status_code != 200:
                stats["errors"].append(f"{r.status_code} {r.text[:200]}")


async def _verify_all(base: str, auth: dict[str, str], sealed: list, stats: dict) -> list[str]:
    """Decrypt every ciphertext the load produced, 32 at a time."""
    failures: list[str] = []
    transport = httpx.AsyncHTTPTransport(
        socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
    )
    async with httpx.AsyncClient(
        base_url=base, headers=auth, timeout=60, transport=transport
    ) as client:

        async def check(chunk: list) -> None:
            for key_id, ciphertext, aad, expected in chunk:
                r = await _post(
                    client,
                    f"/kms/v1/keys/{key_id}:decrypt",
                    {"ciphertext": ciphertext, "aadContext": base64.b64encode(aad).decode()},
                    stats,
                )
                if r.status_code != 200 or base64.b64decode(r.json()["plaintext"]) != expected:
                    failures.append(f"{key_id}: {r.status_code} {r.text[:200]}")

        await asyncio.gather(*(check(sealed[i::32]) for i in range(32)))
    return failures


@pytest.mark.slow
def test_bounded_load_two_workers_zero_errors(tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen(
        [KMS_HSM, "serve", "--workers", "2"],
        env=serve_env(tmp_path / "data", port, KMS_HSM_LOG_LEVEL="WARNING"),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until_serving(proc, base)
        auth = {
            "Authorization": f"Bearer {(tmp_path / 'data' / 'admin-token').read_text().strip()}"
        }
        keys = []
        with httpx.Client(base_url=base, headers=auth) as client:
            for algorithm in ("AES_256", "AES_128", "AES_256_HSM", "AES_256_HSM"):
                r = client.post(
                    "/kms/v1/keys", json={"folderId": "b1g", "defaultAlgorithm": algorithm}
                )
                keys.append(r.json()["response"]["id"])
        stats: dict = {
            "requests": 0,
            "errors": [],
            "sealed": [],
            "wrong": 0,
            "transport_retries": 0,
        }

        async def run() -> None:
            await asyncio.gather(*(_client(base, auth, keys, n, stats) for n in range(CLIENTS)))

        asyncio.run(run())
        assert stats["errors"] == []
        assert stats["wrong"] == 0
        assert stats["requests"] > 200
        failures = asyncio.run(_verify_all(base, auth, stats["sealed"], stats))
        assert failures == []
        # Connections closed under the client while idle are retried, never many.
        assert stats["transport_retries"] <= stats["requests"] // 100, stats["transport_retries"]
        assert "Traceback" not in (tmp_path / "serve.log").read_text()
    finally:
        stop(proc)
        log.close()
