"""`kms-hsm tokens create --expires-in` takes ASCII digits only, up to ten years.

Before: int() took "1_000" and other scripts' digits ("١٢" is 12), and a huge value ended
in an OverflowError traceback (exit 1) instead of a usage error.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kms_hsm.config import Settings
from kms_hsm.service.runtime import Runtime
from tests.test_audit import cli, snapshot_db

TEN_YEARS = 10 * 365 * 86400


@pytest.mark.parametrize(
    "value",
    ["١٢", "1_000", "+5", " 5", "5.0", "", "99999999999999999999", str(TEN_YEARS + 1), "0"],
)
def test_expires_in_refuses_anything_but_bounded_ascii_digits(
    runtime: Runtime, settings: Settings, tmp_path: Path, value: str
) -> None:
    principal = runtime.auth.create_principal("expires-in")
    db = snapshot_db(settings, tmp_path / "cli.db")
    result = cli(db, "tokens", "create", principal.id, f"--expires-in={value}")
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "usage:" in result.stderr
    assert "--expires-in" in result.stderr
    assert "Traceback" not in result.stderr
    assert "kmsh1_" not in result.stdout  # no token was issued


def test_expires_in_takes_up_to_ten_years(
    runtime: Runtime, settings: Settings, tmp_path: Path
) -> None:
    principal = runtime.auth.create_principal("expires-in-ok")
    db = snapshot_db(settings, tmp_path / "cli.db")
    result = cli(db, "tokens", "create", principal.id, "--expires-in", str(TEN_YEARS))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith("kmsh1_")
