"""EME-OAEP decoding (RFC 8017 §7.1.2, step 3) for raw RSA done in the token.

Used when the token cannot do ``CKM_RSA_PKCS_OAEP`` with the hash we need (SoftHSM2 2.6 does
OAEP with SHA-1 only): the token computes ``m = c^d mod n`` (``CKM_RSA_X_509``, the private
key stays there) and this module turns the encoded message EM into the plaintext.

Why constant time matters: Manger's attack recovers a plaintext from an oracle that says
whether EM's first byte was zero, in about a thousand queries per ciphertext; Bleichenbacher-
style attacks need little more than any distinguishable failure. So every check is computed
on every input and folded into one ``good`` flag, and one error is raised at the very end:

* MGF1 runs over the full lengths whatever EM holds; hashing costs do not depend on secrets;
* lHash is compared with ``hmac.compare_digest`` (constant time for equal lengths);
* the 0x01 separator is found by scanning *every* byte of DB with arithmetic masks (no
  ``index``/``find``, no ``break``), and the first non-zero byte after lHash is checked to
  be 0x01 the same way;
* the only branch on secret data is the final ``if not good``; the plaintext is then
  sliced at an offset that is secret only when decoding succeeded, and the caller learns
  that offset anyway from the plaintext's length.

Python's limits, stated plainly: big-integer and bytes operations are not guaranteed
constant time by CPython (small ints are cached, ``int.from_bytes`` and XOR over bytes are
length-dependent only, which is public here), and the interpreter's own timing noise is
far larger than any residual difference; ``tests/test_oaep.py`` measures decode time for
valid and each class of invalid EM and asserts the medians are close (an early return is
an order of magnitude faster). The raw RSA in the token and the network add far more noise
still. This is "constant time as far as Python allows", not a proof.
"""

from __future__ import annotations

import hashlib
import hmac


class OaepDecodingError(Exception):
    """EM is not a valid EME-OAEP encoding; one error, no detail, for every cause."""


def mgf1(seed: bytes, length: int, hash_name: str) -> bytes:
    """MGF1 (RFC 8017 §B.2.1) of ``seed`` with ``hash_name``: ``length`` bytes."""
    h_len = hashlib.new(hash_name).digest_size
    blocks = [
        hashlib.new(hash_name, seed + counter.to_bytes(4, "big")).digest()
        for counter in range(-(-length // h_len))
    ]
    return b"".join(blocks)[:length]


def _xor(a: bytes, b: bytes) -> bytes:
    # Equal lengths here; one big-integer XOR, work depending only on the (public) length.
    n = len(a)
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(n, "big")


def decode(em: bytes, k: int, hash_name: str = "sha256", label: bytes = b"") -> bytes:
    """The message M of a k-byte EME-OAEP encoded message EM; OaepDecodingError otherwise.

    ``em`` must already be left-padded to ``k`` bytes (the modulus length); a wrong length
    is a public fact (the ciphertext's length) and fails at once.
    """
    l_hash = hashlib.new(hash_name, label).digest()
    h_len = len(l_hash)
    if len(em) != k or k < 2 * h_len + 2:
        raise OaepDecodingError
    y = em[0]
    masked_seed = em[1 : 1 + h_len]
    masked_db = em[1 + h_len :]
    seed = _xor(masked_seed, mgf1(masked_db, h_len, hash_name))
    db = _xor(masked_db, mgf1(seed, k - h_len - 1, hash_name))

    # good is 1 while every check holds; each step keeps it with a multiply/AND, no branch.
    good = int(hmac.compare_digest(db[:h_len], l_hash))
    good &= _is_zero(y)

    # Scan PS || 0x01 || M: remember the index of the first non-zero byte and whether it is
    # 0x01. ``looking`` is 1 until the first non-zero byte has been seen.
    looking = 1
    separator = 0
    first_is_one = 0
    for i in range(h_len, len(db)):
        byte = db[i]
        nonzero = 1 - _is_zero(byte)
        here = looking & nonzero
        separator |= -here & i  # -1 & i == i, -0 & i == 0
        first_is_one |= here & _is_zero(byte ^ 0x01)
        looking &= 1 - nonzero
    good &= first_is_one & (1 - looking)
    if not good:
        raise OaepDecodingError
    return db[separator + 1 :]


def _is_zero(byte: int) -> int:
    """1 if ``byte`` (0..255) is 0, else 0, without comparing: (byte - 1) >> 8 is -1 only for 0."""
    return ((byte - 1) >> 8) & 1
