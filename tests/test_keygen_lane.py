"""Key pairs are made in an agent of their own, so a slow or hung key generation never holds
up the data plane (AgentPool's key-generation lane, issue 17).

Real SoftHSM2 (the session token), reached through the fault shim
(tests/faults/pkcs11_fault_shim.c) where a hang is needed. The shim holds every call while
its control file exists, and each agent reads ``KMS_HSM_FAULT_FILE`` from the environment
it was started with; so the test starts the data-plane agent with one control file and the
key-generation agent with another, and hangs only the latter. Every wait is bounded and
the control files are removed in a ``finally``.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kms_hsm.config import Settings
from kms_hsm.crypto.agent import AgentConfig, AgentPool, AgentToken
from kms_hsm.domain.asymmetric import SignatureAlgorithm
from kms_hsm.errors import BackendUnavailable
from tests.conftest import SOFTHSM_MODULE

CALL_TIMEOUT = 1.0
KEYGEN_TIMEOUT = 3.0
P256 = SignatureAlgorithm.ECDSA_NIST_P256_SHA_256.spec
LABEL = "kms-hsm-test-keygen:"


def _pool(settings: Settings, library: str) -> AgentPool:
    config = AgentConfig(
        library=library,
        token_label=settings.token_label,
        pin=settings.read_pin(),
        startup_timeout=CALL_TIMEOUT / 2,
        log_level="INFO",
    )
    return AgentPool(config, CALL_TIMEOUT, keygen_timeout=KEYGEN_TIMEOUT)


@pytest.fixture
def env_restored() -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in ("KMS_HSM_FAULT_FILE", "KMS_HSM_FAULT_REAL_MODULE")}
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


async def _encrypts_while(token: AgentToken, key_id: bytes, busy: asyncio.Task[object]) -> int:
    """HSM encrypts through the data-plane agent, one every 50 ms, until ``busy`` is done."""
    done = 0
    while not busy.done():
        sealed = await asyncio.wait_for(
            token.encrypt(key_id, bytes(12), b"data plane", b""), CALL_TIMEOUT * 2
        )
        assert len(sealed) == len(b"data plane") + 16
        done += 1
        await asyncio.sleep(0.05)
    return done


def test_a_hung_key_generation_leaves_the_data_plane_answering(
    runtime, settings: Settings, fault_shim: Path, tmp_path: Path, env_restored: None
) -> None:
    data_fault, keygen_fault = tmp_path / "fault-data", tmp_path / "fault-keygen"
    os.environ["KMS_HSM_FAULT_REAL_MODULE"] = SOFTHSM_MODULE
    key_id = f"keygen-lane-aes-{secrets.token_hex(4)}".encode()
    pair_ids: list[bytes] = []

    async def scenario() -> None:
        pool = _pool(settings, str(fault_shim))
        token = AgentToken(pool)
        try:
            os.environ["KMS_HSM_FAULT_FILE"] = str(data_fault)
            await token.generate_key(key_id, LABEL + key_id.decode())  # data-plane agent up
            os.environ["KMS_HSM_FAULT_FILE"] = str(keygen_fault)
            pair_ids.append(f"keygen-lane-{secrets.token_hex(4)}".encode())
            await token.generate_key_pair(pair_ids[-1], LABEL + pair_ids[-1].decode(), P256)
            assert pool.client().starts == 1 and pool.keygen_client().starts == 1

            # Slow: held for longer than the data plane's deadline, shorter than its own.
            keygen_fault.write_text("hang")
            asyncio.get_running_loop().call_later(CALL_TIMEOUT * 1.5, keygen_fault.unlink)
            pair_ids.append(f"keygen-lane-{secrets.token_hex(4)}".encode())
            started = time.monotonic()
            slow = asyncio.ensure_future(
                token.generate_key_pair(pair_ids[-1], LABEL + pair_ids[-1].decode(), P256)
            )
            encrypts = await _encrypts_while(token, key_id, slow)
            await slow
            assert time.monotonic() - started > CALL_TIMEOUT
            assert encrypts >= 5, encrypts
            assert pool.client().starts == 1 and pool.keygen_client().starts == 1

            # Hung: fails at the key-generation deadline.
            keygen_fault.write_text("hang")
            pair_ids.append(f"keygen-lane-{secrets.token_hex(4)}".encode())
            started = time.monotonic()
            hung = asyncio.ensure_future(
                token.generate_key_pair(pair_ids[-1], LABEL + pair_ids[-1].decode(), P256)
            )
            encrypts = await _encrypts_while(token, key_id, hung)
            with pytest.raises(BackendUnavailable):
                await hung
            waited = time.monotonic() - started
            # It waited for the key-generation deadline, not the data plane's, and the
            # encrypts kept answering all that time through the one data-plane agent.
            assert KEYGEN_TIMEOUT * 0.9 <= waited < KEYGEN_TIMEOUT + CALL_TIMEOUT * 5, waited
            assert encrypts >= 10, encrypts
            assert pool.client().starts == 1

            keygen_fault.unlink()
            # The hung agent was killed; the next key generation gets a new one. Calls made
            # before it has opened the token fail at once (503), as on the data plane.
            deadline = time.monotonic() + 15
            while True:
                try:
                    pair_ids.append(f"keygen-lane-{secrets.token_hex(4)}".encode())
                    der = await token.generate_key_pair(
                        pair_ids[-1], LABEL + pair_ids[-1].decode(), P256
                    )
                    break
                except BackendUnavailable:
                    assert time.monotonic() < deadline, "no new key-generation agent"
                    await asyncio.sleep(0.2)
            assert der == await token.public_key(pair_ids[-1])
            assert pool.keygen_client().starts == 2
            assert pool.client().starts == 1
        finally:
            for path in (data_fault, keygen_fault):
                path.unlink(missing_ok=True)
            for object_id in [key_id, *pair_ids]:
                await token.destroy_key(object_id)
            pool.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_no_key_generation_agent_until_a_key_pair_is_made(runtime) -> None:
    """The key-generation lane logs in on first use only: a worker that makes no pair has
    one PKCS#11 login, its data-plane agent's."""

    async def scenario() -> None:
        pool = runtime.agents
        try:
            await AgentToken(pool).random(8)
            assert pool.client().starts == 1
            assert asyncio.get_running_loop() not in pool._keygen_clients
        finally:
            pool.close_current()

    asyncio.run(scenario())
