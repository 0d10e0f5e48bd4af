"""Alembic environment: migrations run on the connection handed in by ``upgrade_schema``."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from kms_hsm.store.tables import Base

connection = context.config.attributes.get("connection")
if connection is None:
    url = context.config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("run migrations through kms_hsm.store.engine.upgrade_schema")
    with create_engine(url).begin() as own_connection:
        context.configure(connection=own_connection, target_metadata=Base.metadata)
        with context.begin_transaction():
            context.run_migrations()
else:
    context.configure(connection=connection, target_metadata=Base.metadata)
    with context.begin_transaction():
        context.run_migrations()
