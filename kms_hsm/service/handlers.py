"""What each API method does once its request is read: one handler per method, every transport.

A transport reads its wire message into the request dataclass here (REST from proto3 JSON in
``kms_hsm.api``, gRPC from the generated messages in ``kms_hsm.grpc``), runs the handler as
the method's work through ``pipeline.run``, and renders the result. The field rules that name
a field (ids, required fields, the update mask, access bindings) are checked here, so both
transports refuse the same request with the same message; the services check the rest.
Request fields are the proto's, with proto3's defaults standing for "absent".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from kms_hsm.domain.asymmetric import KeyFamily
from kms_hsm.domain.fields import (
    FieldError,
    check_identifier,
    check_text,
    field_mask,
    required,
    required_id,
)
from kms_hsm.domain.model import Algorithm, Key
from kms_hsm.domain.validation import (
    MAX_AAD,
    MAX_DESCRIPTION,
    MAX_ID,
    MAX_NAME,
    MAX_PLAINTEXT,
    MAX_RESOURCE_ID,
    MAX_SUBJECT_ID,
)
from kms_hsm.errors import InvalidArgument, NotFound, PermissionDenied
from kms_hsm.service.access import Binding, Permission, Resource
from kms_hsm.service.crypto import DataKeyResult, DecryptResult, EncryptResult, ReEncryptResult
from kms_hsm.service.keys import KeySpec, KeyUpdate, Page
from kms_hsm.service.paging import check_page_size
from kms_hsm.service.pipeline import Call
from kms_hsm.store.repository import StoredOperation

# --- SymmetricCryptoService ---


@dataclass(frozen=True, slots=True)
class EncryptRequest:
    """``SymmetricEncryptRequest``."""

    key_id: str
    version_id: str = ""
    aad_context: bytes = b""
    plaintext: bytes = b""


@dataclass(frozen=True, slots=True)
class DecryptRequest:
    """``SymmetricDecryptRequest``."""

    key_id: str
    aad_context: bytes = b""
    ciphertext: bytes = b""


@dataclass(frozen=True, slots=True)
class ReEncryptRequest:
    """``SymmetricReEncryptRequest``."""

    key_id: str
    version_id: str = ""
    aad_context: bytes = b""
    source_key_id: str = ""
    source_aad_context: bytes = b""
    ciphertext: bytes = b""


@dataclass(frozen=True, slots=True)
class GenerateDataKeyRequest:
    """``GenerateDataKeyRequest``; spec SYMMETRIC_ALGORITHM_UNSPECIFIED means AES_256."""

    key_id: str
    version_id: str = ""
    aad_context: bytes = b""
    data_key_spec: Algorithm = Algorithm.SYMMETRIC_ALGORITHM_UNSPECIFIED
    skip_plaintext: bool = False


def _bytes(name: str, value: bytes, max_len: int) -> bytes:
    if len(value) > max_len:
        raise FieldError(name, f"must be at most {max_len} bytes")
    return value


async def encrypt(call: Call, r: EncryptRequest) -> EncryptResult:
    """Encrypt with the named version, or the primary one."""
    call.authorize_key(required_id("keyId", r.key_id))
    check_identifier("versionId", r.version_id)
    required("plaintext", r.plaintext)
    _bytes("plaintext", r.plaintext, MAX_PLAINTEXT)
    _bytes("aadContext", r.aad_context, MAX_AAD)
    result = await call.rt.crypto.encrypt(r.key_id, r.version_id, r.plaintext, r.aad_context)
    call.version_id = result.version_id
    return result


async def decrypt(call: Call, r: DecryptRequest) -> DecryptResult:
    """Decrypt; the version comes from the ciphertext."""
    call.authorize_key(required_id("keyId", r.key_id))
    required("ciphertext", r.ciphertext)
    _bytes("aadContext", r.aad_context, MAX_AAD)
    result = await call.rt.crypto.decrypt(r.key_id, r.ciphertext, r.aad_context)
    call.version_id = result.version_id
    return result


async def re_encrypt(call: Call, r: ReEncryptRequest) -> ReEncryptResult:
    """ReEncrypt: decrypt permission on the source key, encrypt permission on the target."""
    required("sourceKeyId", r.source_key_id)
    check_identifier("sourceKeyId", r.source_key_id)
    call.authorize_key(required_id("keyId", r.key_id))
    call.authorize_key(r.source_key_id, Permission.DECRYPT)
    check_identifier("versionId", r.version_id)
    _bytes("aadContext", r.aad_context, MAX_AAD)
    _bytes("sourceAadContext", r.source_aad_context, MAX_AAD)
    required("ciphertext", r.ciphertext)
    result = await call.rt.crypto.re_encrypt(
        r.key_id,
        r.version_id,
        r.aad_context,
        r.source_key_id,
        r.source_aad_context,
        r.ciphertext,
    )
    call.version_id = result.version_id
    return result


async def generate_data_key(call: Call, r: GenerateDataKeyRequest) -> DataKeyResult:
    """GenerateDataKey: a data key of ``data_key_spec``, wrapped (and in the clear)."""
    call.authorize_key(required_id("keyId", r.key_id))
    check_identifier("versionId", r.version_id)
    _bytes("aadContext", r.aad_context, MAX_AAD)
    result = await call.rt.crypto.generate_data_key(
        r.key_id, r.version_id, r.aad_context, r.data_key_spec, r.skip_plaintext
    )
    call.version_id = result.version_id
    return result


# --- SymmetricKeyService ---


# ``CreateSymmetricKeyRequest`` is what KeyService.create takes.
CreateKeyRequest = KeySpec


@dataclass(frozen=True, slots=True)
class KeyRequest:
    """A request naming one key: Get, Delete, Rotate."""

    key_id: str


@dataclass(frozen=True, slots=True)
class ListKeysRequest:
    """``ListSymmetricKeysRequest``."""

    folder_id: str
    page_size: int = 0
    page_token: str = ""


@dataclass(frozen=True, slots=True)
class ListKeyItemsRequest:
    """ListVersions and ListOperations: one key's items, a page at a time."""

    key_id: str
    page_size: int = 0
    page_token: str = ""


@dataclass(frozen=True, slots=True)
class UpdateKeyRequest:
    """``UpdateSymmetricKeyRequest``: only the fields the mask names (camelCase) change."""

    key_id: str
    update_mask: tuple[str, ...]
    values: KeyUpdate = field(default_factory=KeyUpdate)


@dataclass(frozen=True, slots=True)
class VersionRequest:
    """A request naming one version: SetPrimaryVersion, CancelVersionDestruction."""

    key_id: str
    version_id: str


@dataclass(frozen=True, slots=True)
class ScheduleDestructionRequest:
    """``ScheduleSymmetricKeyVersionDestructionRequest``; no period means 7 days."""

    key_id: str
    version_id: str
    pending_period: timedelta | None = None


# updateMask paths as proto3 JSON spells them (camelCase), which messages name; the gRPC
# transport turns the proto's snake_case paths into these first.
UPDATE_PATHS = {
    "name": "name",
    "description": "description",
    "status": "status",
    "labels": "labels",
    "defaultAlgorithm": "default_algorithm",
    "rotationPeriod": "rotation_period",
    "deletionProtection": "deletion_protection",
}


def _mutation(call: Call, op: StoredOperation) -> StoredOperation:
    # The service appended the audit event in the operation's own transaction.
    call.audited = True
    return op


async def create_key(call: Call, r: CreateKeyRequest) -> StoredOperation:
    """Create: a done Operation whose response is the key."""
    required("folderId", r.folder_id)
    check_identifier("folderId", r.folder_id)
    if r.default_algorithm is Algorithm.SYMMETRIC_ALGORITHM_UNSPECIFIED:
        raise FieldError("defaultAlgorithm", "is required")
    check_text("name", r.name, MAX_NAME)
    check_text("description", r.description, MAX_DESCRIPTION)
    for k, v in r.labels.items():
        check_text("labels", k)
        check_text("labels", v)
    call.authorize_folder(r.folder_id)
    op = await call.rt.keys.create(r, call.context)
    call.key_id = op.key_id or ""
    return _mutation(call, op)


async def get_key(call: Call, r: KeyRequest) -> Key:
    """Get."""
    call.authorize_key(required_id("keyId", r.key_id))
    return call.rt.keys.get(r.key_id)


async def list_keys(call: Call, r: ListKeysRequest) -> Page:
    """List a folder's keys."""
    required("folderId", r.folder_id)
    check_identifier("folderId", r.folder_id)
    call.authorize_folder(r.folder_id)
    return call.rt.keys.list_keys(r.folder_id, r.page_size, r.page_token)


async def list_versions(call: Call, r: ListKeyItemsRequest) -> Page:
    """ListVersions."""
    call.authorize_key(required_id("keyId", r.key_id))
    return call.rt.keys.list_versions(r.key_id, r.page_size, r.page_token)


async def list_operations(call: Call, r: ListKeyItemsRequest) -> Page:
    """ListOperations."""
    call.authorize_key(required_id("keyId", r.key_id))
    return call.rt.keys.list_operations(r.key_id, r.page_size, r.page_token)


async def update_key(call: Call, r: UpdateKeyRequest) -> StoredOperation:
    """Update: only the fields in the mask change; named but absent fields reset."""
    v = r.values
    check_text("name", v.name, MAX_NAME)
    check_text("description", v.description, MAX_DESCRIPTION)
    for k, value in (v.labels or {}).items():
        check_text("labels", k)
        check_text("labels", value)
    mask = field_mask("updateMask", r.update_mask, UPDATE_PATHS)
    call.authorize_key(required_id("keyId", r.key_id))
    return _mutation(call, call.rt.keys.update(r.key_id, mask, v, call.context))


async def delete_key(call: Call, r: KeyRequest) -> StoredOperation:
    """Delete: hidden at once, versions destroyed after 72 hours."""
    call.authorize_key(required_id("keyId", r.key_id))
    return _mutation(call, call.rt.keys.delete(r.key_id, call.context))


async def rotate_key(call: Call, r: KeyRequest) -> StoredOperation:
    """Rotate: a new primary version."""
    call.authorize_key(required_id("keyId", r.key_id))
    return _mutation(call, await call.rt.keys.rotate(r.key_id, call.context))


def _version(call: Call, r: VersionRequest | ScheduleDestructionRequest) -> None:
    required("versionId", r.version_id)
    check_identifier("versionId", r.version_id)
    call.authorize_key(required_id("keyId", r.key_id))
    call.version_id = r.version_id


async def set_primary_version(call: Call, r: VersionRequest) -> StoredOperation:
    """SetPrimaryVersion."""
    _version(call, r)
    return _mutation(call, call.rt.keys.set_primary_version(r.key_id, r.version_id, call.context))


async def schedule_version_destruction(
    call: Call, r: ScheduleDestructionRequest
) -> StoredOperation:
    """ScheduleVersionDestruction."""
    _version(call, r)
    op = call.rt.keys.schedule_version_destruction(
        r.key_id, r.version_id, r.pending_period, call.context
    )
    return _mutation(call, op)


async def cancel_version_destruction(call: Call, r: VersionRequest) -> StoredOperation:
    """CancelVersionDestruction."""
    _version(call, r)
    op = call.rt.keys.cancel_version_destruction(r.key_id, r.version_id, call.context)
    return _mutation(call, op)


# --- Access bindings (of a key; of a folder, kms-hsm's own) ---

# Longest pageToken of a bindings list (an offset).
MAX_BINDINGS_TOKEN = 100
MAX_ROLE_ID = 64
MAX_SUBJECT_TYPE = 100


def key_resource(key_id: str) -> Resource:
    """A key as a resource of access bindings (``resourceId``)."""
    return Resource("key", required_id("resourceId", key_id, MAX_RESOURCE_ID))


def folder_resource(folder_id: str) -> Resource:
    """A folder as a resource of access bindings."""
    return Resource("folder", required_id("folderId", folder_id, MAX_ID))


@dataclass(frozen=True, slots=True)
class BindingsPage:
    """``ListAccessBindingsResponse``."""

    bindings: list[Binding]
    next_page_token: str


@dataclass(frozen=True, slots=True)
class ListBindingsRequest:
    """``ListAccessBindingsRequest``."""

    resource: Resource
    page_size: int = 0
    page_token: str = ""


@dataclass(frozen=True, slots=True)
class SetBindingsRequest:
    """``SetAccessBindingsRequest``: every binding of the resource, replaced."""

    resource: Resource
    bindings: list[Binding]


@dataclass(frozen=True, slots=True)
class UpdateBindingsRequest:
    """``UpdateAccessBindingsRequest``: (``ADD`` | ``REMOVE``, binding) deltas."""

    resource: Resource
    deltas: list[tuple[str, Binding]]


def check_binding_fields(name: str, b: Binding) -> Binding:
    """An AccessBinding's fields as sent (``name``: its JSON path, for messages)."""
    required(f"{name}.roleId", b.role_id)
    check_text(f"{name}.roleId", b.role_id, MAX_ROLE_ID)
    required(f"{name}.subject.type", b.subject_type)
    check_text(f"{name}.subject.type", b.subject_type, MAX_SUBJECT_TYPE)
    if not b.subject_id:
        raise FieldError(f"{name}.subject.id", "is required (a string)")
    check_identifier(f"{name}.subject.id", b.subject_id, MAX_SUBJECT_ID)
    return b


def _authorize(call: Call, resource: Resource, family: KeyFamily) -> None:
    if resource.type == "key":
        call.authorize_key(resource.id)
        # Every key service's bindings name a "key": each keeps to its own family's keys.
        call.rt.key_pairs.check_family(family, resource.id)
    else:
        call.authorize_folder(resource.id)


async def list_access_bindings(
    call: Call, r: ListBindingsRequest, family: KeyFamily = KeyFamily.SYMMETRIC
) -> BindingsPage:
    """ListAccessBindings: offset pages of the resource's bindings (a key: of ``family``)."""
    size = check_page_size(r.page_size)
    check_text("pageToken", r.page_token, MAX_BINDINGS_TOKEN)
    _authorize(call, r.resource, family)
    offset = 0
    if r.page_token:
        if not r.page_token.isdigit():
            raise InvalidArgument("pageToken is invalid")
        offset = int(r.page_token)
    bindings = call.rt.access.list_bindings(r.resource)
    more = offset + size < len(bindings)
    return BindingsPage(bindings[offset : offset + size], str(offset + size) if more else "")


async def set_access_bindings(
    call: Call, r: SetBindingsRequest, family: KeyFamily = KeyFamily.SYMMETRIC
) -> StoredOperation:
    """SetAccessBindings (a key: of ``family``)."""
    for i, b in enumerate(r.bindings):
        check_binding_fields(f"accessBindings[{i}]", b)
    _authorize(call, r.resource, family)
    return _mutation(call, call.rt.access.set_bindings(r.resource, r.bindings, call.context))


async def update_access_bindings(
    call: Call, r: UpdateBindingsRequest, family: KeyFamily = KeyFamily.SYMMETRIC
) -> StoredOperation:
    """UpdateAccessBindings (a key: of ``family``)."""
    if not r.deltas:
        raise FieldError("accessBindingDeltas", "is required")
    for i, (action, b) in enumerate(r.deltas):
        if action not in ("ADD", "REMOVE"):
            raise FieldError(f"accessBindingDeltas[{i}].action", "must be ADD or REMOVE")
        check_binding_fields(f"accessBindingDeltas[{i}].accessBinding", b)
    _authorize(call, r.resource, family)
    return _mutation(call, call.rt.access.update_bindings(r.resource, r.deltas, call.context))


# --- OperationService ---


@dataclass(frozen=True, slots=True)
class OperationRequest:
    """``GetOperationRequest`` (and Cancel's)."""

    operation_id: str


async def get_operation(call: Call, r: OperationRequest) -> StoredOperation:
    """OperationService.Get: allowed to whoever may view the operation's key or folder.

    An operation on no key (a folder's or the instance's access bindings) is also
    readable by its author, who may have given up their own role on the folder in it.
    """
    operation_id = required_id("operationId", r.operation_id)
    op = call.rt.keys.get_operation(operation_id)
    try:
        if op.key_id is not None:
            call.authorize_key(op.key_id, deleted_too=True)
        elif op.created_by != call.principal.id:
            folder_id = operation_resource_id(op)
            if not folder_id:
                # No folder to check a role on: only the author may read it.
                raise NotFound(f"operation {operation_id} not found")
            call.authorize_folder(folder_id)
    except NotFound:
        raise NotFound(f"operation {operation_id} not found") from None
    except PermissionDenied:
        if op.key_id is not None:
            raise  # a role on the key, but not this one: as for the key itself
        raise NotFound(f"operation {operation_id} not found") from None
    return op


def operation_metadata(op: StoredOperation) -> dict[str, object]:
    """The operation's metadata fields; none when the stored metadata is not the usual shape.

    Rows are JSON written by this and earlier versions (or edited by hand): a missing or
    odd "value" must not turn a read into a 500.
    """
    value = op.metadata.get("value") if isinstance(op.metadata, dict) else None
    return value if isinstance(value, dict) else {}


def operation_resource_id(op: StoredOperation) -> str:
    """The folder (or key) an access-bindings operation was about; "" when none is stored."""
    resource_id = operation_metadata(op).get("resource_id")
    return resource_id if isinstance(resource_id, str) else ""
