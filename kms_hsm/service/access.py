"""Who may do what: Yandex KMS roles, access bindings, and the one authorisation decision.

Roles and what they grant (``ROLE_PERMISSIONS``), with Yandex's names and meanings:

=============================  ==========================================================
role                           grants
=============================  ==========================================================
kms.keys.encrypter             encrypt, generateDataKey (and reEncrypt's target side)
kms.keys.decrypter             decrypt (and reEncrypt's source side)
kms.keys.encrypterDecrypter    both of the above, plus Get
kms.auditor                    Get, List, ListVersions, ListOperations, ListAccessBindings,
                               Operation.Get
kms.viewer                     the same as kms.auditor
kms.editor                     viewer + Create, Update, Rotate, encrypt, decrypt
kms.admin                      editor + Delete, SetPrimaryVersion, Schedule/Cancel
                               VersionDestruction, Set/UpdateAccessBindings
kms.asymmetricSignatureKeys.   Sign, SignHash (and GetPublicKey) of signature keys
  signer
kms.asymmetricSignatureKeys.   GetPublicKey of signature keys
  publicKeyViewer
kms.asymmetricEncryptionKeys.  Decrypt (and GetPublicKey) of encryption keys
  decrypter
kms.asymmetricEncryptionKeys.  GetPublicKey of encryption keys
  publicKeyViewer
=============================  ==========================================================

The asymmetric key services use the same metadata permissions (GET, LIST, CREATE, ...) as
symmetric keys; their data-plane permissions are their own, so that a symmetric
``kms.keys.decrypter`` grants no RSA decryption. Viewers and auditors read metadata only,
not public keys; ``kms.editor`` (and so ``kms.admin``) includes all four asymmetric roles.

Bindings on a folder apply to every key in it; bindings on a key apply to that key;
bindings on the instance (``resource_type="instance"``, id ``*``) apply everywhere (the
first admin gets kms.admin there). A principal with no role at all on a key gets
``NotFound`` for it, exactly as for a key that does not exist, so that keys in folders it
cannot see are not revealed; a principal that can see the key but lacks the permission
gets ``PermissionDenied``.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, or_, select, tuple_
from sqlalchemy.orm import Session

from kms_hsm.audit.store import AuditLog
from kms_hsm.domain import validation
from kms_hsm.domain.asymmetric import KeyFamily
from kms_hsm.errors import InvalidArgument, NotFound, PermissionDenied
from kms_hsm.service.cache import MissCache, StateCache
from kms_hsm.service.context import CallContext, as_context
from kms_hsm.service.keys import Clock, utc_now
from kms_hsm.service.operations import finished_operation, persist_with_audit
from kms_hsm.store import repository
from kms_hsm.store.engine import Database
from kms_hsm.store.repository import StoredOperation
from kms_hsm.store.state import StateWatch, bump_state
from kms_hsm.store.tables import AccessBindingRow, KeyRow


class Permission(enum.Enum):
    """One action on a key or folder."""

    GET = "get"
    LIST = "list"
    LIST_VERSIONS = "listVersions"
    LIST_OPERATIONS = "listOperations"
    LIST_ACCESS_BINDINGS = "listAccessBindings"
    GET_OPERATION = "getOperation"
    CREATE = "create"
    UPDATE = "update"
    ROTATE = "rotate"
    DELETE = "delete"
    SET_PRIMARY_VERSION = "setPrimaryVersion"
    SCHEDULE_VERSION_DESTRUCTION = "scheduleVersionDestruction"
    CANCEL_VERSION_DESTRUCTION = "cancelVersionDestruction"
    SET_ACCESS_BINDINGS = "setAccessBindings"
    UPDATE_ACCESS_BINDINGS = "updateAccessBindings"
    ENCRYPT = "encrypt"
    DECRYPT = "decrypt"
    SIGN = "sign"  # Sign and SignHash
    GET_SIGNATURE_PUBLIC_KEY = "asymmetricSignatureKeys.getPublicKey"
    ASYMMETRIC_DECRYPT = "asymmetricEncryptionKeys.decrypt"
    GET_ENCRYPTION_PUBLIC_KEY = "asymmetricEncryptionKeys.getPublicKey"


P = Permission
_VIEW = frozenset(
    {P.GET, P.LIST, P.LIST_VERSIONS, P.LIST_OPERATIONS, P.LIST_ACCESS_BINDINGS, P.GET_OPERATION}
)
_SIGNER = frozenset({P.SIGN, P.GET_SIGNATURE_PUBLIC_KEY})
_ASYMMETRIC_DECRYPTER = frozenset({P.ASYMMETRIC_DECRYPT, P.GET_ENCRYPTION_PUBLIC_KEY})
_EDIT = (
    _VIEW | {P.CREATE, P.UPDATE, P.ROTATE, P.ENCRYPT, P.DECRYPT} | _SIGNER | _ASYMMETRIC_DECRYPTER
)
ROLE_PERMISSIONS: dict[str, frozenset[Permission]] = {
    "kms.asymmetricSignatureKeys.signer": _SIGNER,
    "kms.asymmetricSignatureKeys.publicKeyViewer": frozenset({P.GET_SIGNATURE_PUBLIC_KEY}),
    "kms.asymmetricEncryptionKeys.decrypter": _ASYMMETRIC_DECRYPTER,
    "kms.asymmetricEncryptionKeys.publicKeyViewer": frozenset({P.GET_ENCRYPTION_PUBLIC_KEY}),
    "kms.keys.encrypter": frozenset({P.ENCRYPT}),
    "kms.keys.decrypter": frozenset({P.DECRYPT}),
    "kms.keys.encrypterDecrypter": frozenset({P.ENCRYPT, P.DECRYPT, P.GET}),
    "kms.auditor": _VIEW,
    "kms.viewer": _VIEW,
    "kms.editor": _EDIT,
    "kms.admin": _EDIT
    | {
        P.DELETE,
        P.SET_PRIMARY_VERSION,
        P.SCHEDULE_VERSION_DESTRUCTION,
        P.CANCEL_VERSION_DESTRUCTION,
        P.SET_ACCESS_BINDINGS,
        P.UPDATE_ACCESS_BINDINGS,
    },
}

SUBJECT_TYPES = frozenset({"userAccount", "serviceAccount", "federatedUser", "system"})
ALL_AUTHENTICATED = ("system", "allAuthenticatedUsers")
INSTANCE = ("instance", "*")
_RESOURCE_TYPES = frozenset({"key", "folder", "instance"})


@dataclass(frozen=True, slots=True)
class Binding:
    """``AccessBinding``: a role for a subject."""

    role_id: str
    subject_type: str
    subject_id: str


@dataclass(frozen=True, slots=True)
class Resource:
    """Where a binding lives."""

    type: str
    id: str


def check_binding(binding: Binding) -> Binding:
    """Role and subject as the contract allows them."""
    if binding.role_id not in ROLE_PERMISSIONS:
        raise InvalidArgument(
            f"roleId {binding.role_id!r} is not one of {', '.join(sorted(ROLE_PERMISSIONS))}"
        )
    if binding.subject_type not in SUBJECT_TYPES:
        raise InvalidArgument(f"subject.type must be one of {', '.join(sorted(SUBJECT_TYPES))}")
    validation.check_id("subject.id", binding.subject_id, max_len=validation.MAX_SUBJECT_ID)
    if binding.subject_type == "system" and binding.subject_id != "allAuthenticatedUsers":
        raise InvalidArgument("system subjects supported here: allAuthenticatedUsers")
    return binding


class _NoSuchKey(Exception):
    """Internal: a key id with no key, kept out of the cache of known keys."""


class AccessService:
    """Stores bindings and answers "may this principal do that here?"."""

    def __init__(
        self,
        db: Database,
        audit: AuditLog | None = None,
        clock: Clock = utc_now,
        watch: StateWatch | None = None,
    ) -> None:
        self._db = db
        self._audit = audit
        self._clock = clock
        self._granted: StateCache[frozenset[Permission]] = StateCache(watch)
        # Known keys and unknown ids apart: random ids evict only other misses.
        self._folders: StateCache[tuple[str, bool]] = StateCache(watch)
        self._no_key = MissCache(watch)
        self._no_key_granted = MissCache(watch)
        self._allowed: StateCache[bool] = StateCache(watch)

    def permissions(
        self, principal_id: str, resources: Iterable[Resource]
    ) -> frozenset[Permission]:
        """Everything ``principal_id`` may do through bindings on any of ``resources``."""
        places = tuple([(r.type, r.id) for r in resources] + [INSTANCE])
        return self._granted.get(
            (principal_id, places), lambda: self._load_permissions(principal_id, places)
        )

    def _load_permissions(
        self, principal_id: str, places: tuple[tuple[str, str], ...]
    ) -> frozenset[Permission]:
        with self._db.read() as session:
            roles = session.scalars(
                select(AccessBindingRow.role_id).where(
                    tuple_(AccessBindingRow.resource_type, AccessBindingRow.resource_id).in_(
                        places
                    ),
                    or_(
                        tuple_(AccessBindingRow.subject_type, AccessBindingRow.subject_id)
                        == ("serviceAccount", principal_id),
                        tuple_(AccessBindingRow.subject_type, AccessBindingRow.subject_id)
                        == ALL_AUTHENTICATED,
                    ),
                )
            ).all()
        granted: set[Permission] = set()
        for role in roles:
            granted |= ROLE_PERMISSIONS.get(role, frozenset())
        return frozenset(granted)

    def authorize_key(
        self, principal_id: str, permission: Permission, key_id: str, *, deleted_too: bool = False
    ) -> None:
        """Allow, or raise NotFound (no role at all) / PermissionDenied (some role)."""
        # Grants are remembered until the next state change; refusals are worked out anew.
        self._allowed.get(
            (principal_id, permission, key_id, deleted_too),
            lambda: self._authorize_key(principal_id, permission, key_id, deleted_too),
        )

    def _authorize_key(
        self, principal_id: str, permission: Permission, key_id: str, deleted_too: bool
    ) -> bool:
        found = self._find_key(key_id)
        folder_id, deleted = found or ("", False)
        # An unknown key takes the same steps as a key the caller has no role on: one
        # folder lookup and one permissions lookup, each cached until the next state
        # change. Unknown ids were looked up anew on every request (~0.95 ms against
        # ~0.55 ms), which told a caller with no role which ids exist.
        if found is None:
            # The same two lookups as for a key without a role, in the misses' own cache.
            self._no_key_granted.get(
                (principal_id, key_id), lambda: self._no_key_permissions(principal_id, key_id)
            )
            raise NotFound(f"key {key_id} not found")
        granted = self.permissions(
            principal_id, [Resource("key", key_id), Resource("folder", folder_id)]
        )
        if deleted and not deleted_too:
            raise NotFound(f"key {key_id} not found")
        if permission in granted:
            return True
        if not granted:
            raise NotFound(f"key {key_id} not found")
        raise PermissionDenied(f"permission denied: {permission.value} on key {key_id}")

    def _find_key(self, key_id: str) -> tuple[str, bool] | None:
        """(folder id, deleted) of a key, None for no such key; both cached until a change."""
        try:
            return self._folders.get(key_id, lambda: self._load_known(key_id))
        except _NoSuchKey:
            return None

    def _load_known(self, key_id: str) -> tuple[str, bool]:
        found = self._no_key.get(key_id, lambda: self._load_folder(key_id))
        if found is None:
            raise _NoSuchKey  # not cached among the hits
        return found

    def _no_key_permissions(self, principal_id: str, key_id: str) -> None:
        self._load_permissions(principal_id, (("key", key_id), ("folder", ""), INSTANCE))

    def _load_folder(self, key_id: str) -> tuple[str, bool] | None:
        """(folder id, deleted) of a key; None when there is no such key.

        None is cached like a key: key ids are random (85 bits) and made only by Create,
        so no request can name a key before it exists.
        """
        with self._db.read() as session:
            row = session.get(KeyRow, key_id)
            if row is None:
                return None
            return row.folder_id, row.deleted_at is not None

    def authorize_folder(self, principal_id: str, permission: Permission, folder_id: str) -> None:
        """Allow a folder-level action (Create, List), or raise PermissionDenied."""
        if permission not in self.permissions(principal_id, [Resource("folder", folder_id)]):
            raise PermissionDenied(f"permission denied: {permission.value} in folder {folder_id}")

    def list_bindings(self, resource: Resource) -> list[Binding]:
        """Bindings on one resource, in a stable order."""
        with self._db.read() as session:
            rows = session.scalars(
                select(AccessBindingRow)
                .where(
                    AccessBindingRow.resource_type == resource.type,
                    AccessBindingRow.resource_id == resource.id,
                )
                .order_by(AccessBindingRow.id)
            ).all()
        return [Binding(r.role_id, r.subject_type, r.subject_id) for r in rows]

    def set_bindings(
        self, resource: Resource, bindings: list[Binding], by: str | CallContext
    ) -> StoredOperation:
        """Replace every binding on ``resource``; returns the finished Operation."""
        self._check_resource(resource)
        if len(bindings) > 1000:
            raise InvalidArgument("accessBindings: at most 1000")
        for b in bindings:
            check_binding(b)
        now = self._clock()
        with self._db.write() as session:
            service = self._lock(session, resource)
            session.execute(
                delete(AccessBindingRow).where(
                    AccessBindingRow.resource_type == resource.type,
                    AccessBindingRow.resource_id == resource.id,
                )
            )
            for b in dict.fromkeys(bindings):
                session.add(_row(resource, b, now))
            return self._record(session, resource, service, "SetAccessBindings", by, now)

    def update_bindings(
        self, resource: Resource, deltas: list[tuple[str, Binding]], by: str | CallContext
    ) -> StoredOperation:
        """Apply ADD/REMOVE deltas; re-adding or removing a missing binding is a no-op."""
        self._check_resource(resource)
        if not 1 <= len(deltas) <= 1000:
            raise InvalidArgument("accessBindingDeltas: 1..1000 items")
        for action, b in deltas:
            if action not in ("ADD", "REMOVE"):
                raise InvalidArgument("accessBindingDeltas.action must be ADD or REMOVE")
            check_binding(b)
        now = self._clock()
        with self._db.write() as session:
            service = self._lock(session, resource)
            existing = {
                Binding(r.role_id, r.subject_type, r.subject_id): r
                for r in session.scalars(
                    select(AccessBindingRow).where(
                        AccessBindingRow.resource_type == resource.type,
                        AccessBindingRow.resource_id == resource.id,
                    )
                )
            }
            for action, b in deltas:
                if action == "ADD" and b not in existing:
                    row = _row(resource, b, now)
                    session.add(row)
                    existing[b] = row
                elif action == "REMOVE" and b in existing:
                    session.delete(existing.pop(b))
                    session.flush()
            return self._record(session, resource, service, "UpdateAccessBindings", by, now)

    def _lock(self, session: Session, resource: Resource) -> str:
        """Bump the state (and lock the key); the API service of the resource."""
        bump_state(session)
        # Key bindings change under the key's lock, like every other change to the key.
        if resource.type == "key":
            # Any family: the handler checked that the key is of the path's family.
            row = repository.get_key_row(
                session, resource.id, for_update=not self._db.is_sqlite, family=None
            )
            return KeyFamily(row.family).service
        return "Folder"

    def _record(
        self,
        session: Session,
        resource: Resource,
        service: str,
        rpc: str,
        by: str | CallContext,
        now: datetime,
    ) -> StoredOperation:
        caller = as_context(by, f"{service}.{rpc}")
        operation = finished_operation(
            key_id=resource.id if resource.type == "key" else None,
            description=f"{rpc[: -len('AccessBindings')]} access bindings".capitalize(),
            created_by=caller.principal_id,
            now=now,
            metadata_type=f"yandex.cloud.access.{rpc}Metadata",
            metadata={"resource_id": resource.id},
            response_type="google.protobuf.Empty",
            response={},
        )
        return persist_with_audit(session, operation, self._audit, caller)

    @staticmethod
    def _check_resource(resource: Resource) -> None:
        if resource.type not in _RESOURCE_TYPES:
            raise InvalidArgument("resource type must be key, folder or instance")
        if resource.type == "instance":
            if resource != Resource(*INSTANCE):
                raise InvalidArgument(f"the instance's resourceId is {INSTANCE[1]!r}")
            return
        # Folder ids are at most 50 wherever they appear (keys' folderId).
        longest = validation.MAX_ID if resource.type == "folder" else validation.MAX_RESOURCE_ID
        validation.check_id("resourceId", resource.id, max_len=longest)


def _row(resource: Resource, b: Binding, now: datetime) -> AccessBindingRow:
    return AccessBindingRow(
        resource_type=resource.type,
        resource_id=resource.id,
        role_id=b.role_id,
        subject_type=b.subject_type,
        subject_id=b.subject_id,
        created_at=now,
    )
