"""The token's own sign and decrypt rates (issue 17): python-pkcs11 on kms-hsm's SoftHSM2 token.

Run by bench/run.py as a subprocess with ``SOFTHSM2_CONF`` set (SoftHSM2 reads it when
the library loads), while the servers are idle:

    SOFTHSM2_CONF=DATA_DIR/softhsm2.conf python bench/asym_raw.py DATA_DIR --seconds 2

It opens the token as a worker's HSM agent does (kms-hsm's session manager: one session,
logged in), makes three key pairs as token objects (private, sensitive, never extractable,
like the service's; labels outside the deployment's prefix, so that a running server's
orphan sweep leaves them alone), and for each mechanism below loops one call back to back
on that session, one thread, for ``--seconds``. Each call is checked once first (the
signature verifies with ``cryptography``, the raw RSA output re-encrypts to the input).
It destroys the pairs and prints one JSON object, ``{"seconds": S, "rows": {name: row}}``:

* ``sign ECDSA P-256``: ``CKM_ECDSA`` on a 32-byte SHA-256 digest (the token returns r‖s);
* ``sign RSA-2048 PSS SHA-256``: ``CKM_RSA_PKCS_PSS`` (SHA-256, MGF1-SHA-256, 32-byte
  salt) on a 32-byte digest;
* ``decrypt RSA-2048 OAEP-SHA256``: ``CKM_RSA_X_509`` (raw RSA) on a 256-byte OAEP
  ciphertext made by ``cryptography``. SoftHSM2 2.6 refuses ``CKM_RSA_PKCS_OAEP`` with
  SHA-256 (``CKR_ARGUMENTS_BAD``), so the service decrypts with raw RSA in the token and
  decodes EME-OAEP on the host; this row times **the token's mechanism alone**. The
  host's decoding (``kms_hsm.crypto.oaep.decode``, which the HSM agent runs after the
  token call) is timed on its own as the row's ``host_decode_us``, not added in.

Each row holds ``mechanism``, ``input`` and ``ops_per_s`` / ``us_per_op`` with the token
object (``token_object``) and with an in-memory session copy of it (``session_copy``;
SoftHSM2 re-reads a token object's file on every use, see bench/README.md "HSM path"),
or ``session_copy: null`` when the token refuses the copy.

With ``--serve`` (how bench/run.py runs it) that object is printed as the first line and
the process then keeps the pairs and the session and measures slices on request, so that
the token's rate can be taken in turn with the service's rows (the machine's speed drifts
over minutes): each stdin line ``ROW<TAB>SECONDS`` is answered by one line
``{"row": ROW, "ops": N, "seconds": S, "cpu_seconds": C}`` (the token object, back to
back; C is this process's CPU time over them, which other load on the machine does not
inflate as it does S). At EOF it
destroys the pairs and exits.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from pkcs11 import Attribute, KeyType, Mechanism
from pkcs11 import exceptions as p11
from pkcs11.mechanisms import MGF
from pkcs11.util.ec import encode_named_curve_parameters

from kms_hsm.config import DEFAULT_PKCS11_LIBRARY, read_secret_file
from kms_hsm.crypto import oaep
from kms_hsm.crypto.pkcs11.sessions import SessionManager, TokenSession

SIGN_ECDSA = "sign ECDSA P-256"
SIGN_PSS = "sign RSA-2048 PSS SHA-256"
DECRYPT_OAEP = "decrypt RSA-2048 OAEP-SHA256"
ROWS = (SIGN_ECDSA, SIGN_PSS, DECRYPT_OAEP)

MESSAGE = bytes(range(32))
DIGEST = hashlib.sha256(MESSAGE).digest()
PSS_PARAMS = (Mechanism.SHA256, MGF.SHA256, 32)
OAEP_SHA256 = padding.OAEP(
    mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None
)

_PRIVATE = {
    Attribute.TOKEN: True,
    Attribute.PRIVATE: True,
    Attribute.SENSITIVE: True,
    Attribute.EXTRACTABLE: False,
    Attribute.MODIFIABLE: True,
}
_PUBLIC = {Attribute.TOKEN: True, Attribute.PRIVATE: False}


@dataclass
class Row:
    """One mechanism: the private key, the call, and a check of its answer."""

    name: str
    mechanism: str
    input: str
    private_key: Any
    call: Callable[[Any], bytes]
    check: Callable[[bytes], None]


def _ec_pair(session: Any, object_id: bytes) -> tuple[Any, Any]:
    params = session.create_domain_parameters(
        KeyType.EC, {Attribute.EC_PARAMS: encode_named_curve_parameters("secp256r1")}, local=True
    )
    public, private = params.generate_keypair(
        id=object_id,
        label=object_id.decode(),
        store=True,
        mechanism=Mechanism.EC_KEY_PAIR_GEN,
        public_template={**_PUBLIC, Attribute.VERIFY: True},
        private_template={**_PRIVATE, Attribute.SIGN: True, Attribute.DECRYPT: False},
    )
    return public, private


def _rsa_pair(session: Any, object_id: bytes, usage: Attribute) -> tuple[Any, Any]:
    other = Attribute.DECRYPT if usage is Attribute.SIGN else Attribute.SIGN
    public, private = session.generate_keypair(
        KeyType.RSA,
        2048,
        id=object_id,
        label=object_id.decode(),
        store=True,
        public_template={**_PUBLIC, Attribute.PUBLIC_EXPONENT: b"\x01\x00\x01"},
        private_template={**_PRIVATE, usage: True, other: False},
    )
    return public, private


def _rsa_public(public: Any) -> rsa.RSAPublicKey:
    n = int.from_bytes(public[Attribute.MODULUS], "big")
    e = int.from_bytes(public[Attribute.PUBLIC_EXPONENT], "big")
    return rsa.RSAPublicNumbers(e, n).public_key()


def _ec_public(public: Any) -> ec.EllipticCurvePublicKey:
    point = public[Attribute.EC_POINT]
    # CKA_EC_POINT is a DER OCTET STRING around the X9.62 point (SoftHSM2 2.6).
    if point[0] == 0x04 and point[1] == len(point) - 2:
        point = point[2:]
    return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)


def _make_rows(session: Any, prefix: bytes) -> list[Row]:
    ec_public, ec_private = _ec_pair(session, prefix + b":ec")
    pss_public, pss_private = _rsa_pair(session, prefix + b":pss", Attribute.SIGN)
    oaep_public, oaep_private = _rsa_pair(session, prefix + b":oaep", Attribute.DECRYPT)
    ec_key = _ec_public(ec_public)
    pss_key = _rsa_public(pss_public)
    oaep_key = _rsa_public(oaep_public)
    ciphertext = oaep_key.encrypt(MESSAGE, OAEP_SHA256)

    def check_ecdsa(signature: bytes) -> None:
        half = len(signature) // 2
        r, s = (int.from_bytes(signature[i : i + half], "big") for i in (0, half))
        ec_key.verify(
            encode_dss_signature(r, s), MESSAGE, ec.ECDSA(hashes.SHA256())
        )  # raises InvalidSignature

    def check_pss(signature: bytes) -> None:
        pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
        pss_key.verify(signature, MESSAGE, pss, hashes.SHA256())

    def check_raw_rsa(encoded: bytes) -> None:
        numbers = oaep_key.public_numbers()
        again = pow(int.from_bytes(encoded, "big"), numbers.e, numbers.n)
        if again != int.from_bytes(ciphertext, "big"):
            raise InvalidSignature("raw RSA decryption does not re-encrypt to the ciphertext")
        if oaep.decode(encoded.rjust(256, b"\x00"), 256, "sha256") != MESSAGE:
            raise InvalidSignature("EME-OAEP decoding does not give the message back")

    return [
        Row(
            SIGN_ECDSA,
            "CKM_ECDSA",
            "32-byte SHA-256 digest",
            ec_private,
            lambda key: key.sign(DIGEST, mechanism=Mechanism.ECDSA),
            check_ecdsa,
        ),
        Row(
            SIGN_PSS,
            "CKM_RSA_PKCS_PSS (SHA-256, MGF1-SHA-256, salt 32)",
            "32-byte SHA-256 digest",
            pss_private,
            lambda key: key.sign(
                DIGEST, mechanism=Mechanism.RSA_PKCS_PSS, mechanism_param=PSS_PARAMS
            ),
            check_pss,
        ),
        Row(
            DECRYPT_OAEP,
            "CKM_RSA_X_509 (raw RSA; EME-OAEP decoded on the host, not timed here)",
            "256-byte OAEP-SHA256 ciphertext of 32 bytes",
            oaep_private,
            lambda key: key.decrypt(ciphertext, mechanism=Mechanism.RSA_X_509),
            check_raw_rsa,
        ),
    ]


def _count(call: Callable[[Any], bytes], key: Any, seconds: float) -> tuple[int, float, float]:
    """Calls back to back for ``seconds``: (calls, seconds they took, CPU seconds)."""
    count = 0
    cpu = time.process_time()
    started = time.perf_counter()
    deadline = started + seconds
    now = started
    while now < deadline:
        call(key)
        count += 1
        now = time.perf_counter()
    return count, now - started, time.process_time() - cpu


def _loop(call: Callable[[Any], bytes], key: Any, seconds: float) -> dict[str, float]:
    count, elapsed, cpu = _count(call, key, seconds)
    return {
        "ops_per_s": count / elapsed,
        "us_per_op": elapsed / count * 1e6,
        "cpu_us_per_op": cpu / count * 1e6,
    }


def host_decode_us(em: bytes, seconds: float) -> float:
    """The service's host-side EME-OAEP decoding of ``em`` alone, us per call."""
    timing = _loop(lambda _: oaep.decode(em, 256, "sha256"), None, min(seconds, 0.5))
    return timing["us_per_op"]


def _session_copy(key: Any) -> Any | None:
    try:
        copy = key.copy({Attribute.TOKEN: False})
    except p11.PKCS11Error:
        return None
    return copy


def _measure_row(row: Row, seconds: float) -> dict[str, Any]:
    """Check the call once, time it on the token object and on a session copy."""
    em = row.call(row.private_key)
    row.check(em)
    result: dict[str, Any] = {"mechanism": row.mechanism, "input": row.input}
    if row.name == DECRYPT_OAEP:
        result["host_decode_us"] = host_decode_us(em.rjust(256, b"\x00"), seconds)
    result["token_object"] = _loop(row.call, row.private_key, seconds)
    copy = _session_copy(row.private_key)
    result["session_copy"] = None
    if copy is not None:
        try:
            row.check(row.call(copy))
            result["session_copy"] = _loop(row.call, copy, seconds)
        finally:
            copy.destroy()
    return result


def _emit(data: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(data) + "\n")
    sys.stdout.flush()


def measure_rows(
    ts: TokenSession, prefix: bytes, seconds: float, requests: Iterable[str] | None = None
) -> dict[str, Any]:
    """Make the pairs and measure every row; with ``requests``, print that and serve slices."""
    session = ts.session
    try:
        rows = _make_rows(session, prefix)
        result = {"seconds": seconds, "rows": {r.name: _measure_row(r, seconds) for r in rows}}
        if requests is not None:
            _emit(result)
            by_name = {row.name: row for row in rows}
            for line in requests:
                name, _, slice_seconds = line.rstrip("\n").partition("\t")
                row = by_name[name]
                count, elapsed, cpu = _count(row.call, row.private_key, float(slice_seconds))
                _emit({"row": name, "ops": count, "seconds": elapsed, "cpu_seconds": cpu})
        return result
    finally:
        _destroy(session, prefix)


def _destroy(session: Any, prefix: bytes) -> None:
    for suffix in (b":ec", b":pss", b":oaep"):
        for obj in list(session.get_objects({Attribute.ID: prefix + suffix})):
            obj.destroy()


def measure(data_dir: Path, seconds: float, serve: bool = False) -> dict[str, Any]:
    """Open the token like an HSM agent does and measure every row (then serve slices)."""
    module = os.environ.get("KMS_HSM_PKCS11_LIBRARY", DEFAULT_PKCS11_LIBRARY)
    pin = read_secret_file(data_dir / "user-pin", "user PIN file")
    sessions = SessionManager(module, "kms-hsm", pin)
    sessions.start()
    prefix = b"bench:asym:" + os.urandom(6).hex().encode()
    try:
        requests = sys.stdin if serve else None
        result: dict[str, Any] = sessions.run(
            lambda ts: measure_rows(ts, prefix, seconds, requests), writes=True
        )
        return result
    finally:
        sessions.close()


def main() -> None:
    """CLI: prints the measurement as one JSON object on stdout."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--serve", action="store_true", help="then measure slices from stdin")
    args = parser.parse_args()
    if "SOFTHSM2_CONF" not in os.environ:
        parser.error("set SOFTHSM2_CONF to DATA_DIR/softhsm2.conf")
    result = measure(args.data_dir, args.seconds, args.serve)
    if not args.serve:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
