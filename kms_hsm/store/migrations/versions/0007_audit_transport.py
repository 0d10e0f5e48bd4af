"""Audit events name the API they came by (``transport``: "rest", "grpc"; "" otherwise).

Existing rows keep "" and verify unchanged: the v2 canonical form leaves an empty
transport out.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


# recreate="never": the column is added in place (see 0005 for why a copy is avoided).
def upgrade() -> None:
    with op.batch_alter_table("audit_events", recreate="never") as batch:
        batch.add_column(sa.Column("transport", sa.String(16), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("audit_events", recreate="never") as batch:
        batch.drop_column("transport")
