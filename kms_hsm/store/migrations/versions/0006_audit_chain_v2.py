"""Audit chain v2: a MAC'd link per event (``chain``) and the client's own request id.

Existing rows are v1 (SHA-256 links) and keep verifying as such.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


# recreate="never": columns are added in place (see 0005 for why a copy is avoided).
def upgrade() -> None:
    with op.batch_alter_table("audit_events", recreate="never") as batch:
        batch.add_column(
            sa.Column("client_request_id", sa.String(200), nullable=False, server_default="")
        )
        batch.add_column(sa.Column("chain", sa.Integer(), nullable=False, server_default="1"))


def downgrade() -> None:
    with op.batch_alter_table("audit_events", recreate="never") as batch:
        batch.drop_column("chain")
        batch.drop_column("client_request_id")
