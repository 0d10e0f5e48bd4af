"""Many threads on the HSM path in one process: no crash, no error (OS locking works)."""

from __future__ import annotations

import random
import threading

from kms_hsm.domain.model import Algorithm
from kms_hsm.service.keys import KeySpec
from kms_hsm.service.runtime import Runtime

THREADS = 8
OPERATIONS = 500


def test_eight_threads_times_500_mixed_hsm_operations(runtime: Runtime) -> None:
    spec = KeySpec("b1gstress", "s", "", {}, Algorithm.AES_256_HSM, None, False)
    key_ids = [runtime.keys.create(spec, "test").metadata["value"]["key_id"] for _ in range(3)]
    reinits_before = runtime.sessions.stats.reinitializations
    errors: list[BaseException] = []
    done = [0] * THREADS

    def worker(n: int) -> None:
        rng = random.Random(n)
        crypto = runtime.crypto
        try:
            for i in range(OPERATIONS):
                key_id = rng.choice(key_ids)
                aad = f"t{n}-{i}".encode()
                choice = i % 5
                if choice == 0:
                    plaintext = rng.randbytes(rng.randint(1, 2048))
                    ct = crypto.encrypt(key_id, "", plaintext, aad).ciphertext
                    assert crypto.decrypt(key_id, ct, aad).plaintext == plaintext
                elif choice == 1:
                    dk = crypto.generate_data_key(key_id, "", aad, Algorithm.AES_256_HSM, False)
                    assert crypto.decrypt(key_id, dk.ciphertext, aad).plaintext == dk.plaintext
                elif choice == 2:
                    dk = crypto.generate_data_key(key_id, "", aad, Algorithm.AES_128, False)
                    assert len(dk.plaintext) == 16
                elif choice == 3:
                    ct = crypto.encrypt(key_id, "", b"re", aad).ciphertext
                    target = rng.choice(key_ids)
                    re = crypto.re_encrypt(target, "", None, key_id, aad, ct)
                    assert crypto.decrypt(target, re.ciphertext, None).plaintext == b"re"
                else:
                    ct = crypto.encrypt(key_id, "", b"x" * 64, None).ciphertext
                    assert crypto.decrypt(key_id, ct, None).plaintext == b"x" * 64
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
    assert runtime.sessions.stats.reinitializations == reinits_before
