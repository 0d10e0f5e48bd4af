"""Keys, versions and their enums: plain values with no I/O.

The integer values of the enums are the proto3 enum numbers of Yandex KMS v1; they are
also what the database stores, and a test pins them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta


class Algorithm(enum.IntEnum):
    """``yandex.cloud.kms.v1.SymmetricAlgorithm``."""

    SYMMETRIC_ALGORITHM_UNSPECIFIED = 0
    AES_128 = 1
    AES_192 = 2
    AES_256 = 3
    AES_256_HSM = 4
    GOST_R_3412_2015_K = 5

    @property
    def key_bytes(self) -> int:
        """Length of key material for this algorithm; UNSPECIFIED counts as AES_256."""
        return _KEY_BYTES[self]

    @property
    def hosted_by_hsm(self) -> bool:
        """True when versions of this algorithm live in the HSM and never leave it."""
        return self is Algorithm.AES_256_HSM


_KEY_BYTES = {
    Algorithm.SYMMETRIC_ALGORITHM_UNSPECIFIED: 32,
    Algorithm.AES_128: 16,
    Algorithm.AES_192: 24,
    Algorithm.AES_256: 32,
    Algorithm.AES_256_HSM: 32,
    Algorithm.GOST_R_3412_2015_K: 32,
}

# Algorithms this service can create versions with. GOST is part of the enum but no
# PKCS#11 token we target implements Kuznyechik, so it is refused as an argument.
SUPPORTED_ALGORITHMS = frozenset(
    {Algorithm.AES_128, Algorithm.AES_192, Algorithm.AES_256, Algorithm.AES_256_HSM}
)


class KeyStatus(enum.IntEnum):
    """``SymmetricKey.Status``."""

    STATUS_UNSPECIFIED = 0
    CREATING = 1
    ACTIVE = 2
    INACTIVE = 3


class VersionStatus(enum.IntEnum):
    """``SymmetricKeyVersion.Status``."""

    STATUS_UNSPECIFIED = 0
    ACTIVE = 1
    SCHEDULED_FOR_DESTRUCTION = 2
    DESTROYED = 3


@dataclass(frozen=True, slots=True)
class KeyVersion:
    """One version of a key: an algorithm and where its material lives."""

    id: str
    key_id: str
    status: VersionStatus
    algorithm: Algorithm
    created_at: datetime
    primary: bool
    destroy_at: datetime | None = None

    @property
    def hosted_by_hsm(self) -> bool:
        """True when the material is a non-extractable object in the HSM."""
        return self.algorithm.hosted_by_hsm


@dataclass(frozen=True, slots=True)
class Key:
    """A symmetric key: metadata plus its primary version."""

    id: str
    folder_id: str
    created_at: datetime
    name: str
    description: str
    labels: dict[str, str]
    status: KeyStatus
    primary_version: KeyVersion | None
    default_algorithm: Algorithm
    rotated_at: datetime | None
    rotation_period: timedelta | None
    deletion_protection: bool
