"""The state version: one counter that every authoritative change bumps.

Keys, versions, access bindings, principals and tokens change rarely; crypto calls read
them constantly. Every transaction that changes one of them bumps ``state_version`` in the
same transaction, and each process checks the counter (one primary-key read on its own
autocommit connection) before trusting what it cached. So caches never outlive a commit,
in this process or any other replica: state changes stay effective on commit.
"""

from __future__ import annotations

import asyncio
import threading
from contextvars import ContextVar, Token
from typing import Any

from sqlalchemy import Engine, update
from sqlalchemy.orm import Session

from kms_hsm.store.tables import StateVersionRow


def bump_state(session: Session) -> None:
    """Inside a write transaction: mark that cached state is now stale everywhere."""
    session.execute(
        update(StateVersionRow)
        .where(StateVersionRow.id == 1)
        .values(version=StateVersionRow.version + 1)
    )


# Set for the duration of one API call by ``StateWatch.pin``: every cache lookup in that
# call uses the version read at its start (one query per request instead of one per
# lookup). Calls outside a request (scheduler, tests) read the version on each lookup.
_pinned: ContextVar[int | None] = ContextVar("kms_hsm_state_version", default=None)


class StateWatch:
    """Reads the state version cheaply: a raw autocommit connection per thread."""

    _QUERY = "SELECT version FROM state_version WHERE id = 1"

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._local = threading.local()
        self._turn_loop: asyncio.AbstractEventLoop | None = None
        self._turn_value: int | None = None

    def _connection(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._engine.raw_connection()
            if self._engine.dialect.name == "postgresql":
                conn.rollback()
                driver: Any = conn.driver_connection
                driver.autocommit = True  # never sit on an old snapshot
            self._local.conn = conn
        return conn

    def pin(self) -> Token[int | None]:
        """Read the version once for the current request; undo with ``unpin``.

        On an event loop, requests that start in the same turn of the loop share one
        read: every one of them arrived before the read was made (their tasks were
        created by an earlier poll), and the shared value is dropped by a callback that
        runs before any task created by a later poll (see ``_turn_version``).
        """
        return _pinned.set(self._turn_version())

    def _turn_version(self) -> int:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop in this thread: nothing to share
            return self._read()
        if self._turn_loop is loop and self._turn_value is not None:
            return self._turn_value
        value = self._read()
        self._turn_loop, self._turn_value = loop, value
        loop.call_soon(self._end_turn)
        return value

    def _end_turn(self) -> None:
        self._turn_value = None

    @staticmethod
    def unpin(token: Token[int | None]) -> None:
        """End the request's pinned version."""
        _pinned.reset(token)

    def current(self) -> int:
        """The version pinned for this request, or the committed version now."""
        pinned = _pinned.get()
        return pinned if pinned is not None else self._read()

    def _read(self) -> int:
        """The committed state version now."""
        conn = self._connection()
        try:
            cursor = conn.cursor()
            cursor.execute(self._QUERY)
            row = cursor.fetchone()
            cursor.close()
        except Exception:
            # A broken connection is replaced on the next call.
            self._local.conn = None
            conn.invalidate()
            raise
        return int(row[0]) if row else 0
