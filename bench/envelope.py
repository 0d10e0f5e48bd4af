"""Envelope throughput (issue 18): `kms-hsm envelope`'s streaming AEAD beside raw AES-GCM.

    .venv/bin/python bench/envelope.py [--mib 256] [--rounds 3]
    .venv/bin/python bench/run.py --envelope      # the same, results in bench/results/

Starts `kms-hsm serve` (embedded SoftHSM2 token, plaintext gRPC), creates one AES_256 key,
then on ONE core (this process pinned to a single CPU) measures, in turn for ``rounds``
rounds, over the same ``mib`` MiB of random data held in memory:

- envelope encrypt: kms_hsm.tink.envelope.encrypt (one KMS Encrypt over gRPC, then Tink's
  AES256_GCM_HKDF_1MB stream) into a sink that discards;
- envelope decrypt: the same ciphertext back (one KMS Decrypt, then the stream);
- raw AES-GCM: `cryptography`'s AESGCM on 1 MiB chunks with fresh 96-bit nonces, encrypt
  and decrypt, the same bytes.

Prints MiB/s (best round) and envelope/raw ratios. No disk and no pipe is involved: the
CLI's own file and pipe throughput is printed by tests/test_envelope_files.py's 1 GiB test.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from servers import ServerError, read_token, start_kms

MIB = 1 << 20


class _Discard(io.RawIOBase):
    """A sink that counts what it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        n = len(data)
        self.size += n
        return n


def _pin_one_core() -> int | None:
    """Pin this process to one CPU (the last it may use); None where that is not possible."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    cpu = max(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    return cpu


def _raw_gcm(data: bytes) -> tuple[float, float]:
    """Seconds to encrypt, then decrypt, ``data`` with AESGCM in 1 MiB chunks."""
    gcm = AESGCM(AESGCM.generate_key(bit_length=256))
    view = memoryview(data)
    started = time.perf_counter()
    for offset in range(0, len(data), MIB):
        gcm.encrypt(os.urandom(12), view[offset : offset + MIB], None)
    encrypt = time.perf_counter() - started
    # The ciphertexts to decrypt, made outside the timing (as for the envelope).
    sealed: list[tuple[bytes, bytes]] = []
    for offset in range(0, len(data), MIB):
        nonce = os.urandom(12)
        sealed.append((nonce, gcm.encrypt(nonce, view[offset : offset + MIB], None)))
    started = time.perf_counter()
    for nonce, chunk in sealed:
        gcm.decrypt(nonce, chunk, None)
    return encrypt, time.perf_counter() - started


def _envelope(data: bytes, kms: Any, uri: str) -> tuple[float, float]:
    """Seconds to envelope-encrypt, then decrypt, ``data`` (one KMS call in each)."""
    from kms_hsm.tink import envelope

    started = time.perf_counter()
    envelope.encrypt(io.BytesIO(data), _Discard(), kms, uri)
    encrypt = time.perf_counter() - started
    # The ciphertext to decrypt, made outside the timing (a growing buffer would time
    # fresh pages, not the envelope).
    sealed = io.BytesIO()
    envelope.encrypt(io.BytesIO(data), sealed, kms, uri)
    sink = _Discard()
    sealed.seek(0)
    started = time.perf_counter()
    envelope.decrypt(sealed, sink, kms)
    decrypt = time.perf_counter() - started
    if sink.size != len(data):
        raise RuntimeError(f"decrypted {sink.size} bytes of {len(data)}")
    return encrypt, decrypt


def measure(kms: Any, uri: str, mib: int, rounds: int) -> dict[str, Any]:
    """Best-of-``rounds`` MiB/s of each row, and the envelope/raw ratios."""
    data = os.urandom(mib * MIB)
    # Unmeasured: the channel's connect and Tink's registration happen once per process.
    _envelope(data[:MIB], kms, uri)
    best: dict[str, float] = {}
    for _ in range(rounds):
        for name, seconds in zip(
            ("envelope_encrypt", "envelope_decrypt", "aesgcm_encrypt", "aesgcm_decrypt"),
            (*_envelope(data, kms, uri), *_raw_gcm(data)),
            strict=True,
        ):
            best[name] = max(best.get(name, 0.0), mib / seconds)
    return {
        "mib": mib,
        "rounds": rounds,
        "mib_per_s": best,
        "ratio_encrypt": best["envelope_encrypt"] / best["aesgcm_encrypt"],
        "ratio_decrypt": best["envelope_decrypt"] / best["aesgcm_decrypt"],
    }


def report(result: dict[str, Any]) -> None:
    """The table."""
    rates = result["mib_per_s"]
    cpu = result.get("cpu")
    print(
        f"\nenvelope throughput, {result['mib']} MiB in memory, best of {result['rounds']} "
        f"round(s), one core (CPU {cpu if cpu is not None else 'unpinned'}):"
    )
    print(f"  {'':28}{'encrypt':>12}{'decrypt':>12}")
    for label, prefix in (
        ("kms-hsm envelope (Tink)", "envelope"),
        ("raw AES-GCM (cryptography)", "aesgcm"),
    ):
        enc, dec = rates[f"{prefix}_encrypt"], rates[f"{prefix}_decrypt"]
        print(f"  {label:28}{enc:>8.0f} MiB/s{dec:>6.0f} MiB/s")
    print(
        f"  {'envelope / raw':28}{result['ratio_encrypt']:>12.2f}{result['ratio_decrypt']:>12.2f}"
    )


def run_envelope(args: argparse.Namespace, work_dir: Path) -> tuple[dict[str, Any], bool]:
    """Start a server, measure, print; (results, failed)."""
    from kms_hsm.tink import KmsClient, key_uri

    mib = 32 if getattr(args, "smoke", False) else getattr(args, "envelope_mib", 256)
    rounds = 1 if getattr(args, "smoke", False) else getattr(args, "envelope_rounds", 3)
    data_dir = work_dir / "envelope-data"
    server = start_kms(data_dir, 1, work_dir / "logs", grpc=True)
    try:
        token_file = data_dir / "admin-token"
        server.wait_ready(lambda: token_file.exists() and _answers(server.base_url))
        token = read_token(data_dir)
        created = httpx.post(
            f"{server.base_url}/kms/v1/keys",
            json={"folderId": "b1gbench", "name": "envelope", "defaultAlgorithm": "AES_256"},
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
        created.raise_for_status()
        key_id = created.json()["response"]["id"]
        cpu = _pin_one_core()
        try:
            with KmsClient(server.grpc_target, token=token, plaintext=True) as kms:
                result = measure(kms, key_uri(key_id), mib, rounds)
        finally:
            if cpu is not None:
                os.sched_setaffinity(0, range(os.cpu_count() or 1))
        result["cpu"] = cpu
    except (ServerError, httpx.HTTPError, RuntimeError) as exc:
        print(f"FAILURES\n  envelope: {exc}")
        return {"envelope": {"error": str(exc)}}, True
    finally:
        server.stop()
    report(result)
    return {"envelope": result}, False


def _answers(base_url: str) -> bool:
    try:
        return httpx.get(f"{base_url}/kms/v1/keys/probe", timeout=1).status_code == 401
    except httpx.HTTPError:
        return False


def main(argv: list[str] | None = None) -> int:
    """Run on its own; 1 when the measurement failed."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--mib", dest="envelope_mib", type=int, default=256)
    parser.add_argument("--rounds", dest="envelope_rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="kms-bench-envelope-") as tmp:
        data, failed = run_envelope(args, Path(tmp))
    if args.json:
        args.json.write_text(json.dumps(data, indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
