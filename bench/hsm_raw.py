"""The token's own AES-GCM encrypt rate: python-pkcs11 on kms-hsm's SoftHSM2 token.

Run by bench/run.py as a subprocess with ``SOFTHSM2_CONF`` set (SoftHSM2 reads it when
the library loads), while the server is idle:

    SOFTHSM2_CONF=DATA_DIR/softhsm2.conf python bench/hsm_raw.py DATA_DIR --seconds 2

It creates one token key, measures, destroys the key and prints one JSON object:

* ``raw``: one thread calling ``C_EncryptInit``/``C_Encrypt`` through python-pkcs11 on a
  single session, nothing else in the loop, with the key's in-memory session copy (what
  the service uses); ``raw_token_object``: the same with the token object;
* ``threads``: ``HsmCrypto.encrypt`` (the session manager's ``run`` + the same calls)
  from 1..N threads. One thread is how the service calls it (its HSM agent runs one call
  at a time). More threads take turns: the manager runs one token call at a time on its
  one session, so they add no token throughput and show only what handing the turn over
  costs. (They never ran in parallel: before the session pool was removed each thread
  leased a session of its own, but one lock already serialised their calls.)

python-pkcs11 0.10's own ``C_Initialize`` leaves SoftHSM2 unlocked (unsafe with threads),
so the session manager of kms-hsm loads the module.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from pkcs11 import Mechanism
from pkcs11.mechanisms import GCMParams

from kms_hsm.config import DEFAULT_PKCS11_LIBRARY, read_secret_file
from kms_hsm.crypto.pkcs11.hsm import HsmCrypto
from kms_hsm.crypto.pkcs11.sessions import SessionManager, TokenSession

PLAINTEXT = bytes(32)
AAD = b"bench"


def measure_raw(
    sessions: SessionManager, object_id: bytes, seconds: float, *, token_object: bool = False
) -> dict[str, float]:
    """Back-to-back encrypts on the manager's session, single thread.

    With the in-memory session copy that the service computes with, or, with
    ``token_object``, the token object itself (SoftHSM2 re-reads its files on every use).
    """

    def loop(ts: TokenSession) -> int:
        key = ts.key(object_id) if token_object else ts.working_key(object_id)
        count = 0
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            params = GCMParams(os.urandom(12), AAD, 128)
            key.encrypt(PLAINTEXT, mechanism=Mechanism.AES_GCM, mechanism_param=params)
            count += 1
        return count

    count = sessions.run(loop)
    return {"ops_per_s": count / seconds, "us_per_op": seconds / count * 1e6}


def measure_threads(hsm: HsmCrypto, object_id: bytes, threads: int, seconds: float) -> float:
    """Encrypts per second through ``HsmCrypto.encrypt`` from ``threads`` threads, taking turns."""
    counts = [0] * threads
    start = threading.Barrier(threads + 1)

    def worker(index: int) -> None:
        start.wait()
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            hsm.encrypt(object_id, os.urandom(12), PLAINTEXT, AAD)
            counts[index] += 1

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    start.wait()
    for thread in pool:
        thread.join()
    return sum(counts) / seconds


def measure(data_dir: Path, seconds: float, max_threads: int) -> dict[str, Any]:
    """Open the token like a worker does, make a key, run both measurements."""
    module = os.environ.get("KMS_HSM_PKCS11_LIBRARY", DEFAULT_PKCS11_LIBRARY)
    pin = read_secret_file(data_dir / "user-pin", "user PIN file")
    sessions = SessionManager(module, "kms-hsm", pin)
    sessions.start()
    hsm = HsmCrypto(sessions)
    object_id = b"bench:raw:" + os.urandom(6).hex().encode()
    hsm.generate_key(object_id)
    try:
        hsm.encrypt(object_id, os.urandom(12), PLAINTEXT, AAD)  # warm the handle cache
        result: dict[str, Any] = {"plaintext_bytes": len(PLAINTEXT), "seconds": seconds}
        result["raw"] = measure_raw(sessions, object_id, seconds)
        result["raw_token_object"] = measure_raw(sessions, object_id, seconds, token_object=True)
        result["threads"] = {
            str(n): measure_threads(hsm, object_id, n, seconds) for n in range(1, max_threads + 1)
        }
        return result
    finally:
        hsm.destroy_key(object_id)
        sessions.close()


def main() -> None:
    """CLI: prints the measurement as one JSON object on stdout."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--threads", type=int, default=2, help="measure 1..N threads")
    args = parser.parse_args()
    if "SOFTHSM2_CONF" not in os.environ:
        parser.error("set SOFTHSM2_CONF to DATA_DIR/softhsm2.conf")
    print(json.dumps(measure(args.data_dir, args.seconds, args.threads)))


if __name__ == "__main__":
    main()
