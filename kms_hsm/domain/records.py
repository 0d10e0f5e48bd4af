"""Keys and versions as JSON-native records (snake_case), for Operation snapshots.

An Operation's ``response`` is the resource as it was when the operation finished, so it
is stored as a record and turned back into a domain value when read.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from kms_hsm.domain.asymmetric import (
    AsymmetricAlgorithm,
    AsymmetricKey,
    AsymmetricKeyStatus,
    EncryptionAlgorithm,
    KeyFamily,
    SignatureAlgorithm,
)
from kms_hsm.domain.model import Algorithm, Key, KeyStatus, KeyVersion, VersionStatus


def _ts(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _parse_ts(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def version_record(version: KeyVersion) -> dict[str, Any]:
    """A version as a JSON-native dict."""
    return {
        "id": version.id,
        "key_id": version.key_id,
        "status": version.status.name,
        "algorithm": version.algorithm.name,
        "created_at": _ts(version.created_at),
        "primary": version.primary,
        "destroy_at": _ts(version.destroy_at),
    }


def version_from_record(record: dict[str, Any]) -> KeyVersion:
    """Inverse of ``version_record``."""
    created_at = _parse_ts(record["created_at"])
    assert created_at is not None
    return KeyVersion(
        id=record["id"],
        key_id=record["key_id"],
        status=VersionStatus[record["status"]],
        algorithm=Algorithm[record["algorithm"]],
        created_at=created_at,
        primary=record["primary"],
        destroy_at=_parse_ts(record["destroy_at"]),
    )


def key_record(key: Key) -> dict[str, Any]:
    """A key as a JSON-native dict."""
    return {
        "id": key.id,
        "folder_id": key.folder_id,
        "created_at": _ts(key.created_at),
        "name": key.name,
        "description": key.description,
        "labels": dict(key.labels),
        "status": key.status.name,
        "primary_version": version_record(key.primary_version) if key.primary_version else None,
        "default_algorithm": key.default_algorithm.name,
        "rotated_at": _ts(key.rotated_at),
        "rotation_period_seconds": (
            int(key.rotation_period.total_seconds()) if key.rotation_period is not None else None
        ),
        "deletion_protection": key.deletion_protection,
    }


def key_from_record(record: dict[str, Any]) -> Key:
    """Inverse of ``key_record``."""
    created_at = _parse_ts(record["created_at"])
    assert created_at is not None
    seconds = record["rotation_period_seconds"]
    return Key(
        id=record["id"],
        folder_id=record["folder_id"],
        created_at=created_at,
        name=record["name"],
        description=record["description"],
        labels=dict(record["labels"]),
        status=KeyStatus[record["status"]],
        primary_version=(
            version_from_record(record["primary_version"]) if record["primary_version"] else None
        ),
        default_algorithm=Algorithm[record["default_algorithm"]],
        rotated_at=_parse_ts(record["rotated_at"]),
        rotation_period=timedelta(seconds=seconds) if seconds is not None else None,
        deletion_protection=record["deletion_protection"],
    )


def key_pair_record(key: AsymmetricKey) -> dict[str, Any]:
    """An asymmetric key as a JSON-native dict (the proto's fields; no public key)."""
    algorithm_field = (
        "signature_algorithm"
        if key.family is KeyFamily.ASYMMETRIC_SIGNATURE
        else "encryption_algorithm"
    )
    return {
        "id": key.id,
        "folder_id": key.folder_id,
        "created_at": _ts(key.created_at),
        "name": key.name,
        "description": key.description,
        "labels": dict(key.labels),
        "status": key.status.name,
        algorithm_field: key.algorithm.name,
        "deletion_protection": key.deletion_protection,
    }


def key_pair_from_record(record: dict[str, Any]) -> AsymmetricKey:
    """Inverse of ``key_pair_record`` (the public key is not kept in records: b"")."""
    created_at = _parse_ts(record["created_at"])
    assert created_at is not None
    algorithm: AsymmetricAlgorithm
    if "signature_algorithm" in record:
        family = KeyFamily.ASYMMETRIC_SIGNATURE
        algorithm = SignatureAlgorithm[record["signature_algorithm"]]
    else:
        family = KeyFamily.ASYMMETRIC_ENCRYPTION
        algorithm = EncryptionAlgorithm[record["encryption_algorithm"]]
    return AsymmetricKey(
        id=record["id"],
        family=family,
        folder_id=record["folder_id"],
        created_at=created_at,
        name=record["name"],
        description=record["description"],
        labels=dict(record["labels"]),
        status=AsymmetricKeyStatus[record["status"]],
        algorithm=algorithm,
        deletion_protection=record["deletion_protection"],
        public_key_der=b"",
    )
