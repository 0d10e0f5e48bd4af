"""Drop keys.revision: bumped on every key change, never read.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


# recreate="never": SQLite (3.35 and later; Debian 12 has 3.40) drops and adds the column
# in place. Batch's default on SQLite copies the table and drops the old one, which fails
# once key_versions rows point at it: foreign keys are on and cannot be turned off inside
# the migration's transaction (deferring them does not help: the rename that follows does
# not clear the violations the drop counted).
def upgrade() -> None:
    with op.batch_alter_table("keys", recreate="never") as batch:
        batch.drop_column("revision")


def downgrade() -> None:
    with op.batch_alter_table("keys", recreate="never") as batch:
        batch.add_column(sa.Column("revision", sa.Integer(), nullable=False, server_default="1"))
