"""A separate service process for the multi-process tests: runs scheduler passes.

Usage: python -m tests.scheduler_worker DATA_DIR DATABASE_URL GO_FILE HOURS_AHEAD PASSES
Prints the ids it rotated and destroyed as JSON.
"""

from __future__ import annotations

import json
import sys
import time
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
    print("ready", flush=True)
    while not Path(go_file).exists():
        time.sleep(0.005)
    rotated: list[str] = []
    destroyed: list[str] = []
    for _ in range(int(passes)):
        result = runtime.scheduler.run_once()
        rotated += result.rotated
        destroyed += result.destroyed
    runtime.close()
    print(json.dumps({"rotated": rotated, "destroyed": destroyed}), flush=True)


if __name__ == "__main__":
    main()
