"""The audit trail: one hash-chained event per request that reaches a key.

Each event records who, what, which key and version, the outcome, the request id and the
source address; never plaintext, data keys, aadContext contents or tokens. Events are
numbered (``seq``) and chained: ``hash = SHA-256(prev_hash || canonical JSON of the
event)``, with ``prev_hash`` of the first event = 64 zeros. Appends lock the single
``audit_head`` row, so every process sharing the database extends one chain.

Fail closed: ``record`` raises ``BackendUnavailable`` when the event cannot be written,
and the caller must then not answer with the result. Mutations append their event inside
their own transaction (``append``), so the change and its event commit together.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple, TextIO

from sqlalchemy import Dialect, Table, select
from sqlalchemy import event as sa_event
from sqlalchemy.orm import Session

from kms_hsm.errors import BackendUnavailable
from kms_hsm.loops import current_loop
from kms_hsm.store.checkpoint import WalCheckpointer
from kms_hsm.store.engine import Database
from kms_hsm.store.tables import AuditEventRow, AuditHeadRow

log = logging.getLogger(__name__)

GENESIS = "0" * 64


class AuditEvent(NamedTuple):
    """What one request did; every field is safe to store and to show an auditor.

    (A NamedTuple, not a frozen dataclass: one is built per request, and a frozen
    dataclass's ``__init__`` costs several times a tuple's.)
    """

    time: datetime
    principal_id: str
    method: str
    key_id: str
    version_id: str
    outcome: str
    request_id: str
    source: str


class ChainedEvent(NamedTuple):
    """An event with its place in the chain (a NamedTuple: one is built per request)."""

    seq: int
    event: AuditEvent
    prev_hash: str
    hash: str

    def to_json(self) -> str:
        """One JSON line (the export and stream format)."""
        body = {**self.event._asdict(), "time": self.event.time.isoformat()}
        return json.dumps(
            {"seq": self.seq, **body, "prevHash": self.prev_hash, "hash": self.hash},
            sort_keys=True,
        )


@dataclass(frozen=True, slots=True)
class Verification:
    """Result of walking the chain."""

    ok: bool
    events: int
    first_broken_seq: int | None = None
    reason: str = ""


def core_table(model: type[Any]) -> Table:
    """The Core table of an ORM class (typed for mypy)."""
    table: Table = model.__table__
    return table


_quote = json.encoder.encode_basestring_ascii  # what json.dumps uses for str


def sqlite_time(value: datetime, iso: str | None = None) -> str:
    """What SQLAlchemy's ``UtcDateTime`` stores on SQLite: UTC, microseconds, no zone.

    ``iso`` is ``value.isoformat()`` when the caller has it already (the audit append
    needs it for the hash): a UTC time's text is then cut out of it, which costs a
    fifth of converting the datetime again.
    """
    if iso is not None and value.tzinfo is UTC:
        if len(iso) == len("2026-01-01T00:00:00.000000+00:00"):
            return f"{iso[:10]} {iso[11:26]}"
        if len(iso) == len("2026-01-01T00:00:00+00:00"):  # isoformat() drops zero microseconds
            return f"{iso[:10]} {iso[11:19]}.000000"
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


def canonical_event(seq: int, event: AuditEvent, iso: str | None = None) -> str:
    """``json.dumps`` of the event and ``seq`` with sorted keys and no spaces, built directly.

    Byte for byte what ``json.dumps({..}, sort_keys=True, separators=(",", ":"))`` gives
    (a test holds the two together); writing it out skips the generic encoder, which
    showed in the encrypt profile. ``iso``: ``event.time.isoformat()``, if at hand.
    """
    if iso is None:
        iso = event.time.isoformat()
    return (
        f'{{"key_id":{_quote(event.key_id)},"method":{_quote(event.method)},'
        f'"outcome":{_quote(event.outcome)},"principal_id":{_quote(event.principal_id)},'
        f'"request_id":{_quote(event.request_id)},"seq":{seq},'
        f'"source":{_quote(event.source)},"time":{_quote(iso)},'
        f'"version_id":{_quote(event.version_id)}}}'
    )


def event_hash(prev_hash: str, seq: int, event: AuditEvent, iso: str | None = None) -> str:
    """SHA-256 over the previous hash and the canonical JSON of (seq, event)."""
    canonical = canonical_event(seq, event, iso)
    return hashlib.sha256((prev_hash + canonical).encode()).hexdigest()


def _event_of(row: AuditEventRow) -> AuditEvent:
    return AuditEvent(
        time=row.time,
        principal_id=row.principal_id,
        method=row.method,
        key_id=row.key_id,
        version_id=row.version_id,
        outcome=row.outcome,
        request_id=row.request_id,
        source=row.source,
    )


# Column order of the insert: seq, time, then AuditEvent's fields after time, then links.
_EVENT_COLUMNS = ("seq", "time", *AuditEvent._fields[1:], "prev_hash", "hash")


def _unchanged(value: Any) -> Any:
    return value


@dataclass(frozen=True, slots=True)
class _Statements:
    """The append's SQL in the driver's own parameter style."""

    read_head: str
    insert_events: str
    write_head: str
    # (time, time.isoformat()) -> the driver's value
    bind_time: Callable[[datetime, str], Any]

    @classmethod
    def for_dialect(cls, dialect: Dialect) -> _Statements:
        mark = "?" if dialect.paramstyle == "qmark" else "%s"
        # The column type's own conversion, so rows match what the ORM writes and reads;
        # on SQLite the same text, written directly (a test holds the two together).
        time_type = core_table(AuditEventRow).c.time.type
        convert = time_type.dialect_impl(dialect).bind_processor(dialect) or _unchanged

        def bind_time(value: datetime, _iso: str) -> Any:
            return convert(value)

        lock = "" if dialect.name == "sqlite" else " FOR UPDATE"
        # Only constant names and placeholders go into these strings (hence the noqa).
        return cls(
            read_head=f"SELECT seq, hash FROM audit_head WHERE id = 1{lock}",  # noqa: S608
            insert_events=(
                f"INSERT INTO audit_events ({', '.join(_EVENT_COLUMNS)}) "  # noqa: S608
                f"VALUES ({', '.join([mark] * len(_EVENT_COLUMNS))})"
            ),
            write_head=f"UPDATE audit_head SET seq = {mark}, hash = {mark} WHERE id = 1",  # noqa: S608
            bind_time=sqlite_time if dialect.name == "sqlite" else bind_time,
        )


class AuditLog:
    """Appends events to the database chain and, optionally, to a JSON-lines file."""

    def __init__(self, db: Database, stream_path: Path | None = None) -> None:
        self._db = db
        self._stream_path = stream_path
        self._stream_lock = threading.Lock()
        self._sql: dict[str, _Statements] = {}

    def append(self, session: Session, event: AuditEvent) -> ChainedEvent:
        """Add ``event`` to the chain inside the caller's write transaction."""
        return self.append_many(session, [event])[0]

    def append_many(self, session: Session, events: list[AuditEvent]) -> list[ChainedEvent]:
        """Add ``events`` in order, inside the caller's write transaction."""
        try:
            connection = session.connection()
            cursor = connection.connection.cursor()
            try:
                chained = self.append_on(cursor, connection.dialect, events)
            finally:
                cursor.close()
        except Exception as exc:
            log.error("audit event could not be written: %s", type(exc).__name__)
            raise BackendUnavailable(
                "the audit trail cannot be written; the request was not carried out",
                log_detail=str(exc),
            ) from None
        if self._stream_path is not None:
            sa_event.listen(session, "after_commit", lambda _s: self.stream(chained), once=True)
        return chained

    def append_on(
        self, cursor: Any, dialect: Dialect, events: list[AuditEvent]
    ) -> list[ChainedEvent]:
        """Add ``events`` with a DB-API cursor inside an open write transaction.

        Straight DB-API statements: this runs for every audited request, and SQLAlchemy's
        statement compilation and per-row parameter processing cost more than the insert.
        """
        sql = self._statements(dialect)
        cursor.execute(sql.read_head)
        head = cursor.fetchone()
        if head is None:
            raise LookupError("audit_head row is missing")
        seq, prev = head
        chained: list[ChainedEvent] = []
        rows = []
        for event in events:
            seq += 1
            # One isoformat() for both the hash and the stored time.
            iso = event.time.isoformat()
            digest = event_hash(prev, seq, event, iso)
            chained.append(ChainedEvent(seq, event, prev, digest))
            rows.append((seq, sql.bind_time(event.time, iso), *event[1:], prev, digest))
            prev = digest
        cursor.executemany(sql.insert_events, rows)
        cursor.execute(sql.write_head, (seq, prev))
        return chained

    def _statements(self, dialect: Dialect) -> _Statements:
        statements = self._sql.get(dialect.name)
        if statements is None:
            statements = self._sql[dialect.name] = _Statements.for_dialect(dialect)
        return statements

    def record(self, event: AuditEvent) -> ChainedEvent:
        """Append ``event`` in its own transaction; ``BackendUnavailable`` if that fails."""
        try:
            with self._db.write() as session:
                return self.append(session, event)
        except BackendUnavailable:
            raise
        except Exception as exc:
            log.error("audit event could not be written: %s", type(exc).__name__)
            raise BackendUnavailable(
                "the audit trail cannot be written; the request was not carried out",
                log_detail=str(exc),
            ) from None

    def stream(self, chained: list[ChainedEvent]) -> None:
        """Copy committed events to the JSON-lines file, if one is configured."""
        if self._stream_path is None:
            return
        with self._stream_lock, self._stream_path.open("a", encoding="utf-8") as f:
            f.writelines(c.to_json() + "\n" for c in chained)

    def events(self, since: datetime | None = None) -> Iterator[ChainedEvent]:
        """Committed events in chain order (optionally from ``since``)."""
        with self._db.read() as session:
            stmt = select(AuditEventRow).order_by(AuditEventRow.seq)
            if since is not None:
                stmt = stmt.where(AuditEventRow.time >= since)
            for row in session.scalars(stmt).yield_per(1000):
                yield ChainedEvent(row.seq, _event_of(row), row.prev_hash, row.hash)

    def export(self, out: TextIO, since: datetime | None = None) -> int:
        """Write events as JSON lines; returns how many."""
        count = 0
        for chained in self.events(since):
            out.write(chained.to_json() + "\n")
            count += 1
        return count

    def verify(self) -> Verification:
        """Walk the whole chain; report the first event whose link or content is broken."""
        expected_prev = GENESIS
        expected_seq = 1
        count = 0
        for chained in self.events():
            count += 1
            if chained.seq != expected_seq:
                return Verification(False, count, expected_seq, f"event {expected_seq} is missing")
            if chained.prev_hash != expected_prev:
                return Verification(False, count, chained.seq, "previous-hash link does not match")
            if event_hash(chained.prev_hash, chained.seq, chained.event) != chained.hash:
                return Verification(False, count, chained.seq, "content does not match its hash")
            expected_prev = chained.hash
            expected_seq += 1
        with self._db.read() as session:
            head = session.get(AuditHeadRow, 1)
        if head is not None and (head.seq != expected_seq - 1 or head.hash != expected_prev):
            return Verification(
                False, count, expected_seq, "events after this one were removed from the end"
            )
        return Verification(True, count)


class AuditBatcher:
    """Group commit for the data plane: events of many requests written in one transaction.

    It runs on the event loop itself, not on a thread: a writer thread would hold the GIL
    while the loop waits at every system call (measured: encrypt throughput fell by half).
    ``record`` queues the event and schedules one flush after the callbacks that are ready
    now, so every request handled in the same loop iteration joins the transaction.
    A request resumes only after its event committed (fail closed: if the transaction
    fails, every request in it gets ``BackendUnavailable``).

    On SQLite the flush never waits for the write lock: several worker processes share
    one database file, and SQLite's busy handler sleeps 1 ms and more per retry, which
    would stall the whole event loop. The flush tries ``BEGIN IMMEDIATE`` without waiting
    and, when another process holds the lock, tries again ``_RETRY_AFTER`` seconds later
    with every event queued meanwhile; after ``_GIVE_UP_AFTER`` seconds the batch fails
    (503), as a database that cannot be written is unavailable. Copying the WAL back into
    the database file is left to a thread (``store/checkpoint.py``), so the checkpoints
    SQLite runs inside these commits stay short.
    """

    _RETRY_AFTER = 0.0002
    _GIVE_UP_AFTER = 5.0

    def __init__(self, audit: AuditLog, db: Database) -> None:
        self._audit = audit
        self._db = db
        self._pending: dict[asyncio.AbstractEventLoop, list[_Pending]] = {}
        # SQLite: one connection per loop, with no busy wait of its own.
        self._connections: dict[asyncio.AbstractEventLoop, Any] = {}
        self._waiting_since: dict[asyncio.AbstractEventLoop, float] = {}
        # SQLite file: this thread copies the WAL back, so the checkpoints that SQLite
        # still runs inside these commits find little left to copy.
        path = db.engine.url.database if db.is_sqlite else None
        self.checkpointer = WalCheckpointer(path) if path and path != ":memory:" else None

    def record(self, event: AuditEvent) -> asyncio.Future[None]:
        """Queue ``event``; await the result to wait until it is committed."""
        # A future rather than a coroutine: one object less per request.
        loop = current_loop()
        done: asyncio.Future[None] = loop.create_future()
        pending = self._pending.get(loop)
        if pending is None:
            pending = self._pending[loop] = []
            if loop not in self._waiting_since:  # else a retry is already scheduled
                loop.call_soon(self._flush, loop)
        pending.append(_Pending(event, loop, done))
        return done

    def close(self) -> None:
        """Close the batcher's own connections (pending events are flushed by their loops)."""
        if self.checkpointer is not None:
            self.checkpointer.stop()
        for connection in self._connections.values():
            with contextlib.suppress(Exception):
                connection.close()
        self._connections.clear()

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        batch = self._pending.get(loop)
        if not batch:
            self._pending.pop(loop, None)
            return
        failure: BaseException | None = None
        try:
            if self._db.is_sqlite:
                if not self._write_sqlite(loop, batch):
                    return  # locked by another process: retried with more events
            else:
                with self._db.write() as session:
                    self._audit.append_many(session, [p.event for p in batch])
        except BackendUnavailable as exc:
            failure = exc
        except Exception as exc:  # a database error: fail closed
            log.error("audit batch could not be written: %s", type(exc).__name__)
            failure = BackendUnavailable(
                "the audit trail cannot be written; the request was not carried out",
                log_detail=str(exc),
            )
        self._pending.pop(loop, None)
        self._waiting_since.pop(loop, None)
        for item in batch:
            _settle(item.done, failure)

    def _write_sqlite(self, loop: asyncio.AbstractEventLoop, batch: list[_Pending]) -> bool:
        """Commit ``batch``; False (and a retry scheduled) when the write lock is taken."""
        connection = self._connections.get(loop)
        if connection is None:
            connection = self._connections[loop] = self._db.engine.raw_connection()
            setup = connection.cursor()
            setup.execute("PRAGMA busy_timeout = 0")
            if self.checkpointer is not None:
                self.checkpointer.start()
            setup.close()
        cursor = connection.cursor()
        try:
            try:
                cursor.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                now = time.monotonic()
                since = self._waiting_since.setdefault(loop, now)
                if now - since > self._GIVE_UP_AFTER:
                    raise
                loop.call_later(self._RETRY_AFTER, self._flush, loop)
                return False
            try:
                chained = self._audit.append_on(
                    cursor, self._db.engine.dialect, [p.event for p in batch]
                )
                cursor.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(Exception):
                    cursor.execute("ROLLBACK")
                raise
        except Exception:
            # Start the next batch on a fresh connection.
            self._connections.pop(loop, None)
            with contextlib.suppress(Exception):
                connection.invalidate()
            raise
        finally:
            with contextlib.suppress(Exception):
                cursor.close()
        self._audit.stream(chained)
        return True


class _Pending(NamedTuple):
    event: AuditEvent
    loop: asyncio.AbstractEventLoop
    done: asyncio.Future[None]


def _settle(done: asyncio.Future[None], failure: BaseException | None) -> None:
    if done.cancelled():
        return
    if failure is None:
        done.set_result(None)
    else:
        done.set_exception(failure)
