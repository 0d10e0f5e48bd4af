"""One handler per method of the asymmetric key services, for every transport.

As ``handlers`` does for symmetric keys: the transport reads its wire message into the
request dataclass here, runs the handler through ``pipeline.run`` and renders the result.
The key services of both families share the handlers; each takes the family (from
``FAMILIES``, by the transport's path or servicer) so that a key of another family is
NotFound there.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kms_hsm.domain.asymmetric import (
    MAX_ASYMMETRIC_CIPHERTEXT,
    MAX_SIGN_HASH,
    MAX_SIGN_MESSAGE,
    AsymmetricKey,
    EncryptionAlgorithm,
    KeyFamily,
    SignatureAlgorithm,
)
from kms_hsm.domain.fields import (
    FieldError,
    check_identifier,
    check_text,
    field_mask,
    required,
    required_id,
)
from kms_hsm.domain.validation import MAX_DESCRIPTION, MAX_NAME
from kms_hsm.service import handlers
from kms_hsm.service.handlers import (
    BindingsPage,
    ListBindingsRequest,
    SetBindingsRequest,
    UpdateBindingsRequest,
)
from kms_hsm.service.key_pairs import KeyPairSpec, KeyPairUpdate
from kms_hsm.service.keys import Page
from kms_hsm.service.methods import ENCRYPTION_KEY, SIGNATURE_KEY, KeyPairMethods
from kms_hsm.service.pipeline import Call
from kms_hsm.store.repository import StoredOperation

# --- The two families ---


@dataclass(frozen=True, slots=True)
class Family:
    """What differs between the two key services: methods, field names, algorithms."""

    family: KeyFamily
    methods: KeyPairMethods
    algorithm_field: str  # the create request's field, as proto3 JSON spells it
    algorithms: type[SignatureAlgorithm] | type[EncryptionAlgorithm]


SIGNATURE = Family(
    KeyFamily.ASYMMETRIC_SIGNATURE, SIGNATURE_KEY, "signatureAlgorithm", SignatureAlgorithm
)
ENCRYPTION = Family(
    KeyFamily.ASYMMETRIC_ENCRYPTION, ENCRYPTION_KEY, "encryptionAlgorithm", EncryptionAlgorithm
)
FAMILIES = {f.family: f for f in (SIGNATURE, ENCRYPTION)}

# updateMask paths as proto3 JSON spells them (camelCase) -> KeyPairService.update's names.
UPDATE_PATHS = {
    "name": "name",
    "description": "description",
    "status": "status",
    "labels": "labels",
    "deletionProtection": "deletion_protection",
}


def _mutation(call: Call, op: StoredOperation) -> StoredOperation:
    # The service appended the audit event in the operation's own transaction.
    call.audited = True
    return op


def _bytes(name: str, value: bytes, max_len: int) -> bytes:
    required(name, value)
    if len(value) > max_len:
        raise FieldError(name, f"must be at most {max_len} bytes")
    return value


# --- AsymmetricSignatureCryptoService / AsymmetricEncryptionCryptoService ---


@dataclass(frozen=True, slots=True)
class SignRequest:
    """``AsymmetricSignRequest``."""

    key_id: str
    message: bytes = b""


@dataclass(frozen=True, slots=True)
class SignHashRequest:
    """``AsymmetricSignHashRequest``."""

    key_id: str
    hash: bytes = b""


@dataclass(frozen=True, slots=True)
class PublicKeyRequest:
    """``AsymmetricGetPublicKeyRequest`` (both families)."""

    key_id: str


@dataclass(frozen=True, slots=True)
class AsymmetricDecryptRequest:
    """``AsymmetricDecryptRequest``."""

    key_id: str
    ciphertext: bytes = b""


@dataclass(frozen=True, slots=True)
class SignResult:
    """``AsymmetricSignResponse`` / ``AsymmetricSignHashResponse``."""

    key_id: str
    signature: bytes


@dataclass(frozen=True, slots=True)
class PublicKeyResult:
    """``AsymmetricGetPublicKeyResponse``: PEM SubjectPublicKeyInfo."""

    key_id: str
    public_key: str


@dataclass(frozen=True, slots=True)
class AsymmetricDecryptResult:
    """``AsymmetricDecryptResponse``."""

    key_id: str
    plaintext: bytes


async def sign(call: Call, r: SignRequest) -> SignResult:
    """Sign: the message hashed as the key's algorithm says, signed in the token."""
    call.authorize_key(required_id("keyId", r.key_id))
    _bytes("message", r.message, MAX_SIGN_MESSAGE)
    return SignResult(r.key_id, await call.rt.key_pairs.sign(r.key_id, r.message))


async def sign_hash(call: Call, r: SignHashRequest) -> SignResult:
    """SignHash: a digest of exactly the algorithm's length, signed in the token."""
    call.authorize_key(required_id("keyId", r.key_id))
    _bytes("hash", r.hash, MAX_SIGN_HASH)
    return SignResult(r.key_id, await call.rt.key_pairs.sign_hash(r.key_id, r.hash))


async def signature_public_key(call: Call, r: PublicKeyRequest) -> PublicKeyResult:
    """AsymmetricSignatureCrypto.GetPublicKey."""
    call.authorize_key(required_id("keyId", r.key_id))
    pem = call.rt.key_pairs.public_key_pem(KeyFamily.ASYMMETRIC_SIGNATURE, r.key_id)
    return PublicKeyResult(r.key_id, pem)


async def decrypt(call: Call, r: AsymmetricDecryptRequest) -> AsymmetricDecryptResult:
    """AsymmetricEncryptionCrypto.Decrypt: RSA-OAEP-SHA-256 in the token."""
    call.authorize_key(required_id("keyId", r.key_id))
    _bytes("ciphertext", r.ciphertext, MAX_ASYMMETRIC_CIPHERTEXT)
    plaintext = await call.rt.key_pairs.decrypt(r.key_id, r.ciphertext)
    return AsymmetricDecryptResult(r.key_id, plaintext)


async def encryption_public_key(call: Call, r: PublicKeyRequest) -> PublicKeyResult:
    """AsymmetricEncryptionCrypto.GetPublicKey."""
    call.authorize_key(required_id("keyId", r.key_id))
    pem = call.rt.key_pairs.public_key_pem(KeyFamily.ASYMMETRIC_ENCRYPTION, r.key_id)
    return PublicKeyResult(r.key_id, pem)


# --- AsymmetricSignatureKeyService / AsymmetricEncryptionKeyService ---


@dataclass(frozen=True, slots=True)
class CreateKeyPairRequest:
    """``CreateAsymmetric{Signature,Encryption}KeyRequest``: the spec and the family."""

    family: Family
    spec: KeyPairSpec


@dataclass(frozen=True, slots=True)
class KeyPairRequest:
    """Get and Delete."""

    family: Family
    key_id: str


@dataclass(frozen=True, slots=True)
class ListKeyPairsRequest:
    """``ListAsymmetric…KeysRequest``."""

    family: Family
    folder_id: str
    page_size: int = 0
    page_token: str = ""


@dataclass(frozen=True, slots=True)
class ListKeyPairOperationsRequest:
    """``ListAsymmetric…KeyOperationsRequest``."""

    family: Family
    key_id: str
    page_size: int = 0
    page_token: str = ""


@dataclass(frozen=True, slots=True)
class UpdateKeyPairRequest:
    """``UpdateAsymmetric…KeyRequest``: only the fields the mask names (camelCase) change."""

    family: Family
    key_id: str
    update_mask: tuple[str, ...]
    values: KeyPairUpdate = field(default_factory=KeyPairUpdate)


def _check_labels(labels: dict[str, str]) -> None:
    for k, v in labels.items():
        check_text("labels", k)
        check_text("labels", v)


async def create_key(call: Call, r: CreateKeyPairRequest) -> StoredOperation:
    """Create: the pair is made in the token; a done Operation whose response is the key."""
    s = r.spec
    required("folderId", s.folder_id)
    check_identifier("folderId", s.folder_id)
    valid = {int(a) for a in r.family.algorithms if int(a) != 0}
    if s.algorithm == 0:
        raise FieldError(r.family.algorithm_field, "is required")
    if s.algorithm not in valid:
        raise FieldError(r.family.algorithm_field, "is not a known algorithm")
    check_text("name", s.name, MAX_NAME)
    check_text("description", s.description, MAX_DESCRIPTION)
    _check_labels(s.labels)
    call.authorize_folder(s.folder_id)
    op = await call.rt.key_pairs.create(r.family.family, s, call.context)
    call.key_id = op.key_id or ""
    return _mutation(call, op)


async def get_key(call: Call, r: KeyPairRequest) -> AsymmetricKey:
    """Get."""
    call.authorize_key(required_id("keyId", r.key_id))
    return call.rt.key_pairs.get(r.family.family, r.key_id)


async def list_keys(call: Call, r: ListKeyPairsRequest) -> Page:
    """List a folder's keys of the family."""
    required("folderId", r.folder_id)
    check_identifier("folderId", r.folder_id)
    call.authorize_folder(r.folder_id)
    return call.rt.key_pairs.list_keys(r.family.family, r.folder_id, r.page_size, r.page_token)


async def list_operations(call: Call, r: ListKeyPairOperationsRequest) -> Page:
    """ListOperations."""
    call.authorize_key(required_id("keyId", r.key_id))
    return call.rt.key_pairs.list_operations(r.family.family, r.key_id, r.page_size, r.page_token)


async def update_key(call: Call, r: UpdateKeyPairRequest) -> StoredOperation:
    """Update: only the fields in the mask change; named but absent fields reset."""
    v = r.values
    check_text("name", v.name, MAX_NAME)
    check_text("description", v.description, MAX_DESCRIPTION)
    _check_labels(v.labels or {})
    mask = field_mask("updateMask", r.update_mask, UPDATE_PATHS)
    call.authorize_key(required_id("keyId", r.key_id))
    op = call.rt.key_pairs.update(r.family.family, r.key_id, mask, v, call.context)
    return _mutation(call, op)


async def delete_key(call: Call, r: KeyPairRequest) -> StoredOperation:
    """Delete: the key is gone at once, its token objects destroyed right after."""
    call.authorize_key(required_id("keyId", r.key_id))
    return _mutation(call, await call.rt.key_pairs.delete(r.family.family, r.key_id, call.context))


# Access bindings: the symmetric handlers' rules and their family check, with this family
# (``Resource("key", id)`` is shared by every family).


async def list_access_bindings(call: Call, family: Family, r: ListBindingsRequest) -> BindingsPage:
    """ListAccessBindings of a key of ``family``."""
    return await handlers.list_access_bindings(call, r, family.family)


async def set_access_bindings(call: Call, family: Family, r: SetBindingsRequest) -> StoredOperation:
    """SetAccessBindings of a key of ``family``."""
    return await handlers.set_access_bindings(call, r, family.family)


async def update_access_bindings(
    call: Call, family: Family, r: UpdateBindingsRequest
) -> StoredOperation:
    """UpdateAccessBindings of a key of ``family``."""
    return await handlers.update_access_bindings(call, r, family.family)
