"""Import boundaries: the core never imports the web framework or the ORM; nothing runs
at import (no PKCS#11, no database)."""

from __future__ import annotations

import subprocess
import sys

CHECK = """
import sys, pkgutil, importlib
import kms_hsm.{package}
for m in pkgutil.walk_packages(kms_hsm.{package}.__path__, "kms_hsm.{package}."):
    importlib.import_module(m.name)
bad = sorted(n for n in sys.modules if n.split(".")[0] in {forbidden!r})
print(",".join(bad))
"""


def _imports(package: str, forbidden: set[str]) -> str:
    code = CHECK.format(package=package, forbidden=forbidden)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_domain_imports_no_framework_orm_or_pkcs11() -> None:
    assert _imports("domain", {"fastapi", "starlette", "sqlalchemy", "pkcs11"}) == ""


def test_crypto_imports_no_framework_or_orm() -> None:
    assert _imports("crypto", {"fastapi", "starlette", "sqlalchemy"}) == ""


def test_service_and_store_import_no_framework() -> None:
    assert _imports("service", {"fastapi", "starlette"}) == ""
    assert _imports("store", {"fastapi", "starlette"}) == ""


def test_importing_the_app_touches_no_hsm() -> None:
    code = (
        "import kms_hsm.api.app, kms_hsm.api.asgi, kms_hsm.cli.main, pkcs11\n"
        "print(len(pkcs11._loaded))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0"
