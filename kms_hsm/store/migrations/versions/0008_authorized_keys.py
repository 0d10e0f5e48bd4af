"""Authorized keys: the public halves of principals' keys for IamTokenService JWT exchanges.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from kms_hsm.store.tables import UtcDateTime

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "authorized_keys",
        sa.Column("id", sa.String(50), primary_key=True),
        sa.Column("principal_id", sa.String(50), sa.ForeignKey("principals.id"), nullable=False),
        sa.Column("algorithm", sa.String(20), nullable=False),
        sa.Column("public_key", sa.String(2000), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("revoked_at", UtcDateTime(), nullable=True),
    )
    op.create_index("ix_authorized_keys_principal_id", "authorized_keys", ["principal_id"])


def downgrade() -> None:
    op.drop_index("ix_authorized_keys_principal_id", table_name="authorized_keys")
    op.drop_table("authorized_keys")
