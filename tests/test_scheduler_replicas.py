"""Two service processes run the scheduler on one database at the same time: every due
rotation happens exactly once, every due destruction exactly once (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
from anyio.from_thread import BlockingPortal

from kms_hsm.config import Settings
from kms_hsm.domain.model import Algorithm
from kms_hsm.service.keys import KeySpec
from kms_hsm.service.runtime import Runtime, prepare
from tests.conftest import REPO, SteppingClock


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'shared.db'}"


def _run_two_schedulers(token_dir: Path, url: str, tmp_path: Path) -> list[dict]:
    go = tmp_path / "go"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.scheduler_worker",
                str(token_dir),
                url,
                str(go),
                "25",
                "3",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=REPO,
        )
        for _ in range(2)
    ]
    for proc in procs:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read() if proc.stderr else ""
    go.touch()
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_two_processes_rotate_and_destroy_exactly_once(
    backend: str,
    token_dir: Path,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    portal: BlockingPortal,
    wait,
) -> None:
    url = request.getfixturevalue(f"{backend}_url")
    settings = Settings(
        data_dir=token_dir,
        pin_file=token_dir / "user-pin",
        database_url=url,
        scheduler_interval=0,
        # Keys here rotate hourly, below the default floor of a day.
        min_rotation_period=3600,
    )
    prepare(settings)
    clock = SteppingClock()
    runtime = Runtime.start(settings, clock)
    portal.call(runtime.open)
    try:
        keys = []
        for i in range(20):
            algorithm = Algorithm.AES_256_HSM if i % 2 else Algorithm.AES_128
            spec = KeySpec("b1gsched", f"k{i}", "", {}, algorithm, timedelta(hours=1), False)
            keys.append(wait(runtime.keys.create(spec, "test")).metadata["value"]["key_id"])
        # One extra version per key, scheduled to be destroyed in 1 day (due for the workers).
        doomed = []
        not_rotating = KeySpec("b1gsched", "d", "", {}, Algorithm.AES_256_HSM, None, False)
        for _ in range(6):
            key_id = wait(runtime.keys.create(not_rotating, "test")).metadata["value"]["key_id"]
            first = runtime.keys.get(key_id).primary_version
            assert first is not None
            wait(runtime.keys.rotate(key_id, "test"))
            runtime.keys.schedule_version_destruction(key_id, first.id, timedelta(days=1), "t")
            doomed.append(first.id)

        results = _run_two_schedulers(token_dir, url, tmp_path)

        rotated = Counter(k for r in results for k in r["rotated"])
        assert rotated == Counter(dict.fromkeys(keys, 1))
        destroyed = Counter(v for r in results for v in r["destroyed"])
        assert destroyed == Counter(dict.fromkeys(doomed, 1))
        for key_id in keys:
            versions = runtime.keys.list_versions(key_id, 0, "").items
            assert len(versions) == 2
            assert sum(v.primary for v in versions) == 1
            assert runtime.keys.get(key_id).primary_version.id == versions[1].id
    finally:
        runtime.close()
