"""Issue 18 §6: KMS_HSM_LOG_FORMAT=json: one JSON object a line, one record per API call.

A real `kms-hsm serve --workers 2` (its workers, their HSM agents and uvicorn all write to the
same stderr): every line it writes must be one JSON object, and each API call must leave one
record with its request id, principal, method, key id, outcome and duration, never its
payload. The formatter itself is checked on hostile text and a traceback.
"""

from __future__ import annotations

import base64
import json
import logging
import secrets
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from kms_hsm.logs import JsonFormatter
from tests.conftest import create_key
from tests.grpc_support import KmsServer, running_server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KmsServer]:
    with running_server(
        tmp_path_factory.mktemp("json-logs"), workers=2, KMS_HSM_LOG_FORMAT="JSON"
    ) as s:
        yield s


def lines(server: KmsServer) -> list[str]:
    return server.log.read_text(errors="strict").splitlines()


def records(server: KmsServer) -> list[dict[str, object]]:
    return [json.loads(line) for line in lines(server)]


def calls(server: KmsServer, request_id: str, timeout: float = 10) -> list[dict[str, object]]:
    """The call records of ``request_id`` (written as the call finishes: waited for)."""
    deadline = time.monotonic() + timeout
    while True:
        found = [
            r
            for r in records(server)
            if r["logger"] == "kms_hsm.calls" and r.get("request_id") == request_id
        ]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_every_line_is_one_json_object(server: KmsServer) -> None:
    with server.rest(server.admin_token) as api:
        create_key(api, "AES_256_HSM")
    found = records(server)
    assert found, "the server logged nothing"
    for record in found:
        assert {"time", "level", "logger", "pid", "message"} <= set(record)
        assert str(record["time"]).endswith("Z")
    loggers = {r["logger"] for r in found}
    # uvicorn's own start-up lines and the HSM agents' come as JSON too.
    assert any(str(name).startswith("uvicorn") for name in loggers), loggers
    assert any("HSM agent logged in" in str(r["message"]) for r in found)  # in the agent
    assert any("serving on" in str(r["message"]) for r in found)


def test_one_record_per_call_with_its_facts_and_no_payload(server: KmsServer) -> None:
    plaintext = b"PLAINTEXT-" + secrets.token_hex(8).encode()
    aad = b"AAD-" + secrets.token_hex(8).encode()
    with server.rest(server.admin_token) as api:
        key = create_key(api, "AES_256")
        request_id = "3f0e7a2c-1d8b-4c55-9a41-0c2f4e6b8d10"
        r = api.post(
            f"/kms/v1/keys/{key['id']}:encrypt",
            json={"plaintext": b64(plaintext), "aadContext": b64(aad)},
            headers={"X-Request-Id": request_id},
        )
        assert r.status_code == 200, r.text
        ciphertext = r.json()["ciphertext"]
        denied_id = "7c1b2a3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
        r = api.post(
            f"/kms/v1/keys/{key['id']}:decrypt",
            json={"ciphertext": ciphertext},  # no AAD: the decryption fails
            headers={"X-Request-Id": denied_id},
        )
        assert r.status_code == 400
    [ok] = calls(server, request_id)
    assert ok["level"] == "INFO"
    assert ok["method"] == "SymmetricCrypto.Encrypt"
    assert ok["transport"] == "rest"
    assert ok["key_id"] == key["id"]
    assert ok["outcome"] == "OK"
    assert str(ok["principal"]).startswith("aje") or ok["principal"]
    assert isinstance(ok["duration_ms"], float) and ok["duration_ms"] > 0
    [failed] = calls(server, denied_id)
    assert failed["method"] == "SymmetricCrypto.Decrypt"
    assert failed["outcome"] == "INVALID_ARGUMENT"
    assert failed["key_id"] == key["id"]

    # No credential: the call is recorded without a principal.
    anonymous_id = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4e"
    httpx.post(
        f"{server.rest_url}/kms/v1/keys/{key['id']}:encrypt",
        json={"plaintext": b64(plaintext)},
        headers={"X-Request-Id": anonymous_id},
        verify=server.ssl_context(),
    )
    [anonymous] = calls(server, anonymous_id)
    assert anonymous["outcome"] == "UNAUTHENTICATED" and anonymous["principal"] == ""

    text = server.log.read_text()
    for secret in (plaintext, aad, base64.b64decode(ciphertext)):
        for form in (secret.decode(errors="replace"), b64(secret), secret.hex()):
            assert form not in text
    assert server.admin_token not in text


def test_hostile_ids_stay_on_one_line(server: KmsServer) -> None:
    request_id = "5d6e7f80-9a1b-4c2d-8e3f-405162738495"
    with server.rest(server.admin_token) as api:
        r = api.post(
            "/kms/v1/keys/ab%0A%7B%22forged%22%3A1%7D%E2%80%A8%7F%1B[31m:encrypt",
            json={"plaintext": ""},
            headers={"X-Request-Id": request_id},
        )
        assert r.status_code in (400, 404)
    [record] = calls(server, request_id)
    assert record["key_id"] == 'ab\n{"forged":1}\u2028\x7f\x1b[31m'
    for line in lines(server):
        assert line.startswith("{") and line.endswith("}")
        assert all(c >= " " and c != "\x7f" for c in line)
        assert "\u2028" not in line


def _record(message: str, exc_info: bool = False) -> logging.LogRecord:
    if exc_info:
        try:
            raise ValueError("bad\nvalue\u2028\x1b[2J")
        except ValueError:
            return logging.LogRecord(
                "kms_hsm.x", logging.ERROR, __file__, 1, message, (), sys.exc_info()
            )
    return logging.LogRecord("kms_hsm.x", logging.WARNING, __file__, 1, message, (), None)


def test_formatter_escapes_and_keeps_tracebacks_inside() -> None:
    formatter = JsonFormatter()
    hostile = "line\nnext\r\x00\x1b[31m\x7f\x85\u2028\u2029\\end"
    out = formatter.format(_record(hostile))
    assert "\n" not in out and "\r" not in out
    assert all(" " <= c < "\x7f" for c in out)  # ASCII, no control character at all
    record = json.loads(out)
    assert record["message"] == hostile
    assert record["level"] == "WARNING" and record["logger"] == "kms_hsm.x"

    out = formatter.format(_record("failed", exc_info=True))
    assert "\n" not in out and all(" " <= c < "\x7f" for c in out)
    record = json.loads(out)
    assert record["message"] == "failed"
    assert record["exception"].startswith("Traceback (most recent call last):")
    assert record["exception"].endswith("ValueError: bad\nvalue\u2028\x1b[2J")
