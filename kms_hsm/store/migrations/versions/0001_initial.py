"""Initial schema: keys, versions, operations, root keys, principals, tokens.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from kms_hsm.store.tables import UtcDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "keys",
        sa.Column("id", sa.String(50), primary_key=True),
        sa.Column("folder_id", sa.String(50), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("description", sa.String(1024), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("default_algorithm", sa.Integer(), nullable=False),
        sa.Column("rotation_period_seconds", sa.Integer(), nullable=True),
        sa.Column("deletion_protection", sa.Boolean(), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("rotated_at", UtcDateTime(), nullable=True),
        sa.Column("primary_version_id", sa.String(50), nullable=True),
        sa.Column("deleted_at", UtcDateTime(), nullable=True),
        sa.Column("revision", sa.Integer(), nullable=False),
    )
    op.create_index("ix_keys_folder_id", "keys", ["folder_id"])
    op.create_table(
        "key_versions",
        sa.Column("id", sa.String(50), primary_key=True),
        sa.Column("key_id", sa.String(50), sa.ForeignKey("keys.id"), nullable=False),
        sa.Column("algorithm", sa.Integer(), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("destroy_at", UtcDateTime(), nullable=True),
        sa.Column("hosted_by_hsm", sa.Boolean(), nullable=False),
        sa.Column("wrapped_material", sa.LargeBinary(), nullable=True),
        sa.Column("root_key_id", sa.String(50), nullable=True),
    )
    op.create_index("ix_key_versions_key_id", "key_versions", ["key_id"])
    op.create_table(
        "operations",
        sa.Column("id", sa.String(50), primary_key=True),
        sa.Column("key_id", sa.String(50), nullable=True),
        sa.Column("description", sa.String(256), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("created_by", sa.String(100), nullable=False),
        sa.Column("modified_at", UtcDateTime(), nullable=False),
        sa.Column("done", sa.Boolean(), nullable=False),
        sa.Column("metadata_json", sa.JSON(), nullable=False),
        sa.Column("response_json", sa.JSON(), nullable=True),
        sa.Column("error_json", sa.JSON(), nullable=True),
    )
    op.create_index("ix_operations_key_created", "operations", ["key_id", "created_at", "id"])
    op.create_table(
        "root_keys",
        sa.Column("name", sa.String(20), primary_key=True),
        sa.Column("key_id", sa.String(50), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
    )
    op.create_table(
        "principals",
        sa.Column("id", sa.String(50), primary_key=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("disabled_at", UtcDateTime(), nullable=True),
    )
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.String(50), primary_key=True),
        sa.Column("principal_id", sa.String(50), sa.ForeignKey("principals.id"), nullable=False),
        sa.Column("token_sha256", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("expires_at", UtcDateTime(), nullable=True),
        sa.Column("revoked_at", UtcDateTime(), nullable=True),
    )


def downgrade() -> None:
    for table in ("api_tokens", "principals", "root_keys", "operations", "key_versions", "keys"):
        op.drop_table(table)
