"""SymmetricCrypto: encrypt, decrypt, reEncrypt and generateDataKey."""

from __future__ import annotations

from dataclasses import dataclass

from kms_hsm.domain import envelope as env
from kms_hsm.domain import validation
from kms_hsm.domain.model import Algorithm, Key, KeyStatus, VersionStatus
from kms_hsm.errors import (
    DecryptionFailed,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from kms_hsm.service.cache import StateCache
from kms_hsm.service.keyring import Keyring, check_data_key_spec
from kms_hsm.store import repository
from kms_hsm.store.engine import Database
from kms_hsm.store.repository import StoredVersion
from kms_hsm.store.state import StateWatch


@dataclass(frozen=True, slots=True)
class EncryptResult:
    """What Encrypt returns."""

    key_id: str
    version_id: str
    ciphertext: bytes


@dataclass(frozen=True, slots=True)
class DecryptResult:
    """What Decrypt returns; ``plaintext`` must never be logged."""

    key_id: str
    version_id: str
    plaintext: bytes


@dataclass(frozen=True, slots=True)
class ReEncryptResult:
    """What ReEncrypt returns."""

    key_id: str
    version_id: str
    source_key_id: str
    source_version_id: str
    ciphertext: bytes


@dataclass(frozen=True, slots=True)
class DataKeyResult:
    """What GenerateDataKey returns; ``plaintext`` is empty when skipped."""

    key_id: str
    version_id: str
    plaintext: bytes
    ciphertext: bytes


def _check_usable(key: Key, stored: StoredVersion) -> None:
    if key.status is not KeyStatus.ACTIVE:
        raise FailedPrecondition(f"key {key.id} is {key.status.name}, not ACTIVE")
    status = stored.version.status
    if status is not VersionStatus.ACTIVE:
        raise FailedPrecondition(f"version {stored.version.id} of key {key.id} is {status.name}")


class CryptoService:
    """The data plane; every call reads key state from the database (effective on commit)."""

    def __init__(self, db: Database, keyring: Keyring, watch: StateWatch | None = None) -> None:
        self._db = db
        self._keyring = keyring
        self._keys: StateCache[tuple[Key, StoredVersion]] = StateCache(watch)

    def _load(self, key_id: str, version_id: str | None) -> tuple[Key, StoredVersion]:
        return self._keys.get((key_id, version_id), lambda: self._read(key_id, version_id))

    def _read(self, key_id: str, version_id: str | None) -> tuple[Key, StoredVersion]:
        with self._db.read() as session:
            return repository.get_key_and_version(session, key_id, version_id)

    def _require_key(self, key_id: str) -> None:
        with self._db.read() as session:
            repository.get_key_row(session, key_id)

    async def encrypt(
        self, key_id: str, version_id: str, plaintext: bytes, aad_context: bytes | None
    ) -> EncryptResult:
        """Encrypt with the named version, or the primary one when ``version_id`` is empty."""
        validation.check_id("keyId", key_id)
        validation.check_id("versionId", version_id, required=False)
        validation.check_bytes("plaintext", plaintext, validation.MAX_PLAINTEXT)
        validation.check_bytes("aadContext", aad_context, validation.MAX_AAD)
        key, stored = self._load(key_id, version_id or None)
        _check_usable(key, stored)
        ciphertext = await self._keyring.encrypt(key_id, stored, plaintext, aad_context)
        return EncryptResult(key_id, stored.version.id, ciphertext)

    async def decrypt(
        self, key_id: str, ciphertext: bytes, aad_context: bytes | None
    ) -> DecryptResult:
        """Decrypt; the version comes from the envelope, never from the caller."""
        validation.check_id("keyId", key_id)
        validation.check_bytes("aadContext", aad_context, validation.MAX_AAD)
        if not ciphertext:
            raise InvalidArgument("ciphertext is required")
        try:
            envelope = env.Envelope.parse(ciphertext)
            key, stored = self._load(key_id, envelope.version_id)
        except (DecryptionFailed, NotFound) as exc:
            # An unknown key is 404; anything else wrong is just a bad ciphertext.
            self._require_key(key_id)
            if isinstance(exc, DecryptionFailed):
                raise
            raise DecryptionFailed(log_detail="envelope names a version of another key") from None
        if key.status is not KeyStatus.ACTIVE:
            raise FailedPrecondition(f"key {key.id} is {key.status.name}, not ACTIVE")
        # The version comes from the ciphertext, which anyone can forge: its state is told
        # only to a caller whose ciphertext authenticates. A destroyed version can no
        # longer authenticate anything, so it fails as every bad ciphertext does.
        status = stored.version.status
        if status is VersionStatus.DESTROYED:
            raise DecryptionFailed(
                log_detail=f"envelope names DESTROYED version {stored.version.id}"
            )
        plaintext = await self._keyring.decrypt(key_id, stored, envelope, aad_context)
        if status is not VersionStatus.ACTIVE:
            raise FailedPrecondition(
                f"version {stored.version.id} of key {key.id} is {status.name}"
            )
        return DecryptResult(key_id, stored.version.id, plaintext)

    async def re_encrypt(
        self,
        key_id: str,
        version_id: str,
        aad_context: bytes | None,
        source_key_id: str,
        source_aad_context: bytes | None,
        ciphertext: bytes,
    ) -> ReEncryptResult:
        """Decrypt under the source key, encrypt under the (possibly same) target key."""
        validation.check_id("sourceKeyId", source_key_id)
        validation.check_bytes("sourceAadContext", source_aad_context, validation.MAX_AAD)
        opened = await self.decrypt(source_key_id, ciphertext, source_aad_context)
        sealed = await self.encrypt(key_id, version_id, opened.plaintext, aad_context)
        return ReEncryptResult(
            sealed.key_id, sealed.version_id, opened.key_id, opened.version_id, sealed.ciphertext
        )

    async def generate_data_key(
        self,
        key_id: str,
        version_id: str,
        aad_context: bytes | None,
        data_key_spec: Algorithm,
        skip_plaintext: bool,
    ) -> DataKeyResult:
        """Make a data key of ``data_key_spec`` (UNSPECIFIED means AES_256), wrapped."""
        validation.check_id("keyId", key_id)
        validation.check_id("versionId", version_id, required=False)
        validation.check_bytes("aadContext", aad_context, validation.MAX_AAD)
        spec = check_data_key_spec(data_key_spec)
        key, stored = self._load(key_id, version_id or None)
        _check_usable(key, stored)
        plaintext, ciphertext = await self._keyring.generate_data_key(
            key_id, stored, spec, aad_context, skip_plaintext=skip_plaintext
        )
        return DataKeyResult(key_id, stored.version.id, plaintext, ciphertext)
