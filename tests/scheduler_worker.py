"""A separate service process for the multi-process tests: runs scheduler passes.

Usage: python -m tests.scheduler_worker DATA_DIR DATABASE_URL GO_FILE HOURS_AHEAD PASSES
Prints the ids it rotated and destroyed as JSON.
"""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from kms_hsm.config import Settings
from kms_hsm.service.runtime import Runtime


def main() -> None:
    data_dir, url, go_file, hours, passes = sys.argv[1:6]
    settings = Settings(
        data_dir=Path(data_dir),
        pin_file=Path(data_dir) / "user-pin",
        database_url=url,
        scheduler_interval=0,
    )
    ahead = timedelta(hours=float(hours))
    runtime = Runtime.start(settings, lambda: datetime.now(UTC) + ahead)
    rotated: list[str] = []
    destroyed: list[str] = []

    async def run() -> None:
        await runtime.open()
        print("ready", flush=True)
        while not Path(go_file).exists():
            await asyncio.sleep(0.005)
        for _ in range(int(passes)):
            result = await runtime.scheduler.run_once()
            rotated.extend(result.rotated)
            destroyed.extend(result.destroyed)
        runtime.agents.close_current()

    asyncio.run(run())
    runtime.close()
    print(json.dumps({"rotated": rotated, "destroyed": destroyed}), flush=True)


if __name__ == "__main__":
    main()
