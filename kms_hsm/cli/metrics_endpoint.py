"""`serve`'s Prometheus endpoint: the multi-process directory and the scrape server.

The endpoint runs in the `serve` parent, which outlives every worker, and adds up what each
process wrote (``kms_hsm.metrics``). Keys and versions by state are counted in the database
when scraped, not kept in any process.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from kms_hsm import metrics
from kms_hsm.config import Settings
from kms_hsm.domain.asymmetric import KeyFamily
from kms_hsm.domain.model import KeyStatus, VersionStatus
from kms_hsm.errors import InvalidArgument
from kms_hsm.store.tables import KeyRow, KeyVersionRow

log = logging.getLogger(__name__)

_KINDS: dict[int, str] = {
    KeyFamily.SYMMETRIC: "symmetric_key",
    KeyFamily.ASYMMETRIC_SIGNATURE: "asymmetric_signature_key",
    KeyFamily.ASYMMETRIC_ENCRYPTION: "asymmetric_encryption_key",
}


def prepare(settings: Settings) -> None:
    """Before anything builds a metric: a fresh directory for this start, or metrics off.

    Workers inherit the environment this sets; with one worker this process serves too.
    """
    if settings.metrics_port is None:
        metrics.withdraw_directory()
        return
    metrics.prepare_directory(settings.data_dir.resolve() / "metrics")
    if settings.workers == 1:
        metrics.enable()


def start(settings: Settings) -> Callable[[], None] | None:
    """Serve scrapes on the metrics port (None when off); the function that stops it.

    Raises:
        InvalidArgument: the port cannot be bound.
    """
    if settings.metrics_port is None:
        return None
    counts = _StateCounts(settings)
    try:
        return metrics.serve(settings.metrics_host, settings.metrics_port, counts)
    except OSError as exc:
        raise InvalidArgument(
            f"metrics port {settings.metrics_port} on {settings.metrics_host} cannot be bound: "
            f"{exc.strerror or exc} (KMS_HSM_METRICS_PORT / KMS_HSM_METRICS_HOST)"
        ) from None


class _StateCounts:
    """Keys by family and state (deleted keys as DELETED) and versions by state."""

    def __init__(self, settings: Settings) -> None:
        self._url = settings.effective_database_url()
        self._engine: Engine | None = None
        self._lock = threading.Lock()

    def __call__(self) -> Iterator[tuple[str, str, int]]:
        """Rows (kind, state, count), read in one short transaction."""
        from kms_hsm.store.engine import make_engine

        sqlite_file = self._url.removeprefix("sqlite:///")
        if sqlite_file != self._url and not Path(sqlite_file).exists():
            return  # not made yet (the first start): connecting would create it empty
        with self._lock:
            if self._engine is None:
                # Made at the first scrape: the first start creates the database after
                # the endpoint is up.
                self._engine = make_engine(self._url)
            engine = self._engine
        deleted = KeyRow.deleted_at.is_not(None)
        try:
            with engine.connect() as connection:
                keys = connection.execute(
                    select(KeyRow.family, KeyRow.status, deleted, func.count()).group_by(
                        KeyRow.family, KeyRow.status, deleted
                    )
                ).all()
                versions = connection.execute(
                    select(KeyVersionRow.status, func.count()).group_by(KeyVersionRow.status)
                ).all()
        except SQLAlchemyError as exc:
            # The database is down, or not made yet (a scrape during the first start):
            # the other metrics are still worth answering with.
            log.warning("metrics: keys not counted: %s", type(exc).__name__)
            return
        by_state: dict[tuple[str, str], int] = {}
        for family, status, is_deleted, count in keys:
            kind = _KINDS.get(family, "other_key")
            state = "DELETED" if is_deleted else _name(KeyStatus, status)
            by_state[kind, state] = by_state.get((kind, state), 0) + count
        for status, count in versions:
            state = _name(VersionStatus, status)
            by_state["symmetric_key_version", state] = count
        for (kind, state), count in sorted(by_state.items()):
            yield kind, state, count


def _name(enum: type[KeyStatus] | type[VersionStatus], value: int) -> str:
    try:
        return enum(value).name
    except ValueError:
        return "OTHER"
