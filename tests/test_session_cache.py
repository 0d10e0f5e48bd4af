"""Session copies of HSM keys are a bounded LRU cache (issue 15 §8).

Before: each process kept a session copy of every HSM key it ever used, never evicted, and
the first use of a key it had just made scanned every object in the token (7.6 ms at 10
token objects, 37.7 ms at 1,500). Real SoftHSM2 token, no mocks: the spy on the find only
counts calls and passes them on.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pkcs11 import Attribute, ObjectClass

from kms_hsm.config import Settings
from kms_hsm.crypto.pkcs11 import sessions
from kms_hsm.crypto.pkcs11.hsm import HsmCrypto
from kms_hsm.crypto.pkcs11.sessions import SessionManager, TokenSession
from kms_hsm.service.runtime import Runtime, prepare
from tests.conftest import REPO, create_key, serve_inprocess, token_key_ids

SIZE = 3
NONCE = bytes(range(12))


@pytest.fixture
def manager(settings: Settings) -> Iterator[SessionManager]:
    """A session manager of the test's own, with a cache of SIZE session copies."""
    m = SessionManager(
        settings.pkcs11_library,
        settings.token_label,
        settings.read_pin(),
        session_cache_size=SIZE,
    )
    m.start()
    yield m
    m.close()


def _session_copies(manager: SessionManager, ids: set[bytes]) -> int:
    """Session objects (not token objects) carrying one of ``ids``, as the token sees them."""

    def op(ts: TokenSession) -> int:
        found = ts.session.get_objects(
            {Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.TOKEN: False}
        )
        return sum(1 for obj in found if bytes(obj[Attribute.ID]) in ids)

    return manager.run(op)


def _plant(token_dir: Path, object_id: bytes) -> None:
    """A token key made by another process (this one must find it)."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.token_tool",
            str(token_dir),
            "plant",
            object_id.decode(),
            "x",
        ],
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        check=True,
        capture_output=True,
    )


def test_session_copies_stay_bounded_and_every_key_still_works(
    manager: SessionManager, token_dir: Path
) -> None:
    hsm = HsmCrypto(manager)
    prefix = f"sc-{uuid.uuid4().hex[:8]}"
    ids = [f"{prefix}-{i}".encode() for i in range(4 * SIZE)]
    # Some keys made here, some by another process (found by a scan).
    for i, object_id in enumerate(ids):
        if i % 3 == 0:
            _plant(token_dir, object_id)
        else:
            hsm.generate_key(object_id)
    wanted = set(ids)
    try:
        sealed = {}
        for i, object_id in enumerate(ids):
            message = f"message {i}".encode()
            sealed[object_id] = hsm.encrypt(object_id, NONCE, message, b"aad")
            assert hsm.decrypt(object_id, NONCE, sealed[object_id], b"aad") == message
            assert _session_copies(manager, wanted) <= SIZE
        assert _session_copies(manager, wanted) == SIZE
        # Every key again, in the same order: each use evicts (and destroys) a copy; the
        # token keys behind the evicted copies are untouched and get a new copy.
        for i, object_id in enumerate(ids):
            assert hsm.decrypt(object_id, NONCE, sealed[object_id], b"aad") == (
                f"message {i}".encode()
            )
        assert _session_copies(manager, wanted) == SIZE
        # The token objects, seen by another process: all still there.
        assert {i.decode() for i in ids} <= token_key_ids(token_dir)
    finally:
        for object_id in ids:
            hsm.destroy_key(object_id)
    assert _session_copies(manager, wanted) == 0


def test_first_use_of_a_key_made_here_scans_nothing(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The handle from C_GenerateKey is kept: no C_FindObjects over the whole token."""
    finds: list[bytes] = []
    real_find = sessions._find_token_key

    def counting_find(session: Any, object_id: bytes) -> Any:
        finds.append(object_id)
        return real_find(session, object_id)

    monkeypatch.setattr(sessions, "_find_token_key", counting_find)
    m = SessionManager(settings.pkcs11_library, settings.token_label, settings.read_pin())
    m.start()
    hsm = HsmCrypto(m)
    first, second = (f"fu-{uuid.uuid4().hex[:8]}-{i}".encode() for i in range(2))
    try:
        hsm.generate_key(first)
        hsm.encrypt(first, NONCE, b"x", b"")  # the one listing of the process
        hsm.generate_key(second)
        sealed = hsm.encrypt(second, NONCE, b"y", b"")
        assert hsm.decrypt(second, NONCE, sealed, b"") == b"y"
        assert finds == []
    finally:
        hsm.destroy_key(first)
        hsm.destroy_key(second)
        m.close()


def test_the_agent_evicts_and_keeps_answering(token_dir: Path, tmp_path: Path) -> None:
    """KMS_HSM_SESSION_CACHE_SIZE reaches the HSM agent; eviction there is invisible to clients."""
    config = Settings(
        data_dir=tmp_path,
        pin_file=token_dir / "user-pin",
        database_url=f"sqlite:///{tmp_path / 'cache.db'}",
        scheduler_interval=0,
        session_cache_size=2,
    )
    prepare(config)
    runtime = Runtime.start(config)
    assert runtime.agents._config.session_cache_size == 2
    token = (tmp_path / "admin-token").read_text().strip()
    try:
        with (
            serve_inprocess(runtime) as url,
            httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}) as api,
        ):
            keys = [str(create_key(api, "AES_256_HSM")["id"]) for _ in range(5)]
            sealed = {}
            for key_id in keys:
                r = api.post(f"/kms/v1/keys/{key_id}:encrypt", json={"plaintext": "c2VjcmV0"})
                assert r.status_code == 200, r.text
                sealed[key_id] = r.json()["ciphertext"]
            for _ in range(2):
                for key_id in keys:
                    r = api.post(
                        f"/kms/v1/keys/{key_id}:decrypt", json={"ciphertext": sealed[key_id]}
                    )
                    assert r.status_code == 200, r.text
                    assert r.json()["plaintext"] == "c2VjcmV0"
    finally:
        runtime.close()
