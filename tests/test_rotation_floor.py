"""rotationPeriod has a floor, KMS_HSM_MIN_ROTATION_PERIOD (default one day; issue 15 §6).

Before: ``rotationPeriod: "1s"`` was accepted, and the scheduler then made a version (a
token object) on every pass.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from anyio.from_thread import BlockingPortal
from pydantic import ValidationError

from kms_hsm.config import Settings
from kms_hsm.domain.model import Algorithm
from kms_hsm.errors import InvalidArgument
from kms_hsm.service.keys import KeySpec
from kms_hsm.service.runtime import Runtime, prepare
from tests.conftest import create_key

FOLDER = "b1grotationfloor"


def _create(api: httpx.Client, period: str) -> httpx.Response:
    return api.post(
        "/kms/v1/keys",
        json={"folderId": FOLDER, "defaultAlgorithm": "AES_256", "rotationPeriod": period},
    )


@pytest.mark.parametrize("period", ["1s", "3600s", "86399s"])
def test_create_below_the_default_floor_is_400_naming_it(api: httpx.Client, period: str) -> None:
    r = _create(api, period)
    assert r.status_code == 400, r.text
    assert r.json()["code"] == 3
    assert "rotationPeriod" in r.json()["message"]
    assert "86400s" in r.json()["message"]


def test_create_at_the_floor_is_accepted(api: httpx.Client) -> None:
    r = _create(api, "86400s")
    assert r.status_code == 200, r.text
    assert r.json()["response"]["rotationPeriod"] == "86400s"


def test_update_below_the_floor_is_400_and_changes_nothing(api: httpx.Client) -> None:
    key = create_key(api, "AES_256", folderId=FOLDER, rotationPeriod="172800s")
    r = api.patch(
        f"/kms/v1/keys/{key['id']}", json={"updateMask": "rotationPeriod", "rotationPeriod": "1s"}
    )
    assert r.status_code == 400, r.text
    assert r.json()["code"] == 3 and "86400s" in r.json()["message"]
    assert api.get(f"/kms/v1/keys/{key['id']}").json()["rotationPeriod"] == "172800s"
    # Clearing the period (no rotation) is not below any floor.
    r = api.patch(f"/kms/v1/keys/{key['id']}", json={"updateMask": "rotationPeriod"})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("86400", 86_400),
        ("90s", 90),
        ("30m", 1800),
        ("24h", 86_400),
        ("1d", 86_400),
        (" 2d ", 172_800),
    ],
)
def test_the_setting_takes_seconds_or_a_unit(
    monkeypatch: pytest.MonkeyPatch, value: str, seconds: int
) -> None:
    monkeypatch.setenv("KMS_HSM_MIN_ROTATION_PERIOD", value)
    assert Settings().min_rotation_period == seconds


@pytest.mark.parametrize("value", ["0", "1.5h", "1w", "-1d", "\u0661d", "d", "3651d"])
def test_the_setting_refuses_anything_else(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("KMS_HSM_MIN_ROTATION_PERIOD", value)
    with pytest.raises(ValidationError, match="min_rotation_period"):
        Settings()


def test_a_lower_floor_is_the_operators_choice(
    token_dir: Path, tmp_path: Path, portal: BlockingPortal, wait
) -> None:
    settings = Settings(
        data_dir=tmp_path,
        pin_file=token_dir / "user-pin",
        database_url=f"sqlite:///{tmp_path / 'floor.db'}",
        scheduler_interval=0,
        min_rotation_period="1m",
    )
    prepare(settings)
    runtime = Runtime.start(settings)
    try:
        portal.call(runtime.open)

        def spec(period: timedelta) -> KeySpec:
            return KeySpec(FOLDER, "k", "", {}, Algorithm.AES_128, period, False)

        with pytest.raises(InvalidArgument, match="at least 60s"):
            wait(runtime.keys.create(spec(timedelta(seconds=59)), "test"))
        op = wait(runtime.keys.create(spec(timedelta(seconds=60)), "test"))
        key = runtime.keys.get(op.metadata["value"]["key_id"])
        assert key.rotation_period == timedelta(seconds=60)
    finally:
        runtime.close()


def test_a_key_stored_below_the_floor_rotates_at_the_floor(
    token_dir: Path, tmp_path: Path, portal: BlockingPortal, wait
) -> None:
    """A period stored before the floor (or under a lower one) does not rotate every pass."""
    from datetime import UTC, datetime

    from kms_hsm.store.engine import Database
    from kms_hsm.store.tables import KeyRow

    now = [datetime(2026, 1, 1, tzinfo=UTC)]
    settings = Settings(
        data_dir=tmp_path,
        pin_file=token_dir / "user-pin",
        database_url=f"sqlite:///{tmp_path / 'floor.db'}",
        scheduler_interval=0,
        min_rotation_period="1m",
    )
    prepare(settings)
    runtime = Runtime.start(settings, lambda: now[0])
    try:
        portal.call(runtime.open)
        spec = KeySpec(FOLDER, "k", "", {}, Algorithm.AES_128, timedelta(minutes=1), False)
        key_id = wait(runtime.keys.create(spec, "test")).metadata["value"]["key_id"]
    finally:
        runtime.close()
    # The same database under the default floor of one day.
    settings = settings.model_copy(update={"min_rotation_period": 86_400})
    runtime = Runtime.start(settings, lambda: now[0])
    try:
        portal.call(runtime.open)
        with Database(runtime.engine).read() as session:
            assert session.get(KeyRow, key_id).rotation_period_seconds == 60
        now[0] += timedelta(hours=2)
        assert key_id not in runtime.keys.due_rotations()
        assert wait(runtime.keys.rotate_if_due(key_id)) is None
        now[0] += timedelta(days=1)
        assert key_id in runtime.keys.due_rotations()
    finally:
        runtime.close()
