"""Checkpoints of the audit chain's head: in the token, and in the JSON-lines file.

A checkpoint is (seq, link, time) of the head as committed, MAC'd under the chain key
(``chain.Checkpoint``). Every serving process writes one at most every
``KMS_HSM_AUDIT_CHECKPOINT_INTERVAL`` seconds while the chain grows, and one more when it
stops. It reads the head from the database, so what it writes is the shared chain's head
whichever process appended the last events; several workers and replicas therefore write
checkpoints of the same chain, which only ever agree or move forward.

* The token copy is one private ``CKO_DATA`` object labelled ``checkpoint_label(root key)``.
  A process replaces it only with a higher ``seq`` than the object holds when it looks;
  two processes may race between that read and their write (the token has no
  compare-and-swap), so the object can step back by what the other one saw in that
  moment, never below a head this process had already checkpointed before its read.
  ``audit verify`` reads it with the PIN and fails when the chain lacks its event: a cut
  tail is caught even with ``audit_head`` moved back, and without any file.
* The file copy is a ``{"type":"checkpoint",...}`` line appended to
  ``KMS_HSM_AUDIT_LOG_FILE`` (when configured; each process appends its own, replicas
  each to their own file). ``audit verify --checkpoints FILE`` fails when the database
  lacks any checkpoint's event: an older copy of the whole database restored (with a
  token that was restored too, or on another machine) is caught as long as the file was
  kept elsewhere.

The window is what was appended after the newest checkpoint: at most one interval's worth
of events (plus those a crashed process never checkpointed) can be cut without
``audit verify`` noticing. They cannot be altered: that needs the chain key.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path

from kms_hsm.audit.chain import ChainKey, Checkpoint
from kms_hsm.audit.store import AuditLog
from kms_hsm.crypto.token import Token
from kms_hsm.errors import KmsError

log = logging.getLogger(__name__)

# Longest pause between checkpoint attempts while they fail (seconds).
MAX_BACKOFF = 60.0


def checkpoint_label(root_key_id: str) -> str:
    """The token data object of a deployment's checkpoint (its root key names it)."""
    return f"kms-hsm/{root_key_id}/audit-checkpoint"


def parse_token_checkpoints(values: list[bytes]) -> list[Checkpoint]:
    """The checkpoints held in the token's data objects (unreadable ones are skipped)."""
    found = []
    for value in values:
        with contextlib.suppress(ValueError, UnicodeDecodeError):
            found.append(Checkpoint.parse(json.loads(value)))
    return found


def file_checkpoints(path: Path) -> Iterator[Checkpoint]:
    """The checkpoint lines of a JSON-lines audit file (event lines are skipped).

    Raises ValueError naming the line when a line claiming to be a checkpoint is malformed.
    """
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if '"checkpoint"' not in line:
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError:
                raise ValueError(f"{path}:{number}: not JSON") from None
            if isinstance(data, dict) and data.get("type") == "checkpoint":
                try:
                    yield Checkpoint.parse(data)
                except ValueError:
                    raise ValueError(f"{path}:{number}: malformed checkpoint") from None


def worth_checking(checkpoints: Iterable[Checkpoint], key: ChainKey) -> list[Checkpoint]:
    """Of a file's checkpoints, the ones ``audit verify`` must hold the chain against.

    Every distinct one, not just the newest: after an older database was restored and
    the service ran on past the old head, the newest checkpoints belong to the new fork
    and agree with it; only those written before the restore show it. A forged one
    (wrong MAC) comes alone, to be named. Memory grows with the distinct checkpoints
    (one per interval while the chain grows), not with the file's events.
    """
    distinct: dict[tuple[int, str], Checkpoint] = {}
    for checkpoint in checkpoints:
        if not checkpoint.valid(key):
            return [checkpoint]
        distinct.setdefault((checkpoint.seq, checkpoint.hash), checkpoint)
    return sorted(distinct.values(), key=lambda c: c.seq)


class AuditCheckpoints:
    """Writes checkpoints of the head to the token and the file, at most every interval."""

    def __init__(
        self,
        audit: AuditLog,
        token: Token,
        interval: float,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        stop_timeout: float | None = None,
    ) -> None:
        self._audit = audit
        self._token = token
        self._interval = interval
        self._clock = clock
        self._stop_timeout = stop_timeout
        self._label: str | None = None
        self._written = 0  # the highest seq this process checkpointed
        self._last: Checkpoint | None = None
        self._refused = False  # the chain lost a checkpointed event: never sign it
        self._failures = 0  # consecutive failed writes (back-off)
        self._task: asyncio.Task[None] | None = None

    def set_root_key(self, root_key_id: str) -> None:
        """Name the token object after the deployment's root key (known once opened)."""
        self._label = checkpoint_label(root_key_id)

    async def in_token(self) -> list[Checkpoint]:
        """The checkpoints the token holds for this deployment (none before ``set_root_key``)."""
        if self._label is None:
            return []
        return parse_token_checkpoints(await self._token.read_data(self._label))

    async def write_once(self) -> Checkpoint | None:
        """Checkpoint the head now if it moved since this process last did; None if not.

        First the chain must still hold the newest checkpoint the token has and the last
        one this process wrote. If it does not, events were cut off the end or an older
        database was restored: signing the head now would bless the altered chain (and
        replace the token's evidence), so nothing is written, ever again in this process,
        and the log says why at CRITICAL.
        """
        key = self._audit.chain_key
        if key is None or self._label is None or self._refused:
            return None
        head = await asyncio.to_thread(self._audit.head)
        if head.seq <= self._written:
            return None
        stored = [c for c in await self.in_token() if c.valid(key)]
        newest = max(stored, key=lambda c: c.seq, default=None)
        for earlier in (newest, self._last):
            if earlier is None or earlier.seq == 0:
                continue
            if await asyncio.to_thread(self._audit.link_at, earlier.seq) != earlier.hash:
                self._refused = True
                log.critical(
                    "audit chain no longer holds event %d of checkpoint %s: events were cut "
                    "off the end or an older database was restored; no checkpoint will be "
                    "written (run kms-hsm audit verify)",
                    earlier.seq,
                    earlier.time,
                )
                return None
        checkpoint = Checkpoint.make(key, head, self._clock())
        if newest is None or newest.seq < head.seq:
            await self._token.write_data(self._label, checkpoint.to_json().encode())
        self._audit.stream_line(checkpoint.to_json())
        self._written = head.seq
        self._last = checkpoint
        return checkpoint

    def start(self) -> None:
        """Write checkpoints every interval on the running loop."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._loop(), name="kms-audit-checkpoints"
            )

    async def stop(self) -> None:
        """Stop the task, then write a last checkpoint (a clean stop leaves no window).

        The last checkpoint may take ``stop_timeout`` at most: a hung token or database
        must not hang shutdown.
        """
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        try:
            await asyncio.wait_for(self._write_logged(), self._stop_timeout)
        except TimeoutError:
            log.warning("audit checkpoint not written at stop: no answer in time")

    async def _write_logged(self) -> bool:
        try:
            await self.write_once()
        except KmsError as exc:
            detail = exc.log_detail or exc.message
        except Exception as exc:  # a database error: try again later
            detail = type(exc).__name__
        else:
            if self._failures:
                log.info("audit checkpoints written again after %d failures", self._failures)
            self._failures = 0
            return True
        self._failures += 1
        if self._failures == 1:  # once a streak: the loop retries every interval or slower
            log.warning("audit checkpoint not written (retrying with back-off): %s", detail)
        return False

    async def _loop(self) -> None:
        while True:
            await self._write_logged()
            # Back off while writes fail: a token whose writes hang gets its agent killed
            # at every call's deadline, failing the data plane's calls in flight with it.
            await asyncio.sleep(min(self._interval * 2 ** min(self._failures, 16), MAX_BACKOFF))
