"""WAL checkpoints beside the writer: a real SQLite file under continuous commits."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from kms_hsm.store.checkpoint import WalCheckpointer


def _writer(path: Path) -> sqlite3.Connection:
    # As the audit connection: WAL, synchronous=NORMAL, SQLite's own checkpoints on.
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("CREATE TABLE IF NOT EXISTS events (n INTEGER, body TEXT)")
    return db


def _commit_for(db: sqlite3.Connection, seconds: float) -> int:
    commits = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        db.execute("BEGIN IMMEDIATE")
        db.executemany("INSERT INTO events VALUES (?, ?)", [(n, "x" * 800) for n in range(25)])
        db.execute("COMMIT")
        commits += 1
        time.sleep(0.0005)  # a loop turn's other work
    return commits


def test_thread_copies_the_log_while_commits_go_on(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    db = _writer(path)
    checkpointer = WalCheckpointer(str(path), interval=0.01)
    checkpointer.start()
    try:
        commits = _commit_for(db, 2.0)
    finally:
        checkpointer.stop()
    stats = checkpointer.stats
    assert stats.runs > 20 and stats.failures == 0
    busy, log_pages, checkpointed = stats.last
    # busy is 1 when the last run met the writer's own automatic checkpoint holding the
    # checkpoint lock (seen on a loaded machine): a PASSIVE checkpoint then copies nothing.
    assert (busy == 0 and 0 < checkpointed <= log_pages) or (
        busy == 1 and checkpointed <= log_pages
    )
    # The log still starts over (SQLite's own checkpoints at 1,000 pages): it stays near
    # 4 MB however much was written.
    wal = path.with_name("audit.db-wal").stat().st_size
    assert wal < 8_000_000 < commits * 25 * 800
    (rows,) = sqlite3.connect(path).execute("SELECT count(*) FROM events").fetchone()
    assert rows == commits * 25


def test_an_idle_database_is_checked_ever_less_often(tmp_path: Path) -> None:
    path = tmp_path / "idle.db"
    _writer(path)
    checkpointer = WalCheckpointer(str(path), interval=0.01, idle_interval=0.2)
    checkpointer.start()
    time.sleep(1.0)
    checkpointer.stop()
    # At a steady 0.01 s it would be ~100 runs; backing off to 0.2 s gives about a dozen.
    assert 3 <= checkpointer.stats.runs <= 20


def test_stop_without_start_and_twice(tmp_path: Path) -> None:
    checkpointer = WalCheckpointer(str(tmp_path / "none.db"))
    checkpointer.stop()
    checkpointer.stop()
