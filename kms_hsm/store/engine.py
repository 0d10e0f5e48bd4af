"""Engines and schema migration; SQLite gets WAL and a busy timeout, nothing at import."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, make_url, text
from sqlalchemy.exc import ArgumentError, DataError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from kms_hsm.errors import BackendUnavailable, InvalidArgument

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


_IMMEDIATE = "kms_hsm_immediate"
# PostgreSQL advisory lock id for schema changes and first-start bootstrap ("kmshsm").
_MIGRATION_LOCK = 0x6B6D7368736D


def make_engine(url: str, *, connect_timeout: int | None = None) -> Engine:
    """An engine for ``url``; SQLite files get WAL, foreign keys and a 30 s busy timeout.

    SQLite transactions are begun by us, not by the driver, so that write transactions can
    take the write lock up front (``BEGIN IMMEDIATE``): a deferred transaction that reads
    and then writes fails at once with "database is locked" when another process wrote in
    between, which no busy timeout helps with.
    """
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(connection: Connection) -> None:
            immediate = connection.get_execution_options().get(_IMMEDIATE, False)
            connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

        return engine
    # A command-line tool asks for a bound: libpq would otherwise wait for the OS (minutes).
    extra: dict[str, Any] = {}
    if connect_timeout is not None and url.startswith("postgresql"):
        extra["connect_args"] = {"connect_timeout": connect_timeout}
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20, **extra)


def redacted_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for messages and ``kms-hsm status``)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "(an unparsable database URL)"


def sqlite_file(url: str) -> Path | None:
    """The database file of a SQLite URL; None for other databases and in-memory SQLite."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return None
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


@dataclass(frozen=True, slots=True)
class SchemaState:
    """Which migration a database is at, against the newest this version knows."""

    revision: str | None  # None: no kms-hsm schema (no alembic_version row)
    head: str
    known: bool  # the revision is one of this version's migrations

    @property
    def current(self) -> bool:
        """True when the schema is exactly what this version expects."""
        return self.revision == self.head


def _scripts() -> Any:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return ScriptDirectory.from_config(config)


def schema_state(engine: Engine) -> SchemaState:
    """Read the schema revision without changing anything (SQLAlchemy errors propagate)."""
    from alembic.runtime.migration import MigrationContext

    scripts = _scripts()
    with engine.connect() as connection:
        revision = MigrationContext.configure(connection).get_current_revision()
    known = revision in {script.revision for script in scripts.walk_revisions()}
    return SchemaState(revision, str(scripts.get_current_head()), known)


@contextmanager
def _unavailable_on_outage() -> Iterator[None]:
    """A database that cannot be reached (or is locked too long) is a 503, not a 500."""
    try:
        yield
    except DataError as exc:
        raise InvalidArgument(
            "a value in the request cannot be stored", log_detail=str(exc.orig)
        ) from None
    except (OperationalError, InterfaceError) as exc:
        raise BackendUnavailable(
            "the metadata database is temporarily unavailable, retry later",
            log_detail=f"{type(exc).__name__}: {exc.orig if hasattr(exc, 'orig') else exc}",
        ) from None


class Database:
    """Read sessions and write transactions over one engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._read = sessionmaker(engine, expire_on_commit=False)
        self._write = sessionmaker(
            engine.execution_options(**{_IMMEDIATE: True}), expire_on_commit=False
        )

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A session for reads; nothing it does is committed."""
        with _unavailable_on_outage(), self._read() as session:
            yield session

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A transaction that holds the write lock on SQLite; commits on success."""
        with _unavailable_on_outage(), self._write.begin() as session:
            yield session

    @property
    def is_sqlite(self) -> bool:
        """True for SQLite (no row locks; the write lock serialises writers)."""
        return self.engine.dialect.name == "sqlite"


def upgrade_schema(engine: Engine) -> None:
    """Run every Alembic migration up to head on ``engine``."""
    from alembic import command
    from alembic.config import Config

    logging.getLogger("alembic").setLevel(logging.WARNING)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # Replicas may start at once: one migrates, the others wait and find nothing to do.
    with engine.execution_options(**{_IMMEDIATE: True}).begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})")
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def serialize_with_migrations(session: Session) -> None:
    """Inside a write transaction: wait for (and exclude) a concurrent schema migration."""
    if session.bind is not None and session.bind.dialect.name == "postgresql":
        session.execute(text(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})"))


def read_schema_state(url: str, *, connect_timeout: int | None = None) -> SchemaState:
    """``schema_state`` through a connection of its own that writes nothing.

    Not ``make_engine``'s: its SQLite set-up switches the file to WAL, which writes even
    to a file that is no kms-hsm database at all (SQLAlchemy errors propagate).
    """
    extra: dict[str, Any] = {}
    if connect_timeout is not None and url.startswith("postgresql"):
        extra["connect_args"] = {"connect_timeout": connect_timeout}
    engine = create_engine(url, poolclass=NullPool, **extra)
    try:
        return schema_state(engine)
    finally:
        engine.dispose()
