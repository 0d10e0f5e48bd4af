"""The SymmetricKey control plane: create and read keys, read operations."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy.orm import Session, sessionmaker

from kms_hsm.domain import validation
from kms_hsm.domain.ids import KEY_PREFIX, new_id
from kms_hsm.domain.model import Algorithm, Key, KeyStatus, KeyVersion, VersionStatus
from kms_hsm.domain.records import key_record
from kms_hsm.service.keyring import Keyring
from kms_hsm.service.operations import finished_operation
from kms_hsm.store import repository
from kms_hsm.store.repository import StoredOperation
from kms_hsm.store.tables import KeyRow, KeyVersionRow

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    """The default clock."""
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class KeySpec:
    """What Create takes, already decoded from the wire."""

    folder_id: str
    name: str
    description: str
    labels: dict[str, str]
    default_algorithm: Algorithm
    rotation_period: timedelta | None
    deletion_protection: bool


class KeyService:
    """Create and read keys; every mutation returns a finished Operation."""

    def __init__(self, db: sessionmaker[Session], keyring: Keyring, clock: Clock = utc_now) -> None:
        self._db = db
        self._keyring = keyring
        self._clock = clock

    def create(self, spec: KeySpec, created_by: str) -> StoredOperation:
        """Create a key and its first (primary) version; material is made before commit.

        If the database write fails, the new HSM object is destroyed again so that no
        token object outlives a failed create.
        """
        validation.check_id("folderId", spec.folder_id)
        validation.check_key_fields(spec.name, spec.description, spec.labels)
        validation.check_algorithm("defaultAlgorithm", spec.default_algorithm)
        validation.check_rotation_period(spec.rotation_period)
        now = self._clock()
        key_id = new_id(KEY_PREFIX)
        version_id = new_id(KEY_PREFIX)
        material = self._keyring.create_material(key_id, version_id, spec.default_algorithm)
        version = KeyVersion(
            id=version_id,
            key_id=key_id,
            status=VersionStatus.ACTIVE,
            algorithm=spec.default_algorithm,
            created_at=now,
            primary=True,
        )
        key = Key(
            id=key_id,
            folder_id=spec.folder_id,
            created_at=now,
            name=spec.name,
            description=spec.description,
            labels=dict(spec.labels),
            status=KeyStatus.ACTIVE,
            primary_version=version,
            default_algorithm=spec.default_algorithm,
            rotated_at=now,
            rotation_period=spec.rotation_period,
            deletion_protection=spec.deletion_protection,
        )
        operation = finished_operation(
            key_id=key_id,
            description="Create symmetric key",
            created_by=created_by,
            now=now,
            metadata_type="yandex.cloud.kms.v1.CreateSymmetricKeyMetadata",
            metadata={"key_id": key_id, "primary_version_id": version_id},
            response_type="yandex.cloud.kms.v1.SymmetricKey",
            response=key_record(key),
        )
        try:
            with self._db.begin() as session:
                session.add(
                    KeyRow(
                        id=key_id,
                        folder_id=spec.folder_id,
                        name=spec.name,
                        description=spec.description,
                        labels=dict(spec.labels),
                        status=int(KeyStatus.ACTIVE),
                        default_algorithm=int(spec.default_algorithm),
                        rotation_period_seconds=(
                            int(spec.rotation_period.total_seconds())
                            if spec.rotation_period
                            else None
                        ),
                        deletion_protection=spec.deletion_protection,
                        created_at=now,
                        rotated_at=now,
                        primary_version_id=version_id,
                        revision=1,
                    )
                )
                session.flush()
                session.add(
                    KeyVersionRow(
                        id=version_id,
                        key_id=key_id,
                        algorithm=int(spec.default_algorithm),
                        status=int(VersionStatus.ACTIVE),
                        created_at=now,
                        hosted_by_hsm=spec.default_algorithm.hosted_by_hsm,
                        wrapped_material=material.wrapped_material,
                        root_key_id=material.root_key_id,
                    )
                )
                repository.add_operation(session, operation)
        except Exception:
            with contextlib.suppress(Exception):
                self._keyring.discard_material(version)
            raise
        log.info(
            "created key %s (folder %s, %s, version %s)",
            key_id,
            spec.folder_id,
            spec.default_algorithm.name,
            version_id,
        )
        return operation

    def get(self, key_id: str) -> Key:
        """The live key, or ``NotFound``."""
        validation.check_id("keyId", key_id)
        with self._db() as session:
            return repository.get_key(session, key_id)

    def get_operation(self, operation_id: str) -> StoredOperation:
        """A stored operation, or ``NotFound``."""
        validation.check_id("operationId", operation_id)
        with self._db() as session:
            return repository.get_operation(session, operation_id)
