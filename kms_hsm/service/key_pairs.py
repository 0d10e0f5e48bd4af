"""Asymmetric keys: the control plane of both families and their private-key operations.

A key is one key pair in the token (``CKA_ID`` = the key id, label with this deployment's
prefix, so that the orphan sweep finds pairs as it finds version keys) and one ``keys``
row whose ``family`` is not symmetric; ``default_algorithm`` holds the family's algorithm
and ``public_key`` the SubjectPublicKeyInfo read from the token at creation. No versions.

Create makes the pair first (a token call through the key-generation agent, outside any
transaction), then commits; a failed commit destroys the pair again or leaves it to the
orphan sweep. Delete commits ``deleted_at`` first, then destroys the pair in the token; a
crash or a token failure in between leaves objects that no live row accounts for, which
the orphan sweep removes after its grace period.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives import serialization
from sqlalchemy.orm import Session

from kms_hsm.audit.store import AuditLog
from kms_hsm.crypto.token import Token
from kms_hsm.domain import validation
from kms_hsm.domain.asymmetric import (
    MAX_ASYMMETRIC_CIPHERTEXT,
    MAX_SIGN_HASH,
    MAX_SIGN_MESSAGE,
    AsymmetricAlgorithm,
    AsymmetricKey,
    AsymmetricKeyStatus,
    EncryptionAlgorithm,
    KeyFamily,
    SignatureAlgorithm,
)
from kms_hsm.domain.fields import FieldError
from kms_hsm.domain.ids import KEY_PREFIX, new_id
from kms_hsm.domain.records import key_pair_record
from kms_hsm.errors import FailedPrecondition, Internal, InvalidArgument, NotFound
from kms_hsm.service.cache import MissCache, StateCache
from kms_hsm.service.context import as_context
from kms_hsm.service.keyring import Keyring
from kms_hsm.service.keys import (
    MAX_LIST_TOKEN,
    MAX_SUB_LIST_TOKEN,
    Caller,
    KeyService,
    Page,
    check_update,
)
from kms_hsm.service.operations import finished_operation, persist_with_audit
from kms_hsm.store import repository
from kms_hsm.store.engine import Database
from kms_hsm.store.repository import Cursor, StoredOperation
from kms_hsm.store.state import StateWatch, bump_state
from kms_hsm.store.tables import KeyRow

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class KeyPairSpec:
    """``CreateAsymmetric…KeyRequest``; ``algorithm``: the family's enum value."""

    folder_id: str
    name: str = ""
    description: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    algorithm: int = 0
    deletion_protection: bool = False


@dataclass(frozen=True, slots=True)
class KeyPairUpdate:
    """Values for Update; only the fields the mask names are used."""

    name: str = ""
    description: str = ""
    status: AsymmetricKeyStatus = AsymmetricKeyStatus.STATUS_UNSPECIFIED
    labels: dict[str, str] | None = None
    deletion_protection: bool = False


# updateMask paths (snake_case, what ``KeyPairService.update`` takes).
UPDATABLE_FIELDS = frozenset({"name", "description", "status", "labels", "deletion_protection"})


class _NoSuchKey(Exception):
    """Internal: a key id with no live key, kept out of the cache of known keys."""


@dataclass(frozen=True, slots=True)
class _Known:
    """A live key as the data plane needs it: its family and, for a key pair, the key."""

    family: KeyFamily
    key: AsymmetricKey | None  # None for a symmetric key
    public_key_pem: str


class KeyPairService:
    """Both asymmetric families; every call names the family its API path belongs to.

    A key of another family (symmetric included) is ``NotFound`` with the same message as a
    key that does not exist.

    The data plane (Sign, SignHash, Decrypt, GetPublicKey) reads keys through a cache that
    the state version empties (as ``CryptoService`` does): a change is effective on commit,
    and a call on an unchanged key does not touch the database.
    """

    def __init__(
        self,
        db: Database,
        token: Token,
        keyring: Keyring,
        keys: KeyService,
        audit: AuditLog | None = None,
        watch: StateWatch | None = None,
    ) -> None:
        self._db = db
        self._token = token
        self._keyring = keyring
        # The clock and the signed page tokens are the symmetric service's: one of each.
        self._keys = keys
        self._audit = audit
        self._known: StateCache[_Known] = StateCache(watch)
        # Unknown ids apart from known keys: a flood of random ids evicts only other misses.
        self._unknown = MissCache(watch)

    # ----------------------------------------------------------------- create / read

    async def create(self, family: KeyFamily, spec: KeyPairSpec, by: Caller) -> StoredOperation:
        """Make the pair in the token, then commit the key; a done Operation (response: key).

        The token call runs before the write transaction (RSA-4096 takes seconds, and no
        token call may hold the write lock). A failure before the commit destroys the pair
        again; a failed COMMIT (which may have landed) leaves it to the orphan sweep, which
        destroys it only if no live row names it after the grace period.
        """
        kind = _kind(family)
        validation.check_id("folderId", spec.folder_id)
        validation.check_key_fields(spec.name, spec.description, spec.labels)
        algorithm = _algorithm(family, spec.algorithm)
        key_id = new_id(KEY_PREFIX)
        public_key = await self._token.generate_key_pair(
            key_id.encode(), self._keyring.object_label(key_id), algorithm.spec
        )
        now = self._keys.clock()
        committing = False
        try:
            await self._check_reachable(key_id, public_key)
            with self._db.write() as session:
                row = KeyRow(
                    id=key_id,
                    folder_id=spec.folder_id,
                    name=spec.name,
                    description=spec.description,
                    labels=dict(spec.labels),
                    status=int(AsymmetricKeyStatus.ACTIVE),
                    default_algorithm=int(algorithm),
                    rotation_period_seconds=None,
                    deletion_protection=spec.deletion_protection,
                    created_at=now,
                    rotated_at=None,
                    primary_version_id=None,
                    family=int(family),
                    public_key=public_key,
                )
                session.add(row)
                session.flush()
                operation = self._record(session, family, "Create", by, now, row)
                committing = True
        except Exception:
            await self._discard_uncommitted(key_id, committing=committing)
            raise
        log.info(
            "created asymmetric %s key %s (folder %s, %s)",
            kind,
            key_id,
            spec.folder_id,
            algorithm.name,
        )
        return operation

    async def _check_reachable(self, key_id: str, public_key: bytes) -> None:
        """The data plane's agent reads the new pair back before the key is committed.

        The pair was made by the key-generation agent, another process: SoftHSM2's file
        store may not show it to the data plane's agent until that agent reloads the
        module, and the reload (a login, every AES session copy dropped) belongs here, in
        Create, not inside the first Sign or Decrypt. It also proves the key usable where
        it will be used before anyone is told it exists.
        """
        if await self._token.public_key(key_id.encode()) != public_key:
            raise Internal(log_detail=f"key pair {key_id}: the token's public key differs")

    async def _discard_uncommitted(self, key_id: str, *, committing: bool) -> None:
        if committing:
            log.warning(
                "commit of asymmetric key %s failed; its key pair is left to the orphan sweep",
                key_id,
            )
            return
        try:
            await self._token.destroy_key(key_id.encode())
        except Exception as exc:
            log.warning(
                "key pair of uncommitted key %s left to the orphan sweep: %s",
                key_id,
                getattr(exc, "log_detail", None) or exc,
            )

    def get(self, family: KeyFamily, key_id: str) -> AsymmetricKey:
        """The live key of ``family``, or NotFound."""
        _kind(family)
        validation.check_id("keyId", key_id)
        with self._db.read() as session:
            return repository.key_pair_from_row(
                repository.get_key_row(session, key_id, family=family)
            )

    def check_family(self, family: KeyFamily, key_id: str) -> None:
        """NotFound unless ``key_id`` is a live key of ``family`` (any family, symmetric too).

        The access-binding methods of every key service share one resource type ("key"):
        this keeps each service to its own keys.
        """
        known = self._lookup(key_id)
        if known is None or known.family is not family:
            raise NotFound(f"key {key_id} not found")

    def list_keys(self, family: KeyFamily, folder_id: str, page_size: int, page_token: str) -> Page:
        """Live keys of the family in a folder, oldest first, with a signed page token."""
        _kind(family)
        validation.check_id("folderId", folder_id)

        def query(session: Session, cursor: Cursor | None, limit: int) -> list[Any]:
            rows = repository.list_key_rows(session, folder_id, family, cursor, limit)
            return [repository.key_pair_from_row(r) for r in rows]

        # The family is in the scope: a page token of one list is refused by the others.
        scope = f"keys:{int(family)}|{folder_id}"
        return self._keys.page(scope, MAX_LIST_TOKEN, page_size, page_token, query)

    def list_operations(
        self, family: KeyFamily, key_id: str, page_size: int, page_token: str
    ) -> Page:
        """Operations on a live key, oldest first."""
        _kind(family)
        validation.check_id("keyId", key_id)

        def query(session: Session, cursor: Cursor | None, limit: int) -> list[Any]:
            repository.get_key_row(session, key_id, family=family)
            return repository.list_operations(session, key_id, cursor, limit)

        scope = f"operations|{key_id}"
        return self._keys.page(scope, MAX_SUB_LIST_TOKEN, page_size, page_token, query)

    # ----------------------------------------------------------------- mutations

    def update(
        self,
        family: KeyFamily,
        key_id: str,
        mask: frozenset[str],
        values: KeyPairUpdate,
        by: Caller,
    ) -> StoredOperation:
        """Apply the fields in ``mask`` (``UPDATABLE_FIELDS``); status only ACTIVE/INACTIVE."""
        _kind(family)
        validation.check_id("keyId", key_id)
        labels = check_update(
            mask, UPDATABLE_FIELDS, values.name, values.description, values.labels
        )
        settable = (AsymmetricKeyStatus.ACTIVE, AsymmetricKeyStatus.INACTIVE)
        if "status" in mask and values.status not in settable:
            raise InvalidArgument("status: only ACTIVE or INACTIVE can be set")
        now = self._keys.clock()
        with self._db.write() as session:
            row = self._lock(session, family, key_id)
            if "name" in mask:
                row.name = values.name
            if "description" in mask:
                row.description = values.description
            if "status" in mask:
                row.status = int(values.status)
            if "labels" in mask:
                row.labels = dict(labels)
            if "deletion_protection" in mask:
                row.deletion_protection = values.deletion_protection
            session.flush()
            return self._record(session, family, "Update", by, now, row)

    async def delete(self, family: KeyFamily, key_id: str, by: Caller) -> StoredOperation:
        """Refuse under deletionProtection; else hide the key, then destroy its pair.

        ``deleted_at`` commits first; the pair is destroyed after, outside the transaction.
        A token failure or a crash in between leaves a pair that no live row accounts for,
        which the orphan sweep destroys after its grace period.
        """
        _kind(family)
        validation.check_id("keyId", key_id)
        now = self._keys.clock()
        with self._db.write() as session:
            row = self._lock(session, family, key_id)
            if row.deletion_protection:
                raise FailedPrecondition(
                    f"key {key_id} has deletionProtection on; turn it off with Update first"
                )
            operation = self._record(session, family, "Delete", by, now, row)
            row.deleted_at = now
        try:
            found = await self._token.destroy_key(key_id.encode())
        except Exception as exc:
            log.warning(
                "asymmetric key %s is deleted; its key pair is left to the orphan sweep: %s",
                key_id,
                getattr(exc, "log_detail", None) or exc,
            )
            return operation
        if not found:
            log.warning("asymmetric key %s is deleted but its key pair was not found", key_id)
        else:
            log.info("deleted asymmetric key %s and destroyed its key pair", key_id)
        return operation

    # ----------------------------------------------------------------- data plane

    async def sign(self, key_id: str, message: bytes) -> bytes:
        """Hash ``message`` as the key's algorithm says and sign the digest in the token."""
        validation.check_id("keyId", key_id)
        validation.check_bytes("message", message, MAX_SIGN_MESSAGE)
        key = self._usable(KeyFamily.ASYMMETRIC_SIGNATURE, key_id)
        spec = key.algorithm.spec
        digest = hashlib.new(spec.hash, message).digest()
        return await self._token.sign_digest(key_id.encode(), spec, digest)

    async def sign_hash(self, key_id: str, digest: bytes) -> bytes:
        """Sign a digest of exactly the algorithm's length (else InvalidArgument)."""
        validation.check_id("keyId", key_id)
        validation.check_bytes("hash", digest, MAX_SIGN_HASH)
        key = self._usable(KeyFamily.ASYMMETRIC_SIGNATURE, key_id)
        spec = key.algorithm.spec
        if len(digest) != spec.digest_size:
            raise FieldError(
                "hash",
                f"must be {spec.digest_size} bytes (a {spec.hash.upper()} digest) for "
                f"{key.algorithm.name}, not {len(digest)}",
            )
        return await self._token.sign_digest(key_id.encode(), spec, digest)

    def public_key_pem(self, family: KeyFamily, key_id: str) -> str:
        """The key's public key as PEM SubjectPublicKeyInfo (INACTIVE keys' too)."""
        _kind(family)
        validation.check_id("keyId", key_id)
        known = self._lookup(key_id)
        if known is None or known.family is not family:
            raise NotFound(f"key {key_id} not found")
        return known.public_key_pem

    async def decrypt(self, key_id: str, ciphertext: bytes) -> bytes:
        """RSA-OAEP-SHA-256 with the private key; one DecryptionFailed for every failure."""
        validation.check_id("keyId", key_id)
        validation.check_bytes("ciphertext", ciphertext, MAX_ASYMMETRIC_CIPHERTEXT)
        key = self._usable(KeyFamily.ASYMMETRIC_ENCRYPTION, key_id)
        return await self._token.decrypt_oaep(key_id.encode(), key.algorithm.spec, ciphertext)

    # ----------------------------------------------------------------- helpers

    def _usable(self, family: KeyFamily, key_id: str) -> AsymmetricKey:
        known = self._lookup(key_id)
        if known is None or known.family is not family or known.key is None:
            raise NotFound(f"key {key_id} not found")
        key = known.key
        if key.status is not AsymmetricKeyStatus.ACTIVE:
            raise FailedPrecondition(f"key {key_id} is {key.status.name}, not ACTIVE")
        return key

    def _lookup(self, key_id: str) -> _Known | None:
        """The live key ``key_id`` of any family, None for none; cached until a change."""
        try:
            return self._known.get(key_id, lambda: self._load_known(key_id))
        except _NoSuchKey:
            return None

    def _load_known(self, key_id: str) -> _Known:
        found = self._unknown.get(key_id, lambda: self._load(key_id))
        if found is None:
            raise _NoSuchKey  # not cached among the hits
        return found

    def _load(self, key_id: str) -> _Known | None:
        """Ids are random and made only by Create: a miss may be cached like a key."""
        with self._db.read() as session:
            row = session.get(KeyRow, key_id)
            if row is None or row.deleted_at is not None:
                return None
            family = KeyFamily(row.family)
            if family is KeyFamily.SYMMETRIC:
                return _Known(family, None, "")
            key = repository.key_pair_from_row(row)
        return _Known(family, key, _pem(key))

    def _lock(self, session: Session, family: KeyFamily, key_id: str) -> KeyRow:
        row = repository.get_key_row(
            session, key_id, for_update=not self._db.is_sqlite, family=family
        )
        bump_state(session)
        return row

    def _record(
        self,
        session: Session,
        family: KeyFamily,
        verb: str,
        by: Caller,
        now: datetime,
        row: KeyRow,
    ) -> StoredOperation:
        """Persist the Operation (response: the key now) and, in its transaction, the event."""
        package = _PACKAGE[family]
        service = family.service
        caller = as_context(by, f"{service}.{verb}")
        operation = finished_operation(
            key_id=row.id,
            description=f"{verb} asymmetric {_kind(family)} key",
            created_by=caller.principal_id,
            now=now,
            metadata_type=f"{package}{verb}{service}Metadata",
            metadata={"key_id": row.id},
            response_type=package + service,
            response=key_pair_record(repository.key_pair_from_row(row)),
        )
        return persist_with_audit(session, operation, self._audit, caller)


_PACKAGE = {
    KeyFamily.ASYMMETRIC_SIGNATURE: "yandex.cloud.kms.v1.asymmetricsignature.",
    KeyFamily.ASYMMETRIC_ENCRYPTION: "yandex.cloud.kms.v1.asymmetricencryption.",
}
_KIND = {KeyFamily.ASYMMETRIC_SIGNATURE: "signature", KeyFamily.ASYMMETRIC_ENCRYPTION: "encryption"}
_ALGORITHMS: dict[KeyFamily, tuple[str, type[SignatureAlgorithm] | type[EncryptionAlgorithm]]] = {
    KeyFamily.ASYMMETRIC_SIGNATURE: ("signatureAlgorithm", SignatureAlgorithm),
    KeyFamily.ASYMMETRIC_ENCRYPTION: ("encryptionAlgorithm", EncryptionAlgorithm),
}


def _kind(family: KeyFamily) -> str:
    """ "signature" or "encryption"; a symmetric family here is a programming error."""
    kind = _KIND.get(family)
    if kind is None:
        raise Internal(log_detail=f"KeyPairService called for family {family!r}")
    return kind


def _algorithm(family: KeyFamily, value: int) -> AsymmetricAlgorithm:
    """The family's algorithm ``value``, or InvalidArgument naming the field."""
    field_name, algorithms = _ALGORITHMS[family]
    if value == 0:
        raise InvalidArgument(f"{field_name} is required")
    try:
        return algorithms(value)
    except ValueError:
        names = ", ".join(a.name for a in algorithms if a != 0)
        raise InvalidArgument(f"{field_name} must be one of {names}") from None


def _pem(key: AsymmetricKey) -> str:
    public_key = serialization.load_der_public_key(key.public_key_der)
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")
