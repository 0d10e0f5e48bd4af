"""Reads and writes of keys, versions, operations and tokens; rows in, domain values out."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from kms_hsm.domain.asymmetric import (
    AsymmetricAlgorithm,
    AsymmetricKey,
    AsymmetricKeyStatus,
    EncryptionAlgorithm,
    KeyFamily,
    SignatureAlgorithm,
)
from kms_hsm.domain.model import Algorithm, Key, KeyStatus, KeyVersion, VersionStatus
from kms_hsm.errors import NotFound
from kms_hsm.store.tables import (
    KeyRow,
    KeyVersionRow,
    OperationRow,
    RootKeyRow,
    ServiceSecretRow,
    TokenRow,
)


@dataclass(frozen=True, slots=True)
class StoredVersion:
    """A version plus where its material is: the token (HSM) or a wrapped blob (software)."""

    version: KeyVersion
    wrapped_material: bytes | None
    root_key_id: str | None


@dataclass(frozen=True, slots=True)
class StoredOperation:
    """An Operation as persisted; ``metadata``/``response`` are {"type", "value"} dicts."""

    id: str
    key_id: str | None
    description: str
    created_at: datetime
    created_by: str
    modified_at: datetime
    done: bool
    metadata: dict[str, Any]
    response: dict[str, Any] | None
    error: dict[str, Any] | None


def version_from_row(row: KeyVersionRow, primary_version_id: str | None) -> KeyVersion:
    """Domain version from its row."""
    return KeyVersion(
        id=row.id,
        key_id=row.key_id,
        status=VersionStatus(row.status),
        algorithm=Algorithm(row.algorithm),
        created_at=row.created_at,
        primary=row.id == primary_version_id,
        destroy_at=row.destroy_at,
    )


def key_from_rows(row: KeyRow, primary: KeyVersionRow | None) -> Key:
    """Domain key from its row and its primary version's row."""
    return Key(
        id=row.id,
        folder_id=row.folder_id,
        created_at=row.created_at,
        name=row.name,
        description=row.description,
        labels=dict(row.labels or {}),
        status=KeyStatus(row.status),
        primary_version=version_from_row(primary, row.primary_version_id) if primary else None,
        default_algorithm=Algorithm(row.default_algorithm),
        rotated_at=row.rotated_at,
        rotation_period=(
            timedelta(seconds=row.rotation_period_seconds)
            if row.rotation_period_seconds is not None
            else None
        ),
        deletion_protection=row.deletion_protection,
    )


def get_key_row(
    session: Session,
    key_id: str,
    *,
    for_update: bool = False,
    family: KeyFamily | None = KeyFamily.SYMMETRIC,
) -> KeyRow:
    """The live (not deleted) key row of ``family`` (None: any family), or ``NotFound``.

    Symmetric by default: a key of another family is NotFound on the symmetric paths, with
    the same message as a key that does not exist.
    """
    stmt = select(KeyRow).where(KeyRow.id == key_id, KeyRow.deleted_at.is_(None))
    if family is not None:
        stmt = stmt.where(KeyRow.family == int(family))
    if for_update:
        stmt = stmt.with_for_update()
    row = session.scalars(stmt).first()
    if row is None:
        raise NotFound(f"key {key_id} not found")
    return row


def get_key(session: Session, key_id: str) -> Key:
    """The live key with its primary version, or ``NotFound``."""
    row = get_key_row(session, key_id)
    primary = session.get(KeyVersionRow, row.primary_version_id) if row.primary_version_id else None
    return key_from_rows(row, primary)


def get_key_and_version(
    session: Session, key_id: str, version_id: str | None
) -> tuple[Key, StoredVersion]:
    """A live key and one of its versions (the primary when ``version_id`` is empty).

    Raises:
        NotFound: no such live key, or the version does not belong to it.
    """
    row = get_key_row(session, key_id)
    wanted = version_id or row.primary_version_id
    version_row = session.get(KeyVersionRow, wanted) if wanted else None
    if version_row is None or version_row.key_id != key_id:
        raise NotFound(f"version {version_id} of key {key_id} not found")
    primary = (
        version_row
        if version_row.id == row.primary_version_id
        else session.get(KeyVersionRow, row.primary_version_id)
    )
    key = key_from_rows(row, primary)
    stored = StoredVersion(
        version_from_row(version_row, row.primary_version_id),
        version_row.wrapped_material,
        version_row.root_key_id,
    )
    return key, stored


def add_operation(session: Session, op: StoredOperation) -> None:
    """Persist a finished operation."""
    session.add(
        OperationRow(
            id=op.id,
            key_id=op.key_id,
            description=op.description,
            created_at=op.created_at,
            created_by=op.created_by,
            modified_at=op.modified_at,
            done=op.done,
            metadata_json=op.metadata,
            response_json=op.response,
            error_json=op.error,
        )
    )


def get_operation(session: Session, operation_id: str) -> StoredOperation:
    """A stored operation, or ``NotFound``."""
    row = session.get(OperationRow, operation_id)
    if row is None:
        raise NotFound(f"operation {operation_id} not found")
    return operation_from_row(row)


def operation_from_row(row: OperationRow) -> StoredOperation:
    """Domain-side operation from its row."""
    return StoredOperation(
        id=row.id,
        key_id=row.key_id,
        description=row.description,
        created_at=row.created_at,
        created_by=row.created_by,
        modified_at=row.modified_at,
        done=row.done,
        metadata=row.metadata_json,
        response=row.response_json,
        error=row.error_json,
    )


def get_root_key_id(session: Session) -> str | None:
    """The id of the root key in use, if one was chosen."""
    row = session.get(RootKeyRow, "root")
    return row.key_id if row else None


def find_token(session: Session, token_sha256: str) -> TokenRow | None:
    """The token row with this hash, revoked or not."""
    return session.scalars(select(TokenRow).where(TokenRow.token_sha256 == token_sha256)).first()


@dataclass(frozen=True, slots=True)
class Cursor:
    """Keyset position: the (created_at, id) of the last row of the previous page."""

    created_at: datetime
    id: str


def _after(stmt: Any, table: Any, cursor: Cursor | None, limit: int) -> Any:
    if cursor is not None:
        stmt = stmt.where(
            or_(
                table.created_at > cursor.created_at,
                and_(table.created_at == cursor.created_at, table.id > cursor.id),
            )
        )
    return stmt.order_by(table.created_at, table.id).limit(limit)


def list_keys(session: Session, folder_id: str, cursor: Cursor | None, limit: int) -> list[Key]:
    """Live keys of a folder in (created_at, id) order, after ``cursor``."""
    rows = list_key_rows(session, folder_id, KeyFamily.SYMMETRIC, cursor, limit)
    primary_ids = [r.primary_version_id for r in rows if r.primary_version_id]
    versions = {
        v.id: v
        for v in session.scalars(select(KeyVersionRow).where(KeyVersionRow.id.in_(primary_ids)))
    }
    return [key_from_rows(r, versions.get(r.primary_version_id or "")) for r in rows]


def list_key_rows(
    session: Session, folder_id: str, family: KeyFamily, cursor: Cursor | None, limit: int
) -> list[KeyRow]:
    """Live key rows of one family in a folder, in (created_at, id) order, after ``cursor``."""
    stmt = select(KeyRow).where(
        KeyRow.folder_id == folder_id,
        KeyRow.family == int(family),
        KeyRow.deleted_at.is_(None),
    )
    return list(session.scalars(_after(stmt, KeyRow, cursor, limit)))


def key_pair_from_row(row: KeyRow) -> AsymmetricKey:
    """Domain asymmetric key from its row (family 1 or 2)."""
    family = KeyFamily(row.family)
    algorithm: AsymmetricAlgorithm
    if family is KeyFamily.ASYMMETRIC_SIGNATURE:
        algorithm = SignatureAlgorithm(row.default_algorithm)
    elif family is KeyFamily.ASYMMETRIC_ENCRYPTION:
        algorithm = EncryptionAlgorithm(row.default_algorithm)
    else:
        raise ValueError(f"key {row.id} is symmetric")
    return AsymmetricKey(
        id=row.id,
        family=family,
        folder_id=row.folder_id,
        created_at=row.created_at,
        name=row.name,
        description=row.description,
        labels=dict(row.labels or {}),
        status=AsymmetricKeyStatus(row.status),
        algorithm=algorithm,
        deletion_protection=row.deletion_protection,
        public_key_der=row.public_key or b"",
    )


def live_key_pair_ids(session: Session) -> set[str]:
    """Ids of every live asymmetric key (their pairs are token objects with these ids)."""
    stmt = select(KeyRow.id).where(
        KeyRow.family != int(KeyFamily.SYMMETRIC), KeyRow.deleted_at.is_(None)
    )
    return set(session.scalars(stmt))


def list_version_rows(
    session: Session, key_id: str, cursor: Cursor | None, limit: int
) -> list[KeyVersionRow]:
    """Versions of a key in (created_at, id) order, after ``cursor``."""
    stmt = select(KeyVersionRow).where(KeyVersionRow.key_id == key_id)
    return list(session.scalars(_after(stmt, KeyVersionRow, cursor, limit)))


def list_operations(
    session: Session, key_id: str, cursor: Cursor | None, limit: int
) -> list[StoredOperation]:
    """Operations on a key in (created_at, id) order, after ``cursor``."""
    stmt = select(OperationRow).where(OperationRow.key_id == key_id)
    return [
        operation_from_row(r) for r in session.scalars(_after(stmt, OperationRow, cursor, limit))
    ]


def get_service_secret(session: Session, name: str) -> ServiceSecretRow | None:
    """A wrapped service secret by name."""
    return session.get(ServiceSecretRow, name)
