"""Many callers on the HSM path at once: no crash, no error.

Threads on one SessionManager prove that PKCS#11 runs with OS locking (python-pkcs11
releases the GIL around every call); concurrent requests through the service prove that
the HSM agent's batching answers each call with its own result.
"""

from __future__ import annotations

import asyncio
import random
import threading

from kms_hsm.crypto.pkcs11.hsm import HsmCrypto
from kms_hsm.domain.model import Algorithm
from kms_hsm.service.keys import KeySpec
from kms_hsm.service.runtime import Runtime

THREADS = 8
OPERATIONS = 500


def _hsm_keys(runtime: Runtime, wait) -> list[str]:
    spec = KeySpec("b1gstress", "s", "", {}, Algorithm.AES_256_HSM, None, False)
    ops = [wait(runtime.keys.create(spec, "test")) for _ in range(3)]
    return [op.metadata["value"]["primary_version_id"] for op in ops]


def test_eight_threads_times_500_mixed_token_calls(runtime: Runtime, wait, token_sessions) -> None:
    versions = [v.encode() for v in _hsm_keys(runtime, wait)]
    hsm = HsmCrypto(token_sessions)
    # Other tests in this process may have finalised the module (a SessionManager closing
    # finalises PKCS#11 for the whole process): recover from that before counting.
    hsm.random(1)
    reinits_before = token_sessions.stats.reinitializations
    errors: list[BaseException] = []
    done = [0] * THREADS

    def worker(n: int) -> None:
        rng = random.Random(n)
        try:
            for i in range(OPERATIONS):
                key = rng.choice(versions)
                nonce, aad = rng.randbytes(12), f"t{n}-{i}".encode()
                if i % 3 == 0:
                    plaintext, tag, wrapped = hsm.generate_wrapped_data_key(
                        key, 32, nonce, aad, want_plaintext=True
                    )
                    assert hsm.unwrap_data_key(key, nonce, tag, wrapped, aad) == plaintext
                elif i % 3 == 1:
                    plaintext = rng.randbytes(rng.randint(1, 2048))
                    sealed = hsm.encrypt(key, nonce, plaintext, aad)
                    assert hsm.decrypt(key, nonce, sealed, aad) == plaintext
                else:
                    assert len(hsm.random(32)) == 32
                done[n] += 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert done == [OPERATIONS] * THREADS
    assert token_sessions.stats.reinitializations == reinits_before


def test_concurrent_service_calls_through_the_agent(runtime: Runtime, wait) -> None:
    hsm_spec = KeySpec("b1gstress", "h", "", {}, Algorithm.AES_256_HSM, None, False)
    soft_spec = KeySpec("b1gstress", "s", "", {}, Algorithm.AES_128, None, False)
    key_ids = [
        wait(runtime.keys.create(spec, "test")).metadata["value"]["key_id"]
        for spec in (hsm_spec, hsm_spec, soft_spec)
    ]
    crypto = runtime.crypto

    async def one(n: int) -> None:
        rng = random.Random(n)
        key_id = rng.choice(key_ids)
        aad = f"c{n}".encode()
        if n % 4 == 0:
            dk = await crypto.generate_data_key(key_id, "", aad, Algorithm.AES_256_HSM, False)
            assert (await crypto.decrypt(key_id, dk.ciphertext, aad)).plaintext == dk.plaintext
        elif n % 4 == 1:
            target = rng.choice(key_ids)
            ct = (await crypto.encrypt(key_id, "", b"re", aad)).ciphertext
            re = await crypto.re_encrypt(target, "", None, key_id, aad, ct)
            assert (await crypto.decrypt(target, re.ciphertext, None)).plaintext == b"re"
        else:
            plaintext = rng.randbytes(rng.randint(1, 2048))
            ct = (await crypto.encrypt(key_id, "", plaintext, aad)).ciphertext
            assert (await crypto.decrypt(key_id, ct, aad)).plaintext == plaintext

    async def all_at_once() -> None:
        await asyncio.gather(*(one(n) for n in range(THREADS * OPERATIONS // 4)))

    wait(all_at_once())
