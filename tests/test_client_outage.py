"""kms_hsm.client through a real HSM outage: a real `kms-hsm serve` whose PKCS#11 module is
the fault shim of tests/faults (SoftHSM2 behind it, every call failing while a control file
exists). The server answers 503/UNAVAILABLE; the client retries within its deadline, gets
through once the token is back, and gives up with the server's error when it is not."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kms_hsm.client import BackendUnavailable, Client
from tests.conftest import (
    KMS_HSM,
    SOFTHSM_MODULE,
    free_port,
    init_token,
    serve_env,
    stop,
    wait_until_serving,
)

DEVICE_REMOVED = "0x32"


@pytest.fixture(scope="module")
def outage(
    fault_shim: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str, Path]]:
    """(REST url, admin token, fault control file) of a server on the fault shim."""
    root = tmp_path_factory.mktemp("client-outage")
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
    with (root / "serve.log").open("wb") as log:
        proc = subprocess.Popen([KMS_HSM, "serve"], env=env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until_serving(proc, url)
            token = (root / "data" / "admin-token").read_text().strip()
            yield url, token, fault
        finally:
            fault.unlink(missing_ok=True)
            stop(proc)


def test_outage_is_ridden_out(outage: tuple[str, str, Path]) -> None:
    url, token, fault = outage
    with Client(url, token=token, timeout=15, retries=30) as c:
        key = c.create_key("b1gclientoutage", default_algorithm="AES_256_HSM")
        sealed = c.encrypt(key.id, b"before")
        fault.write_text(DEVICE_REMOVED)
        clear = threading.Timer(1.5, fault.unlink)
        clear.start()
        try:
            started = time.monotonic()
            # Sent during the outage: 503s, retried, answered once the token is back.
            assert c.decrypt(key.id, sealed.ciphertext).plaintext == b"before"
            assert time.monotonic() - started >= 1.0
        finally:
            clear.join()


def test_outage_longer_than_the_deadline(outage: tuple[str, str, Path]) -> None:
    url, token, fault = outage
    with Client(url, token=token, timeout=2) as c:
        key = c.create_key("b1gclientoutage", default_algorithm="AES_256_HSM")
        fault.write_text(DEVICE_REMOVED)
        try:
            started = time.monotonic()
            with pytest.raises(BackendUnavailable) as err:
                c.generate_data_key(key.id, data_key_spec="AES_256_HSM")
            assert time.monotonic() - started < 2.5
        finally:
            fault.unlink()
    assert err.value.code == 14 and getattr(err.value, "http_status", None) == 503
