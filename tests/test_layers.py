"""Import boundaries, as import-linter contracts ([tool.importlinter] in pyproject.toml): the
layers, "only the HSM agent imports PKCS#11", no web framework or ORM in the core. Checked
statically, so an import inside a function counts too. Plus what a static check cannot see:
nothing runs at import (no PKCS#11 library loaded, no database opened, no file written)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# The venv's console script, next to this interpreter (not resolved: the venv's bin/python
# is a symlink to the system interpreter).
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint(cwd: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run lint-imports in cwd (it reads cwd/pyproject.toml); its output, whitespace folded,
    as it wraps long lines at the terminal width."""
    out = subprocess.run(
        [str(LINT_IMPORTS), "--no-logo", "--no-cache", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return out.returncode, " ".join((out.stdout + out.stderr).split())


def test_the_import_contracts_hold() -> None:
    code, output = _lint(REPO)
    assert code == 0, output


@pytest.fixture
def copy(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """The package and its contracts copied to tmp_path, and an environment in which
    `kms_hsm` is that copy rather than the editable install of the repo."""
    shutil.copytree(
        REPO / "kms_hsm", tmp_path / "kms_hsm", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    # import-linter finds the package as this does (importlib), from PYTHONPATH first.
    found = subprocess.run(
        [sys.executable, "-c", "import kms_hsm; print(kms_hsm.__file__)"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert Path(found) == tmp_path / "kms_hsm" / "__init__.py"
    return tmp_path, env


@pytest.mark.parametrize(
    ("module", "line", "contract", "link"),
    [
        (
            "store/tables.py",
            "import kms_hsm.api",
            "layers",
            "kms_hsm.store.tables -> kms_hsm.api",
        ),
        (
            "store/engine.py",
            "from kms_hsm.service import context",
            "layers",
            "kms_hsm.store.engine -> kms_hsm.service.context",
        ),
        (
            "service/context.py",
            "import kms_hsm.api.wire",
            "layers",
            "kms_hsm.service.context -> kms_hsm.api.wire",
        ),
        (
            "domain/model.py",
            "import sqlalchemy",
            "pure-core",
            "kms_hsm.domain.model -> sqlalchemy",
        ),
        (
            "service/context.py",
            "import pkcs11",
            "pkcs11-only-in-agent",
            "kms_hsm.service.context -> pkcs11",
        ),
        (
            "crypto/__init__.py",
            "from kms_hsm.crypto.pkcs11 import errors",
            "pkcs11-only-in-agent",
            "kms_hsm.crypto -> kms_hsm.crypto.pkcs11.errors",
        ),
        (
            "client/__init__.py",
            "import kms_hsm.service.context",
            "clients-stand-alone",
            "kms_hsm.client -> kms_hsm.service.context",
        ),
        (
            "metrics.py",
            "import kms_hsm.service.context",
            "layers",
            "kms_hsm.metrics -> kms_hsm.service.context",
        ),
    ],
)
def test_a_forbidden_import_breaks_its_contract(
    copy: tuple[Path, dict[str, str]], module: str, line: str, contract: str, link: str
) -> None:
    """The contracts bite: one import added to the copy, and lint-imports fails on it."""
    root, env = copy
    path = root / "kms_hsm" / module
    path.write_text(path.read_text() + f"\n{line}\n")
    code, output = _lint(root, "--contract", contract, env=env)
    assert code == 1, output
    assert "Contracts: 0 kept, 1 broken." in output, output
    # The named import exists only in the copy: the copy is what was analysed.
    assert link in output, output


NOTHING_AT_IMPORT = """
import importlib, os, pkgutil, sqlite3, sys
import sqlalchemy

opened = []
def record(name, real):
    def wrapper(*args, **kwargs):
        opened.append(name)
        return real(*args, **kwargs)
    return wrapper
sqlite3.connect = record("sqlite3.connect", sqlite3.connect)
sqlalchemy.create_engine = record("sqlalchemy.create_engine", sqlalchemy.create_engine)

import kms_hsm
from kms_hsm.config import Settings
for m in pkgutil.walk_packages(kms_hsm.__path__, "kms_hsm."):
    importlib.import_module(m.name)

library = os.path.realpath(Settings().pkcs11_library)
with open("/proc/self/maps") as maps:
    mapped = library in maps.read()
pkcs11 = sys.modules.get("pkcs11")
print(opened, mapped, len(pkcs11._loaded) if pkcs11 else 0)
"""


def test_importing_every_module_touches_no_hsm_and_no_database(tmp_path: Path) -> None:
    """Every module of the package (the app, the ASGI entry, the CLI, the agent) imports
    without loading the PKCS#11 library, opening a database or writing a file."""
    out = subprocess.run(
        [sys.executable, "-c", NOTHING_AT_IMPORT],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "[] False 0", out.stderr
    assert list(tmp_path.iterdir()) == []
