"""Asymmetric keys (issue 17): ``keys.family`` and ``keys.public_key``.

Existing keys are symmetric: the server default 0 gives every existing row that family.
An asymmetric key is a ``keys`` row of family 1 (signature) or 2 (encryption) whose
``public_key`` is the DER SubjectPublicKeyInfo of its pair in the token.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


# recreate="never": the columns are added in place (see 0005 for why a copy is avoided).
def upgrade() -> None:
    with op.batch_alter_table("keys", recreate="never") as batch:
        batch.add_column(sa.Column("family", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("public_key", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("keys", recreate="never") as batch:
        batch.drop_column("public_key")
        batch.drop_column("family")
