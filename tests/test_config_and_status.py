"""Settings, secret files and the error table."""

from __future__ import annotations

from pathlib import Path

import pytest

from kms_hsm import errors
from kms_hsm.api import status
from kms_hsm.config import Settings, read_secret_file, write_secret_file
from kms_hsm.domain.model import Algorithm, KeyStatus, VersionStatus


def test_secret_files_must_be_private(tmp_path: Path) -> None:
    path = tmp_path / "pin"
    write_secret_file(path, "1234")
    assert path.stat().st_mode & 0o777 == 0o600
    assert read_secret_file(path, "PIN file") == "1234"
    path.chmod(0o640)
    with pytest.raises(errors.InvalidArgument, match="chmod 600"):
        read_secret_file(path, "PIN file")


def test_defaults_and_embedded_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(Settings.model_fields):
        monkeypatch.delenv(f"KMS_HSM_{name.upper()}", raising=False)
    settings = Settings()
    assert settings.port == 8080 and settings.host == "127.0.0.1" and settings.workers == 1
    assert settings.embedded_token
    assert settings.effective_database_url().endswith(".kms-hsm/kms.db")
    monkeypatch.setenv("KMS_HSM_PIN_FILE", "/run/secrets/pin")
    assert not Settings().embedded_token


def test_pin_is_never_in_the_settings_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KMS_HSM_PIN", "s3cret-pin")
    assert "s3cret-pin" not in repr(Settings())


def test_every_error_class_has_a_code_and_status() -> None:
    classes = [
        c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.KmsError)
    ]
    for klass in classes:
        assert int(klass.code) in status.HTTP_STATUS_BY_GRPC_CODE, klass
    # The canonical codes a gRPC client sees (and the audit trail records).
    assert {k.__name__: k.code.name for k in classes} == {
        "KmsError": "INTERNAL",
        "InvalidArgument": "INVALID_ARGUMENT",
        "NotFound": "NOT_FOUND",
        "AlreadyExists": "ALREADY_EXISTS",
        "FailedPrecondition": "FAILED_PRECONDITION",
        "KeyMaterialMissing": "FAILED_PRECONDITION",
        "DecryptionFailed": "INVALID_ARGUMENT",
        "Unauthenticated": "UNAUTHENTICATED",
        "PermissionDenied": "PERMISSION_DENIED",
        "ResourceExhausted": "RESOURCE_EXHAUSTED",
        "Aborted": "ABORTED",
        "BackendUnavailable": "UNAVAILABLE",
        "LoginRefused": "UNAVAILABLE",
        "Internal": "INTERNAL",
    }
    assert status.http_status(status.grpc_code(errors.DecryptionFailed())) == 400
    assert status.http_status(status.grpc_code(errors.BackendUnavailable())) == 503
    assert status.http_status(status.grpc_code(errors.Unauthenticated())) == 401
    assert status.http_status(status.grpc_code(errors.FailedPrecondition())) == 400
    assert status.http_status(status.grpc_code(errors.PermissionDenied())) == 403


def test_stored_enum_values_are_pinned() -> None:
    assert {a.name: a.value for a in Algorithm} == {
        "SYMMETRIC_ALGORITHM_UNSPECIFIED": 0,
        "AES_128": 1,
        "AES_192": 2,
        "AES_256": 3,
        "AES_256_HSM": 4,
        "GOST_R_3412_2015_K": 5,
    }
    assert [s.value for s in KeyStatus] == [0, 1, 2, 3]
    assert [s.value for s in VersionStatus] == [0, 1, 2, 3]


def test_write_secret_file_narrows_before_writing_and_follows_no_symlink(tmp_path: Path) -> None:
    import os

    from kms_hsm.config import write_secret_file

    existing = tmp_path / "token"
    existing.write_text("old")
    existing.chmod(0o644)
    write_secret_file(existing, "s3cret")
    assert existing.stat().st_mode & 0o777 == 0o600 and existing.read_text() == "s3cret\n"
    planted = tmp_path / "elsewhere"
    link = tmp_path / "link"
    link.symlink_to(planted)
    with pytest.raises(OSError):
        write_secret_file(link, "s3cret")
    assert not planted.exists() and os.path.islink(link)
