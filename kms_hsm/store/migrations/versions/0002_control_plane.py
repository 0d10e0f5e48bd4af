"""Control plane: service secrets, index for due destructions and rotations.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from kms_hsm.store.tables import UtcDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "service_secrets",
        sa.Column("name", sa.String(50), primary_key=True),
        sa.Column("wrapped", sa.LargeBinary(), nullable=False),
        sa.Column("root_key_id", sa.String(50), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
    )
    op.create_index("ix_key_versions_due", "key_versions", ["status", "destroy_at"])


def downgrade() -> None:
    op.drop_index("ix_key_versions_due", "key_versions")
    op.drop_table("service_secrets")
