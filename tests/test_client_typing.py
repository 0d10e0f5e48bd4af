"""What a type checker sees of the client: each method's own argument and result types, on
``Client`` and (awaited) on ``AsyncClient``, though both are declared once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

USE = """
from kms_hsm.client import AsyncClient, Client


async def use_async(a: AsyncClient) -> None:
    reveal_type(await a.encrypt("k", b"x"))
    async for key in a.iter_keys("f"):
        reveal_type(key)


def use_sync(c: Client) -> None:
    reveal_type(c.decrypt("k", b"x"))
    reveal_type(c.rotate_key("k"))
    reveal_type(c.create_key_operation("f"))
    for version in c.iter_versions("k"):
        reveal_type(version)
    c.encrypt("k", "not bytes")
"""


def test_types_seen_by_mypy(tmp_path: Path) -> None:
    pytest.importorskip("mypy")
    module = tmp_path / "use_client.py"
    module.write_text(USE)
    root = Path(__file__).resolve().parent.parent
    run = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(module)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [line for line in run.stdout.splitlines() if "Revealed type" in line]
    revealed = [line.split('Revealed type is "')[1].rstrip('"') for line in lines]
    assert revealed == [
        "kms_hsm.client.models.EncryptResult",
        "kms_hsm.client.models.SymmetricKey",
        "kms_hsm.client.models.DecryptResult",
        "kms_hsm.client.models.SymmetricKeyVersion",
        "kms_hsm.client.models.Operation",
        "kms_hsm.client.models.SymmetricKeyVersion",
    ], run.stdout
    assert 'Argument 2 has incompatible type "str"; expected "bytes"' in run.stdout
    assert "Found 1 error" in run.stdout, run.stdout
