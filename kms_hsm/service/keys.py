"""The SymmetricKey control plane: keys, versions, their lifecycle and Operations.

Every mutation runs in one write transaction that locks the key row (``FOR UPDATE`` on
PostgreSQL, the database write lock on SQLite), so concurrent replicas serialise per key
and a key always has exactly one primary version.
State changes are effective on commit: the data plane reads them on its next call.

No token call runs inside a write transaction (a hung token would hold the write lock, and
with it every other writer, the audit trail included): new material is made first and
committed after; material of a version that did not commit is destroyed again, or left to
the scheduler's orphan sweep when even that fails.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from kms_hsm.audit.chain import AuditEvent
from kms_hsm.audit.store import AuditLog
from kms_hsm.domain import validation
from kms_hsm.domain.asymmetric import KeyFamily
from kms_hsm.domain.ids import KEY_PREFIX, new_id
from kms_hsm.domain.model import Algorithm, Key, KeyStatus, KeyVersion, VersionStatus
from kms_hsm.domain.records import key_record, version_record
from kms_hsm.errors import (
    Aborted,
    BackendUnavailable,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    KmsError,
    NotFound,
)
from kms_hsm.service.context import CallContext, as_context
from kms_hsm.service.keyring import Keyring, NewMaterial
from kms_hsm.service.operations import finished_operation, persist_with_audit
from kms_hsm.service.paging import PageTokens, check_page_size
from kms_hsm.store import repository
from kms_hsm.store.engine import Database
from kms_hsm.store.repository import Cursor, StoredOperation
from kms_hsm.store.state import bump_state
from kms_hsm.store.tables import KeyRow, KeyVersionRow

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]

KEY_DELETION_GRACE = timedelta(hours=72)
DEFAULT_PENDING_PERIOD = timedelta(days=7)
MIN_PENDING_PERIOD = timedelta(days=1)
MAX_PENDING_PERIOD = timedelta(days=365)
# pageToken length limits of the contract: List 256, ListVersions/ListOperations 100.
MAX_LIST_TOKEN = 256
MAX_SUB_LIST_TOKEN = 100
# A rotation whose key changed algorithm between reading and locking makes material again.
_ROTATE_ATTEMPTS = 3

UPDATABLE_FIELDS = frozenset(
    {
        "name",
        "description",
        "status",
        "labels",
        "default_algorithm",
        "rotation_period",
        "deletion_protection",
    }
)
_KMS = "yandex.cloud.kms.v1."
_METHOD_BY_METADATA = {
    "CreateSymmetricKeyMetadata": "SymmetricKey.Create",
    "UpdateSymmetricKeyMetadata": "SymmetricKey.Update",
    "DeleteSymmetricKeyMetadata": "SymmetricKey.Delete",
    "RotateSymmetricKeyMetadata": "SymmetricKey.Rotate",
    "SetPrimarySymmetricKeyVersionMetadata": "SymmetricKey.SetPrimaryVersion",
    "ScheduleSymmetricKeyVersionDestructionMetadata": "SymmetricKey.ScheduleVersionDestruction",
    "CancelSymmetricKeyVersionDestructionMetadata": "SymmetricKey.CancelVersionDestruction",
}
Caller = str | CallContext
SCHEDULER = "system:scheduler"
"""The principal of what the scheduler and the orphan sweep do on their own."""


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


@dataclass(frozen=True, slots=True)
class KeyUpdate:
    """Update's values; only the fields named in the mask are applied (absent = default)."""

    name: str = ""
    description: str = ""
    status: KeyStatus = KeyStatus.STATUS_UNSPECIFIED
    labels: dict[str, str] | None = None
    default_algorithm: Algorithm = Algorithm.SYMMETRIC_ALGORITHM_UNSPECIFIED
    rotation_period: timedelta | None = None
    deletion_protection: bool = False


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a list and the token of the next one ("" at the end)."""

    items: list[Any]
    next_page_token: str


def _version_row(row: KeyVersionRow, primary_id: str | None) -> KeyVersion:
    return repository.version_from_row(row, primary_id)


class KeyService:
    """Keys and versions; every mutation returns a finished Operation."""

    def __init__(
        self,
        db: Database,
        keyring: Keyring,
        clock: Clock = utc_now,
        audit: AuditLog | None = None,
        *,
        min_rotation_period: timedelta = timedelta(days=1),
    ) -> None:
        self._db = db
        self._keyring = keyring
        self._clock = clock
        self._audit = audit
        self._min_rotation_period = min_rotation_period
        self._page_tokens: PageTokens | None = None

    @property
    def clock(self) -> Clock:
        """The clock this service runs on (tests inject one)."""
        return self._clock

    async def load_secrets(self) -> None:
        """Read (or make) the page-token secret; it is wrapped by the root key in the token."""
        if self._page_tokens is None:
            self._page_tokens = PageTokens(await self._keyring.service_secret("page-tokens"))

    def _tokens(self) -> PageTokens:
        if self._page_tokens is None:
            raise BackendUnavailable(log_detail="page-token secret not loaded yet")
        return self._page_tokens

    # ----------------------------------------------------------------- create / read

    async def create(self, spec: KeySpec, created_by: Caller) -> StoredOperation:
        """Create a key and its first (primary) version; material is made before commit.

        If the database write fails, the new HSM object is destroyed again so that no
        token object outlives a failed create.
        """
        validation.check_id("folderId", spec.folder_id)
        validation.check_key_fields(spec.name, spec.description, spec.labels)
        validation.check_algorithm("defaultAlgorithm", spec.default_algorithm)
        self._check_rotation_period(spec.rotation_period)
        now = self._clock()
        key_id = new_id(KEY_PREFIX)
        version_id = new_id(KEY_PREFIX)
        material = await self._keyring.create_material(key_id, version_id, spec.default_algorithm)
        committing = False
        version = KeyVersion(
            id=version_id,
            key_id=key_id,
            status=VersionStatus.ACTIVE,
            algorithm=spec.default_algorithm,
            created_at=now,
            primary=True,
        )
        try:
            with self._db.write() as session:
                row = KeyRow(
                    id=key_id,
                    folder_id=spec.folder_id,
                    name=spec.name,
                    description=spec.description,
                    labels=dict(spec.labels),
                    status=int(KeyStatus.ACTIVE),
                    default_algorithm=int(spec.default_algorithm),
                    rotation_period_seconds=_seconds(spec.rotation_period),
                    deletion_protection=spec.deletion_protection,
                    created_at=now,
                    rotated_at=now,
                    primary_version_id=version_id,
                )
                session.add(row)
                session.flush()
                session.add(_new_version_row(version, material))
                key = repository.key_from_rows(row, None)
                key = replace(key, primary_version=version)
                operation = self._record(
                    session,
                    key_id,
                    "Create symmetric key",
                    created_by,
                    now,
                    "CreateSymmetricKeyMetadata",
                    {"key_id": key_id, "primary_version_id": version_id},
                    "SymmetricKey",
                    key_record(key),
                )
                committing = True
        except Exception:
            await self._discard_uncommitted(version, committing=committing)
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
        with self._db.read() as session:
            return repository.get_key(session, key_id)

    def get_operation(self, operation_id: str) -> StoredOperation:
        """A stored operation, or ``NotFound``."""
        validation.check_id("operationId", operation_id)
        with self._db.read() as session:
            return repository.get_operation(session, operation_id)

    def list_keys(self, folder_id: str, page_size: int, page_token: str) -> Page:
        """Live keys of a folder, oldest first."""
        validation.check_id("folderId", folder_id)

        def query(session: Session, cursor: Cursor | None, limit: int) -> list[Any]:
            return repository.list_keys(session, folder_id, cursor, limit)

        return self.page(f"keys|{folder_id}", MAX_LIST_TOKEN, page_size, page_token, query)

    def list_versions(self, key_id: str, page_size: int, page_token: str) -> Page:
        """Versions of a live key, oldest first."""
        validation.check_id("keyId", key_id)

        def query(session: Session, cursor: Cursor | None, limit: int) -> list[Any]:
            primary_id = repository.get_key_row(session, key_id).primary_version_id
            rows = repository.list_version_rows(session, key_id, cursor, limit)
            return [_version_row(r, primary_id) for r in rows]

        return self.page(f"versions|{key_id}", MAX_SUB_LIST_TOKEN, page_size, page_token, query)

    def list_operations(self, key_id: str, page_size: int, page_token: str) -> Page:
        """Operations on a live key, oldest first."""
        validation.check_id("keyId", key_id)

        def query(session: Session, cursor: Cursor | None, limit: int) -> list[Any]:
            repository.get_key_row(session, key_id)
            return repository.list_operations(session, key_id, cursor, limit)

        return self.page(f"operations|{key_id}", MAX_SUB_LIST_TOKEN, page_size, page_token, query)

    def page(
        self,
        scope: str,
        max_token: int,
        page_size: int,
        page_token: str,
        query: Callable[[Session, Cursor | None, int], list[Any]],
    ) -> Page:
        """One page of any (created_at, id)-ordered list, with a signed next-page token."""
        size = check_page_size(page_size)
        cursor = self._tokens().decode(scope, page_token, max_token)
        with self._db.read() as session:
            items = query(session, cursor, size + 1)
        if len(items) <= size:
            return Page(items, "")
        last = items[size - 1]
        next_token = self._tokens().encode(scope, Cursor(last.created_at, last.id))
        return Page(items[:size], next_token)

    def _check_rotation_period(self, period: timedelta | None) -> None:
        validation.check_rotation_period(period)
        # Each rotation makes a token object: a short period would fill the token.
        if period is not None and period < self._min_rotation_period:
            floor = int(self._min_rotation_period.total_seconds())
            raise InvalidArgument(
                f"rotationPeriod must be at least {floor}s (this server's minimum)"
            )

    # ----------------------------------------------------------------- mutations

    def update(
        self, key_id: str, mask: frozenset[str], values: KeyUpdate, by: Caller
    ) -> StoredOperation:
        """Apply the fields named in ``mask``; a named field absent from the body resets."""
        validation.check_id("keyId", key_id)
        labels = check_update(
            mask, UPDATABLE_FIELDS, values.name, values.description, values.labels
        )
        if "status" in mask and values.status not in (KeyStatus.ACTIVE, KeyStatus.INACTIVE):
            raise InvalidArgument("status: only ACTIVE or INACTIVE can be set")
        if "default_algorithm" in mask:
            validation.check_algorithm("defaultAlgorithm", values.default_algorithm)
        if "rotation_period" in mask:
            self._check_rotation_period(values.rotation_period)
        now = self._clock()
        with self._db.write() as session:
            row = self._lock_key(session, key_id)
            if "name" in mask:
                row.name = values.name
            if "description" in mask:
                row.description = values.description
            if "status" in mask:
                row.status = int(values.status)
            if "labels" in mask:
                row.labels = dict(labels)
            if "default_algorithm" in mask:
                row.default_algorithm = int(values.default_algorithm)
            if "rotation_period" in mask:
                row.rotation_period_seconds = _seconds(values.rotation_period)
            if "deletion_protection" in mask:
                row.deletion_protection = values.deletion_protection
            return self._record(
                session,
                key_id,
                "Update symmetric key",
                by,
                now,
                "UpdateSymmetricKeyMetadata",
                {"key_id": key_id},
                "SymmetricKey",
                self._key_snapshot(session, row),
            )

    def delete(self, key_id: str, by: Caller) -> StoredOperation:
        """Hide the key at once and schedule all its versions for destruction in 72 h."""
        validation.check_id("keyId", key_id)
        now = self._clock()
        with self._db.write() as session:
            row = self._lock_key(session, key_id)
            if row.deletion_protection:
                raise FailedPrecondition(
                    f"key {key_id} has deletionProtection on; turn it off with Update first"
                )
            snapshot = self._key_snapshot(session, row)
            row.deleted_at = now
            for version in self._versions(session, key_id):
                if version.status != VersionStatus.DESTROYED:
                    version.status = int(VersionStatus.SCHEDULED_FOR_DESTRUCTION)
                    version.destroy_at = now + KEY_DELETION_GRACE
            return self._record(
                session,
                key_id,
                "Delete symmetric key",
                by,
                now,
                "DeleteSymmetricKeyMetadata",
                {"key_id": key_id},
                "SymmetricKey",
                snapshot,
            )

    async def rotate(self, key_id: str, by: Caller) -> StoredOperation:
        """Make a new version with the key's defaultAlgorithm and make it primary."""
        validation.check_id("keyId", key_id)
        operation = await self._rotate(key_id, by, "Rotate symmetric key", due_only=False)
        if operation is None:  # only scheduled rotations may find nothing to do
            raise Internal(log_detail=f"rotation of {key_id} did nothing")
        return operation

    async def _rotate(
        self, key_id: str, by: Caller, description: str, *, due_only: bool
    ) -> StoredOperation | None:
        """Material first (a token call, outside any transaction), then the commit.

        The key is read twice: before the material is made, to learn its algorithm, and
        under the lock, where a concurrent change of algorithm (or, with ``due_only``, a
        rotation by another replica) makes this attempt discard its material.
        """
        for _attempt in range(_ROTATE_ATTEMPTS):
            with self._db.read() as session:
                row = repository.get_key_row(session, key_id)
                algorithm = Algorithm(row.default_algorithm)
                if due_only and not self._rotation_due(row):
                    return None
            version = KeyVersion(
                id=new_id(KEY_PREFIX),
                key_id=key_id,
                status=VersionStatus.ACTIVE,
                algorithm=algorithm,
                created_at=self._clock(),
                primary=True,
            )
            material = await self._keyring.create_material(key_id, version.id, algorithm)
            operation = None
            committing = False
            try:
                with self._db.write() as session:
                    row = self._lock_key(session, key_id)
                    still_due = not due_only or self._rotation_due(row)
                    if still_due and Algorithm(row.default_algorithm) is algorithm:
                        operation = self._commit_version(
                            session, row, version, material, by, description
                        )
                    committing = True
            except Exception:
                await self._discard_uncommitted(version, committing=committing)
                raise
            if operation is not None:
                log.info("rotated key %s: new primary version %s", key_id, version.id)
                return operation
            await self._discard_uncommitted(version)
            if not still_due:
                return None  # another replica rotated it meanwhile
        raise Aborted(f"key {key_id} changed during rotation; retry")

    def _commit_version(
        self,
        session: Session,
        row: KeyRow,
        version: KeyVersion,
        material: NewMaterial,
        by: Caller,
        description: str,
    ) -> StoredOperation:
        now = version.created_at
        session.add(_new_version_row(version, material))
        row.primary_version_id = version.id
        row.rotated_at = now
        session.flush()
        return self._record(
            session,
            row.id,
            description,
            by,
            now,
            "RotateSymmetricKeyMetadata",
            {"key_id": row.id, "new_primary_version_id": version.id},
            "SymmetricKey",
            self._key_snapshot(session, row),
        )

    async def _discard_uncommitted(self, version: KeyVersion, *, committing: bool = False) -> None:
        """Destroy material made for a version that did not commit; the sweep if this fails.

        ``committing``: the failure came from the COMMIT itself, which may have landed (a
        connection lost during it); then the material stays, and the orphan sweep destroys
        it only if no row for it exists after its grace period.
        """
        if committing:
            log.warning(
                "commit of version %s failed; its material is left to the orphan sweep",
                version.id,
            )
            return
        try:
            await self._keyring.discard_material(version)
        except Exception as exc:
            log.warning(
                "material of uncommitted version %s left to the orphan sweep: %s",
                version.id,
                getattr(exc, "log_detail", None) or exc,
            )

    def set_primary_version(self, key_id: str, version_id: str, by: Caller) -> StoredOperation:
        """Make an ACTIVE version of the key primary."""
        validation.check_id("keyId", key_id)
        validation.check_id("versionId", version_id)
        now = self._clock()
        with self._db.write() as session:
            row = self._lock_key(session, key_id)
            version = self._version_of(session, key_id, version_id)
            _require_status(version, VersionStatus.ACTIVE)
            row.primary_version_id = version_id
            return self._record(
                session,
                key_id,
                "Set primary version",
                by,
                now,
                "SetPrimarySymmetricKeyVersionMetadata",
                {"key_id": key_id, "version_id": version_id},
                "SymmetricKey",
                self._key_snapshot(session, row),
            )

    def schedule_version_destruction(
        self, key_id: str, version_id: str, pending_period: timedelta | None, by: Caller
    ) -> StoredOperation:
        """Move a non-primary ACTIVE version to SCHEDULED_FOR_DESTRUCTION."""
        validation.check_id("keyId", key_id)
        validation.check_id("versionId", version_id)
        period = DEFAULT_PENDING_PERIOD if pending_period is None else pending_period
        if not MIN_PENDING_PERIOD <= period <= MAX_PENDING_PERIOD:
            raise InvalidArgument(
                f"pendingPeriod must be between {int(MIN_PENDING_PERIOD.total_seconds())}s "
                f"and {int(MAX_PENDING_PERIOD.total_seconds())}s"
            )
        now = self._clock()
        with self._db.write() as session:
            row = self._lock_key(session, key_id)
            version = self._version_of(session, key_id, version_id)
            if version_id == row.primary_version_id:
                raise FailedPrecondition("the primary version cannot be scheduled for destruction")
            _require_status(version, VersionStatus.ACTIVE)
            version.status = int(VersionStatus.SCHEDULED_FOR_DESTRUCTION)
            version.destroy_at = now + period
            self._keyring.forget(version_id)
            return self._record(
                session,
                key_id,
                "Schedule symmetric key version destruction",
                by,
                now,
                "ScheduleSymmetricKeyVersionDestructionMetadata",
                {"key_id": key_id, "version_id": version_id, "destroy_at": version.destroy_at},
                "SymmetricKeyVersion",
                version_record(_version_row(version, row.primary_version_id)),
            )

    def cancel_version_destruction(
        self, key_id: str, version_id: str, by: Caller
    ) -> StoredOperation:
        """Return a SCHEDULED_FOR_DESTRUCTION version to ACTIVE."""
        validation.check_id("keyId", key_id)
        validation.check_id("versionId", version_id)
        now = self._clock()
        with self._db.write() as session:
            row = self._lock_key(session, key_id)
            version = self._version_of(session, key_id, version_id)
            _require_status(version, VersionStatus.SCHEDULED_FOR_DESTRUCTION)
            version.status = int(VersionStatus.ACTIVE)
            version.destroy_at = None
            return self._record(
                session,
                key_id,
                "Cancel symmetric key version destruction",
                by,
                now,
                "CancelSymmetricKeyVersionDestructionMetadata",
                {"key_id": key_id, "version_id": version_id},
                "SymmetricKeyVersion",
                version_record(_version_row(version, row.primary_version_id)),
            )

    # ----------------------------------------------------------------- scheduler steps

    async def rotate_if_due(self, key_id: str) -> StoredOperation | None:
        """Rotate ``key_id`` when its rotationPeriod has elapsed; None when not (any more) due.

        Checked again under the key lock, so replicas running this at once rotate exactly
        once. After downtime a key that missed several periods rotates once.
        """
        try:
            return await self._rotate(
                key_id, SCHEDULER, "Rotate symmetric key (scheduled)", due_only=True
            )
        except NotFound:
            return None

    def _rotation_due(self, row: KeyRow) -> bool:
        if row.rotation_period_seconds is None:
            return False
        return self._due(row.rotated_at or row.created_at, row.rotation_period_seconds)

    def _due(self, since: datetime, seconds: int, now: datetime | None = None) -> bool:
        # A key stored with a shorter period (before the floor existed, or under a lower
        # KMS_HSM_MIN_ROTATION_PERIOD) rotates at the floor, not on every pass.
        period = max(timedelta(seconds=seconds), self._min_rotation_period)
        try:
            return since + period <= (now or self._clock())
        except OverflowError:
            return False  # a due date past year 9999 is never due

    def due_rotations(self, limit: int = 500) -> list[str]:
        """Ids of live keys whose rotation may be due (checked again under lock)."""
        now = self._clock()
        with self._db.read() as session:
            rows = session.execute(
                select(
                    KeyRow.id, KeyRow.rotated_at, KeyRow.created_at, KeyRow.rotation_period_seconds
                )
                .where(
                    KeyRow.deleted_at.is_(None),
                    KeyRow.family == int(KeyFamily.SYMMETRIC),  # key pairs never rotate
                    KeyRow.rotation_period_seconds.is_not(None),
                )
                .order_by(KeyRow.rotated_at)
            ).all()
        due = []
        for key_id, rotated_at, created_at, seconds in rows:
            if seconds is not None and self._due(rotated_at or created_at, seconds, now):
                due.append(key_id)
        return due[:limit]

    async def destroy_due_versions(self, limit: int = 500) -> list[KeyVersion]:
        """Mark versions whose destroyAt has passed DESTROYED and erase their material.

        The DESTROYED mark commits first (exactly one replica wins each version, by the
        conditional status change under the write lock); the HSM object is destroyed after,
        outside the transaction. A crash or a token failure in between leaves a token
        object that the orphan sweep (``Scheduler.reconcile_orphans``) removes.
        """
        now = self._clock()
        due = (
            KeyVersionRow.status == int(VersionStatus.SCHEDULED_FOR_DESTRUCTION),
            KeyVersionRow.destroy_at <= now,
        )
        # A read first: most passes find nothing, and a write transaction would wait on
        # the loop for SQLite's write lock, held meanwhile by other workers' audit commits.
        with self._db.read() as session:
            if session.scalars(select(KeyVersionRow.id).where(*due).limit(1)).first() is None:
                return []
        with self._db.write() as session:
            stmt = select(KeyVersionRow).where(*due).limit(limit)
            if not self._db.is_sqlite:
                stmt = stmt.with_for_update(skip_locked=True)
            destroyed = []
            for row in session.scalars(stmt):
                row.status = int(VersionStatus.DESTROYED)
                row.wrapped_material = None
                destroyed.append(_version_row(row, None))
            if destroyed:
                bump_state(session)
                # In the transaction that marks them: no version is destroyed unaudited.
                self._system_events(
                    session, "SymmetricKey.DestroyVersion", [(v.key_id, v.id) for v in destroyed]
                )
        for version in destroyed:
            try:
                found = await self._keyring.discard_material(version)
            except KmsError as exc:
                log.warning(
                    "version %s of key %s is DESTROYED; its token object is left to the "
                    "orphan sweep: %s",
                    version.id,
                    version.key_id,
                    exc.log_detail or exc.message,
                )
                continue
            if version.hosted_by_hsm and not found:
                log.warning(
                    "version %s of key %s is DESTROYED but its token object was not found; "
                    "the orphan sweep removes it if it is there",
                    version.id,
                    version.key_id,
                )
                continue
            log.info("destroyed version %s of key %s", version.id, version.key_id)
        return destroyed

    def record_orphan_destruction(self, object_ids: list[bytes]) -> None:
        """Audit the orphan sweep's destruction of token objects, before it happens.

        First, and fail closed: if the events cannot be written, nothing is destroyed.
        The version id is the object's ``CKA_ID`` (the id of the version it was made for).
        """
        if self._audit is None or not object_ids:
            return
        with self._db.write() as session:
            self._system_events(
                session,
                "Token.DestroyOrphanObject",
                [("", o.decode("ascii", "replace")) for o in object_ids],
            )

    def _system_events(self, session: Session, method: str, targets: list[tuple[str, str]]) -> None:
        if self._audit is None:
            return
        now = self._clock()
        self._audit.append_many(
            session,
            [AuditEvent(now, SCHEDULER, method, k, v, "OK", "", "internal") for k, v in targets],
        )

    # ----------------------------------------------------------------- helpers

    def _lock_key(self, session: Session, key_id: str) -> KeyRow:
        row = repository.get_key_row(session, key_id, for_update=not self._db.is_sqlite)
        bump_state(session)
        return row

    @staticmethod
    def _versions(session: Session, key_id: str) -> list[KeyVersionRow]:
        return list(session.scalars(select(KeyVersionRow).where(KeyVersionRow.key_id == key_id)))

    @staticmethod
    def _version_of(session: Session, key_id: str, version_id: str) -> KeyVersionRow:
        version = session.get(KeyVersionRow, version_id)
        if version is None or version.key_id != key_id:
            raise NotFound(f"version {version_id} of key {key_id} not found")
        return version

    @staticmethod
    def _key_snapshot(session: Session, row: KeyRow) -> dict[str, Any]:
        session.flush()
        primary = (
            session.get(KeyVersionRow, row.primary_version_id) if row.primary_version_id else None
        )
        return key_record(repository.key_from_rows(row, primary))

    def _record(
        self,
        session: Session,
        key_id: str,
        description: str,
        by: Caller,
        now: datetime,
        metadata_type: str,
        metadata: dict[str, Any],
        response_type: str,
        response: dict[str, Any],
    ) -> StoredOperation:
        """Persist the Operation and, in the same transaction, its audit event."""
        caller = as_context(by, _METHOD_BY_METADATA[metadata_type])
        version_id = metadata.get("version_id") or metadata.get("new_primary_version_id")
        version_id = version_id or metadata.get("primary_version_id") or ""
        operation = finished_operation(
            key_id=key_id,
            description=description,
            created_by=caller.principal_id,
            now=now,
            metadata_type=_KMS + metadata_type,
            metadata={
                k: v.isoformat() if isinstance(v, datetime) else v for k, v in metadata.items()
            },
            response_type=_KMS + response_type,
            response=response,
        )
        return persist_with_audit(session, operation, self._audit, caller, str(version_id))


def check_update(
    mask: frozenset[str],
    updatable: frozenset[str],
    name: str,
    description: str,
    labels: dict[str, str] | None,
) -> dict[str, str]:
    """The Update rules of every key family: a mask of known paths, and the fields it names
    valid; the labels to set (none given: none)."""
    if not mask:
        raise InvalidArgument("updateMask is required")
    unknown = mask - updatable
    if unknown:
        raise InvalidArgument(f"updateMask: unknown or immutable path(s) {sorted(unknown)}")
    labels = labels or {}
    validation.check_key_fields(
        name if "name" in mask else "",
        description if "description" in mask else "",
        labels if "labels" in mask else {},
    )
    return labels


def _new_version_row(version: KeyVersion, material: NewMaterial) -> KeyVersionRow:
    return KeyVersionRow(
        id=version.id,
        key_id=version.key_id,
        algorithm=int(version.algorithm),
        status=int(version.status),
        created_at=version.created_at,
        hosted_by_hsm=version.algorithm.hosted_by_hsm,
        wrapped_material=material.wrapped_material,
        root_key_id=material.root_key_id,
    )


def _require_status(version: KeyVersionRow, expected: VersionStatus) -> None:
    if version.status != expected:
        raise FailedPrecondition(
            f"version {version.id} is {VersionStatus(version.status).name}, not {expected.name}"
        )


def _seconds(period: timedelta | None) -> int | None:
    return int(period.total_seconds()) if period is not None else None
