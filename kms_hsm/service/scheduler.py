"""Background lifecycle work: automatic rotation and destruction of due versions.

Every serving process runs one, as a task on its event loop (its token calls are awaits on
the HSM agent, with the call deadline, like any request's); they may overlap freely because
each step is decided under the key lock (rotation) or by a conditional status change
(destruction). It catches up after downtime: everything due is handled on the first pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from kms_hsm.audit.checkpoints import AuditCheckpoints
from kms_hsm.errors import KmsError
from kms_hsm.service.keyring import Keyring
from kms_hsm.service.keys import KeyService

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PassResult:
    """What one pass did."""

    rotated: list[str]
    destroyed: list[str]


class Scheduler:
    """Runs ``run_once`` every ``interval`` seconds as a task of the serving loop."""

    def __init__(
        self,
        keys: KeyService,
        keyring: Keyring,
        interval: float,
        orphan_grace: float = 60.0,
        monotonic: Callable[[], float] = time.monotonic,
        *,
        checkpoints: AuditCheckpoints | None = None,
    ) -> None:
        self._keys = keys
        self._keyring = keyring
        self._interval = interval
        self._orphan_grace = orphan_grace
        self._monotonic = monotonic
        # Objects seen without a row, and when: a create in another process may be about
        # to commit its row, so an object is destroyed only if still orphaned after the grace.
        self._orphans_seen: dict[bytes, float] = {}
        self._task: asyncio.Task[None] | None = None
        self._checkpoints = checkpoints

    async def reconcile_orphans(self) -> list[bytes]:
        """Destroy token objects that stayed without a database row for the grace period."""
        now = self._monotonic()
        current = await self._keyring.orphan_objects()
        self._orphans_seen = {o: self._orphans_seen.get(o, now) for o in current}
        due = {o for o, first in self._orphans_seen.items() if now - first >= self._orphan_grace}
        if not due:
            return []
        # Look again right before destroying: a row may have committed meanwhile.
        due &= await self._keyring.orphan_objects()
        if not due:
            return []
        self._keys.record_orphan_destruction(sorted(due))
        await self._keyring.destroy_objects(due)
        for object_id in sorted(due):
            self._orphans_seen.pop(object_id, None)
            log.warning(
                "reconciled: destroyed HSM object %s that had no database row "
                "(left by an interrupted create or destroy)",
                object_id.decode("ascii", "replace"),
            )
        return sorted(due)

    async def run_once(self) -> PassResult:
        """Rotate every due key and destroy every due version, now."""
        rotated = []
        for key_id in self._keys.due_rotations():
            try:
                if await self._keys.rotate_if_due(key_id) is not None:
                    rotated.append(key_id)
            except KmsError as exc:
                log.warning("scheduled rotation of %s failed: %s", key_id, exc.message)
        destroyed = [v.id for v in await self._keys.destroy_due_versions()]
        try:
            await self.reconcile_orphans()
        except KmsError as exc:
            log.warning("orphan reconciliation skipped: %s", exc.message)
        return PassResult(rotated, destroyed)

    def start(self) -> None:
        """Start the audit checkpoints and the passes (none for interval 0) on the loop."""
        if self._checkpoints is not None:
            self._checkpoints.start()
        if self._interval <= 0 or self._task is not None:
            return
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="kms-scheduler")

    async def stop(self) -> None:
        """Cancel the passes (a pass in progress ends at its next await), checkpoint last."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._checkpoints is not None:
            await self._checkpoints.stop()

    async def _loop(self) -> None:
        while True:
            try:
                await self.run_once()
            except Exception:
                log.exception("scheduler pass failed")
            await asyncio.sleep(self._interval)
