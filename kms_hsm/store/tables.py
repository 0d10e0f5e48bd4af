"""Database tables (SQLAlchemy 2). Alembic migrations in ``migrations/`` must match these.

Nothing secret is stored unwrapped: software key material only as AES-GCM under the HSM
root key, bearer tokens only as SHA-256 hashes.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class UtcDateTime(TypeDecorator[datetime]):
    """Timestamps stored in UTC and always read back timezone-aware (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    """Declarative base of every table."""


class KeyRow(Base):
    """A key of any family; ``deleted_at`` hides it from Get/List at once on Delete.

    ``family`` (``KeyFamily``): 0 symmetric (versions, ``primary_version_id``), 1 asymmetric
    signature, 2 asymmetric encryption (one key pair in the token with ``CKA_ID`` = ``id``,
    ``default_algorithm`` = the family's algorithm, ``public_key`` = its DER
    SubjectPublicKeyInfo, no versions).
    """

    __tablename__ = "keys"

    id: Mapped[str] = mapped_column(String(50), primary_key=True)
    folder_id: Mapped[str] = mapped_column(String(50), index=True)
    name: Mapped[str] = mapped_column(String(100), default="")
    description: Mapped[str] = mapped_column(String(1024), default="")
    labels: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    status: Mapped[int] = mapped_column(Integer)
    default_algorithm: Mapped[int] = mapped_column(Integer)
    # Seconds; NULL means no automatic rotation.
    rotation_period_seconds: Mapped[int | None] = mapped_column(Integer, nullable=True)
    deletion_protection: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    rotated_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    primary_version_id: Mapped[str | None] = mapped_column(String(50), nullable=True)
    deleted_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    family: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    public_key: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)


class KeyVersionRow(Base):
    """One version; HSM versions have no material here, only a token object with CKA_ID=id."""

    __tablename__ = "key_versions"
    __table_args__ = (Index("ix_key_versions_due", "status", "destroy_at"),)

    id: Mapped[str] = mapped_column(String(50), primary_key=True)
    key_id: Mapped[str] = mapped_column(String(50), ForeignKey("keys.id"), index=True)
    algorithm: Mapped[int] = mapped_column(Integer)
    status: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    destroy_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    hosted_by_hsm: Mapped[bool] = mapped_column(Boolean)
    # Software versions: nonce || AES-GCM(root key) of the material; NULL once destroyed.
    wrapped_material: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    root_key_id: Mapped[str | None] = mapped_column(String(50), nullable=True)


class OperationRow(Base):
    """A finished Operation, kept so that GET /operations/{id} can return it later."""

    __tablename__ = "operations"

    id: Mapped[str] = mapped_column(String(50), primary_key=True)
    key_id: Mapped[str | None] = mapped_column(String(50), nullable=True)
    description: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    created_by: Mapped[str] = mapped_column(String(100))
    modified_at: Mapped[datetime] = mapped_column(UtcDateTime())
    done: Mapped[bool] = mapped_column(Boolean, default=True)
    # {"type": <message name>, "value": {snake_case fields}}; rendered by the API layer.
    metadata_json: Mapped[dict[str, Any]] = mapped_column(JSON)
    response_json: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    error_json: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)

    __table_args__ = (Index("ix_operations_key_created", "key_id", "created_at", "id"),)


class RootKeyRow(Base):
    """The HSM root key in use; the unique name makes concurrent first starts agree."""

    __tablename__ = "root_keys"

    name: Mapped[str] = mapped_column(String(20), primary_key=True)
    key_id: Mapped[str] = mapped_column(String(50))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())


class ServiceSecretRow(Base):
    """A secret of the service itself (e.g. the page-token MAC key), wrapped by the root key."""

    __tablename__ = "service_secrets"

    name: Mapped[str] = mapped_column(String(50), primary_key=True)
    # nonce || AES-GCM(root key, secret), like software key material.
    wrapped: Mapped[bytes] = mapped_column(LargeBinary)
    root_key_id: Mapped[str] = mapped_column(String(50))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())


class PrincipalRow(Base):
    """A service account or user that holds bearer tokens."""

    __tablename__ = "principals"

    id: Mapped[str] = mapped_column(String(50), primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    disabled_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)


class TokenRow(Base):
    """A bearer token, stored only as the SHA-256 of the token string."""

    __tablename__ = "api_tokens"

    id: Mapped[str] = mapped_column(String(50), primary_key=True)
    principal_id: Mapped[str] = mapped_column(String(50), ForeignKey("principals.id"))
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)


class AuthorizedKeyRow(Base):
    """A principal's authorized key for JWT exchanges; only the public half is kept."""

    __tablename__ = "authorized_keys"

    id: Mapped[str] = mapped_column(String(50), primary_key=True)
    principal_id: Mapped[str] = mapped_column(String(50), ForeignKey("principals.id"), index=True)
    algorithm: Mapped[str] = mapped_column(String(20))
    public_key: Mapped[str] = mapped_column(String(2000))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)


class AccessBindingRow(Base):
    """Role ``role_id`` granted to a subject on a key, a folder or the whole instance."""

    __tablename__ = "access_bindings"
    __table_args__ = (
        UniqueConstraint(
            "resource_type",
            "resource_id",
            "role_id",
            "subject_type",
            "subject_id",
            name="uq_access_bindings",
        ),
        Index("ix_access_bindings_subject", "subject_type", "subject_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    # "key", "folder" or "instance" (resource_id "*": every folder).
    resource_type: Mapped[str] = mapped_column(String(20))
    resource_id: Mapped[str] = mapped_column(String(64))
    role_id: Mapped[str] = mapped_column(String(64))
    # Yandex Subject: type serviceAccount/userAccount/federatedUser/system and its id.
    subject_type: Mapped[str] = mapped_column(String(100))
    subject_id: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())


class AuditEventRow(Base):
    """One audit event; ``hash`` chains it to the event before it (``prev_hash``).

    ``chain``: 1 for a SHA-256 link, 2 for a MAC under the token-wrapped chain key.
    """

    __tablename__ = "audit_events"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    time: Mapped[datetime] = mapped_column(UtcDateTime(), index=True)
    principal_id: Mapped[str] = mapped_column(String(100))
    method: Mapped[str] = mapped_column(String(100))
    key_id: Mapped[str] = mapped_column(String(64))
    version_id: Mapped[str] = mapped_column(String(64))
    outcome: Mapped[str] = mapped_column(String(40))
    request_id: Mapped[str] = mapped_column(String(100))
    source: Mapped[str] = mapped_column(String(100))
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))
    client_request_id: Mapped[str] = mapped_column(String(200), default="", server_default="")
    chain: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    transport: Mapped[str] = mapped_column(String(16), default="", server_default="")


class AuditHeadRow(Base):
    """The chain head: one row, locked by every append so that appends serialise."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(Integer)
    hash: Mapped[str] = mapped_column(String(64))


class StateVersionRow(Base):
    """One counter bumped by every change that cached state depends on (see store.state)."""

    __tablename__ = "state_version"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    version: Mapped[int] = mapped_column(BigInteger)
