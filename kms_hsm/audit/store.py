"""The audit chain kept in the database (``audit_events``, ``audit_head``).

One chained event per request that reaches a key and per change made by the CLI, the
scheduler or the orphan sweep (the chain: ``audit/chain.py``). Appends lock the single
``audit_head`` row, which holds the end of the chain, so every process sharing the
database extends one chain. Every append is v2 (MAC'd): an ``AuditLog`` without its chain
key (``set_chain_key``, unwrapped by the token at start) refuses to append.

Fail closed: ``record`` raises ``BackendUnavailable`` when the event cannot be written,
and the caller must then not answer with the result. Mutations append their event inside
their own transaction (``append``), so the change and its event commit together. The
data plane's events are committed in groups by ``audit/batcher.py``.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from sqlalchemy import Dialect, Table, select
from sqlalchemy import event as sa_event
from sqlalchemy.orm import Session

from kms_hsm.audit.chain import (
    CHAIN_V2,
    GENESIS,
    AuditEvent,
    ChainedEvent,
    ChainHead,
    ChainKey,
    Checkpoint,
    Verification,
    event_mac,
    verify_checkpoints,
    verify_head,
    verify_links,
)
from kms_hsm.errors import BackendUnavailable
from kms_hsm.store.engine import Database
from kms_hsm.store.tables import AuditEventRow, AuditHeadRow

log = logging.getLogger(__name__)


def core_table(model: type[Any]) -> Table:
    """The Core table of an ORM class (typed for mypy)."""
    table: Table = model.__table__
    return table


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
        client_request_id=row.client_request_id,
        transport=row.transport,
    )


# Column order of the insert: seq, time, then AuditEvent's fields after time, then links.
_EVENT_COLUMNS = ("seq", "time", *AuditEvent._fields[1:], "prev_hash", "hash", "chain")


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

    def __init__(
        self, db: Database, stream_path: Path | None = None, chain_key: bytes | None = None
    ) -> None:
        self._db = db
        self._stream_path = stream_path
        self._stream_lock = threading.Lock()
        self._sql: dict[str, _Statements] = {}
        self._key = None if chain_key is None else ChainKey(chain_key)

    def set_chain_key(self, key: bytes) -> None:
        """The v2 chain key, unwrapped by the token (``chain.CHAIN_KEY_NAME``)."""
        self._key = ChainKey(key)

    @property
    def chain_key(self) -> ChainKey | None:
        """The chain key once set (checkpoints are MAC'd with it too)."""
        return self._key

    @property
    def stream_path(self) -> Path | None:
        """The JSON-lines file, if one is configured."""
        return self._stream_path

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
            raise _unwritable(exc) from None
        if self._stream_path is not None:
            sa_event.listen(session, "after_commit", lambda _s: self.stream(chained), once=True)
        return chained

    def append_on(
        self, cursor: Any, dialect: Dialect, events: list[AuditEvent]
    ) -> list[ChainedEvent]:
        """Add ``events`` with a DB-API cursor inside an open write transaction.

        Straight DB-API statements: this runs for every audited request, and SQLAlchemy's
        statement compilation and per-row parameter processing cost more than the insert.
        The links are made here, event by event with ``event_hash``, so that each event's
        ``isoformat()`` serves both its hash and its stored time.
        """
        key = self._key
        if key is None:
            raise LookupError("the audit chain key is not loaded (the token was not reached)")
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
            digest = event_mac(key, prev, seq, event, iso)
            chained.append(ChainedEvent(seq, event, prev, digest, CHAIN_V2))
            rows.append((seq, sql.bind_time(event.time, iso), *event[1:], prev, digest, CHAIN_V2))
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
            raise _unwritable(exc) from None

    def stream(self, chained: list[ChainedEvent]) -> None:
        """Copy committed events to the JSON-lines file, if one is configured."""
        self._append_lines(c.to_json() for c in chained)

    def stream_line(self, line: str) -> None:
        """Append one line (a checkpoint) to the JSON-lines file, if one is configured."""
        self._append_lines((line,))

    def _append_lines(self, lines: Iterable[str]) -> None:
        # One write() on an O_APPEND descriptor: workers share the file, and a buffered
        # file object splits a batch over 8 KiB into several writes, between which
        # another worker's line could land inside one of ours.
        if self._stream_path is None:
            return
        data = "".join(line + "\n" for line in lines).encode()
        with self._stream_lock:
            fd = os.open(self._stream_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
            finally:
                os.close(fd)

    def events(self, since: datetime | None = None) -> Iterator[ChainedEvent]:
        """Committed events in chain order (optionally from ``since``)."""
        with self._db.read() as session:
            stmt = select(AuditEventRow).order_by(AuditEventRow.seq)
            if since is not None:
                stmt = stmt.where(AuditEventRow.time >= since)
            for row in session.scalars(stmt).yield_per(1000):
                yield ChainedEvent(row.seq, _event_of(row), row.prev_hash, row.hash, row.chain)

    def export(self, out: TextIO, since: datetime | None = None) -> int:
        """Write events as JSON lines; returns how many."""
        count = 0
        for chained in self.events(since):
            out.write(chained.to_json() + "\n")
            count += 1
        return count

    def link_at(self, seq: int) -> str | None:
        """The stored link (hash or MAC) of event ``seq``; None when there is no such event."""
        with self._db.read() as session:
            return session.scalar(select(AuditEventRow.hash).where(AuditEventRow.seq == seq))

    def has_mac_events(self) -> bool:
        """True once any event is MAC'd (chain v2): a chain key has been in use."""
        with self._db.read() as session:
            found = session.scalar(
                select(AuditEventRow.seq).where(AuditEventRow.chain == CHAIN_V2).limit(1)
            )
        return found is not None

    def head(self) -> ChainHead:
        """The end of the chain as stored with the last append."""
        with self._db.read() as session:
            row = session.get(AuditHeadRow, 1)
        return ChainHead(0, GENESIS) if row is None else ChainHead(row.seq, row.hash)

    def verify(self, checkpoints: Iterable[tuple[str, Checkpoint]] = ()) -> Verification:
        """Walk the whole chain; the first event whose link or content is broken.

        ``checkpoints``: (where found, checkpoint) pairs that the chain must contain
        (the token's and those of ``--checkpoints`` files): they catch a cut tail and an
        older database restored.
        """
        wanted = list(checkpoints)
        seqs = {c.seq for _, c in wanted}
        links: dict[int, str] = {}

        def recording(chain: Iterator[ChainedEvent]) -> Iterator[ChainedEvent]:
            for chained in chain:
                if chained.seq in seqs:
                    links[chained.seq] = chained.hash
                yield chained

        walked, end = verify_links(recording(self.events()), self._key)
        if not walked.ok:
            return walked
        with self._db.read() as session:
            head = session.get(AuditHeadRow, 1)
        walked = verify_head(walked, end, None if head is None else ChainHead(head.seq, head.hash))
        return verify_checkpoints(walked, links, end, wanted, self._key)


def _unwritable(exc: Exception) -> BackendUnavailable:
    """Fail closed: what a caller gets when its audit event cannot be written."""
    log.error("audit event could not be written: %s", type(exc).__name__)
    return BackendUnavailable(
        "the audit trail cannot be written; the request was not carried out",
        log_detail=str(exc),
    )
