"""Asymmetric keys (one key pair each, no versions) and their algorithms: plain values, no I/O.

The integer values are the proto3 enum numbers of ``yandex.cloud.kms.v1.asymmetricsignature``
and ``…asymmetricencryption``; they are also what the database stores (``keys.default_algorithm``
of a key whose ``family`` is not symmetric), and a test pins them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime


class KeyFamily(enum.IntEnum):
    """Which API a key belongs to (``keys.family``); a key is NotFound on the others' paths."""

    SYMMETRIC = 0
    ASYMMETRIC_SIGNATURE = 1
    ASYMMETRIC_ENCRYPTION = 2

    @property
    def service(self) -> str:
        """The API service name of this family's keys (audit names, operation descriptions)."""
        return _SERVICE[self]


_SERVICE = {
    KeyFamily.SYMMETRIC: "SymmetricKey",
    KeyFamily.ASYMMETRIC_SIGNATURE: "AsymmetricSignatureKey",
    KeyFamily.ASYMMETRIC_ENCRYPTION: "AsymmetricEncryptionKey",
}


class SignatureAlgorithm(enum.IntEnum):
    """``AsymmetricSignatureAlgorithm``."""

    ASYMMETRIC_SIGNATURE_ALGORITHM_UNSPECIFIED = 0
    RSA_2048_SIGN_PSS_SHA_256 = 1
    RSA_2048_SIGN_PSS_SHA_384 = 2
    RSA_2048_SIGN_PSS_SHA_512 = 3
    RSA_3072_SIGN_PSS_SHA_256 = 4
    RSA_3072_SIGN_PSS_SHA_384 = 5
    RSA_3072_SIGN_PSS_SHA_512 = 6
    RSA_4096_SIGN_PSS_SHA_256 = 7
    RSA_4096_SIGN_PSS_SHA_384 = 8
    RSA_4096_SIGN_PSS_SHA_512 = 9
    ECDSA_NIST_P256_SHA_256 = 10
    ECDSA_NIST_P384_SHA_384 = 11
    ECDSA_NIST_P521_SHA_512 = 12
    ECDSA_SECP256_K1_SHA_256 = 13

    @property
    def spec(self) -> PairSpec:
        """Key type, size or curve, and hash; InvalidArgument-worthy KeyError for UNSPECIFIED."""
        return _SIGNATURE_SPECS[self]


class EncryptionAlgorithm(enum.IntEnum):
    """``AsymmetricEncryptionAlgorithm``: RSA-OAEP with SHA-256 and MGF1-SHA-256."""

    ASYMMETRIC_ENCRYPTION_ALGORITHM_UNSPECIFIED = 0
    RSA_2048_ENC_OAEP_SHA_256 = 1
    RSA_3072_ENC_OAEP_SHA_256 = 2
    RSA_4096_ENC_OAEP_SHA_256 = 3

    @property
    def spec(self) -> PairSpec:
        """Key size and hash (OAEP's label hash and MGF1 hash are both this one)."""
        return _ENCRYPTION_SPECS[self]


class AsymmetricKeyStatus(enum.IntEnum):
    """``AsymmetricSignatureKey.Status`` (the encryption key's is the same)."""

    STATUS_UNSPECIFIED = 0
    CREATING = 1
    ACTIVE = 2
    INACTIVE = 3


@dataclass(frozen=True, slots=True)
class PairSpec:
    """What the token makes and how it is used; everything the crypto layer needs to know.

    ``key_type`` "RSA" (``rsa_bits``) or "EC" (``curve``: the SEC 2 name, as
    ``cryptography`` spells it: secp256r1, secp384r1, secp521r1, secp256k1); ``hash``:
    "sha256" | "sha384" | "sha512" (hashlib names), of the message for Sign, the length
    SignHash wants, PSS's MGF1 and salt length, OAEP's label hash and MGF1.
    ``usage``: "sign" or "decrypt" (the private key gets only that capability).
    """

    key_type: str
    hash: str
    usage: str
    rsa_bits: int = 0
    curve: str = ""

    @property
    def digest_size(self) -> int:
        """Bytes of ``hash``'s output."""
        return _DIGEST_SIZE[self.hash]

    @property
    def modulus_bytes(self) -> int:
        """RSA: the length of a ciphertext or signature in bytes (0 for EC)."""
        return self.rsa_bits // 8

    @property
    def max_plaintext(self) -> int:
        """RSA-OAEP: the longest message (k - 2·hLen - 2): 190, 318, 446 bytes with SHA-256."""
        return self.modulus_bytes - 2 * self.digest_size - 2


_DIGEST_SIZE = {"sha256": 32, "sha384": 48, "sha512": 64}


def _rsa_sign(bits: int, hash_name: str) -> PairSpec:
    return PairSpec("RSA", hash_name, "sign", rsa_bits=bits)


_SIGNATURE_SPECS = {
    SignatureAlgorithm.RSA_2048_SIGN_PSS_SHA_256: _rsa_sign(2048, "sha256"),
    SignatureAlgorithm.RSA_2048_SIGN_PSS_SHA_384: _rsa_sign(2048, "sha384"),
    SignatureAlgorithm.RSA_2048_SIGN_PSS_SHA_512: _rsa_sign(2048, "sha512"),
    SignatureAlgorithm.RSA_3072_SIGN_PSS_SHA_256: _rsa_sign(3072, "sha256"),
    SignatureAlgorithm.RSA_3072_SIGN_PSS_SHA_384: _rsa_sign(3072, "sha384"),
    SignatureAlgorithm.RSA_3072_SIGN_PSS_SHA_512: _rsa_sign(3072, "sha512"),
    SignatureAlgorithm.RSA_4096_SIGN_PSS_SHA_256: _rsa_sign(4096, "sha256"),
    SignatureAlgorithm.RSA_4096_SIGN_PSS_SHA_384: _rsa_sign(4096, "sha384"),
    SignatureAlgorithm.RSA_4096_SIGN_PSS_SHA_512: _rsa_sign(4096, "sha512"),
    SignatureAlgorithm.ECDSA_NIST_P256_SHA_256: PairSpec("EC", "sha256", "sign", curve="secp256r1"),
    SignatureAlgorithm.ECDSA_NIST_P384_SHA_384: PairSpec("EC", "sha384", "sign", curve="secp384r1"),
    SignatureAlgorithm.ECDSA_NIST_P521_SHA_512: PairSpec("EC", "sha512", "sign", curve="secp521r1"),
    SignatureAlgorithm.ECDSA_SECP256_K1_SHA_256: PairSpec(
        "EC", "sha256", "sign", curve="secp256k1"
    ),
}
_ENCRYPTION_SPECS = {
    EncryptionAlgorithm.RSA_2048_ENC_OAEP_SHA_256: PairSpec(
        "RSA", "sha256", "decrypt", rsa_bits=2048
    ),
    EncryptionAlgorithm.RSA_3072_ENC_OAEP_SHA_256: PairSpec(
        "RSA", "sha256", "decrypt", rsa_bits=3072
    ),
    EncryptionAlgorithm.RSA_4096_ENC_OAEP_SHA_256: PairSpec(
        "RSA", "sha256", "decrypt", rsa_bits=4096
    ),
}

# Limits of the contract (bytes).
MAX_SIGN_MESSAGE = 32768
MAX_SIGN_HASH = 4096
MAX_ASYMMETRIC_CIPHERTEXT = 32768

AsymmetricAlgorithm = SignatureAlgorithm | EncryptionAlgorithm


@dataclass(frozen=True, slots=True)
class AsymmetricKey:
    """An asymmetric key: metadata, its algorithm and (cached) public key.

    The private key is a token object with ``CKA_ID`` = ``id``; ``public_key_der`` is the
    SubjectPublicKeyInfo read from the token when the pair was made.
    """

    id: str
    family: KeyFamily
    folder_id: str
    created_at: datetime
    name: str
    description: str
    labels: dict[str, str]
    status: AsymmetricKeyStatus
    algorithm: AsymmetricAlgorithm
    deletion_protection: bool
    public_key_der: bytes
