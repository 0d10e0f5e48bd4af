"""One declaration per REST method: how to build its request and parse its answer.

Each function here takes the method's arguments and returns a ``Call``: the HTTP method, the
path, the query, the JSON body, whether the call is safe to repeat after a read timeout, and
the parser of the answer. ``Client`` and ``AsyncClient`` expose these same functions as their
methods (see ``kms_hsm.client._api``), so the sync and the async client cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Generic, TypeVar
from urllib.parse import quote

from kms_hsm.client.models import (
    AccessBinding,
    AccessBindingDelta,
    AsymmetricDecryptResult,
    AsymmetricEncryptionKey,
    AsymmetricSignatureKey,
    BindingPage,
    DataKeyResult,
    DecryptResult,
    EncryptionKeyPage,
    EncryptResult,
    IamToken,
    Json,
    KeyPage,
    Operation,
    OperationPage,
    PublicKey,
    ReEncryptResult,
    SignatureKeyPage,
    SignResult,
    SymmetricKey,
    SymmetricKeyVersion,
    VersionPage,
    b64,
    duration,
)

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)
PageT = TypeVar("PageT")

KEYS = "/kms/v1/keys"
SIGNATURE_KEYS = "/kms/v1/asymmetricSignatureKeys"
ENCRYPTION_KEYS = "/kms/v1/asymmetricEncryptionKeys"
FOLDERS = "/kms-hsm/v1/folders"


@dataclass(frozen=True)
class Call(Generic[T_co]):
    """A REST request and the parser of its answer.

    ``operation``: the answer is an Operation; the client waits for it to be done and parses
    its ``response`` (raising its ``error``). ``idempotent``: the call may be sent again after
    the request may have reached the server (read timeout, connection reset).
    """

    method: str
    path: str
    parse: Callable[[Json], T_co]
    # Plaintext and aadContext travel in the body: never in a repr (a traceback, a debug log).
    body: Mapping[str, Any] | None = field(default=None, repr=False)
    query: Mapping[str, str] | None = None
    idempotent: bool = False
    operation: bool = False

    def raw_operation(self) -> Call[Operation]:
        """The same request, answered with the Operation itself (not waited for)."""
        return Call(
            self.method,
            self.path,
            Operation.from_json,
            self.body,
            self.query,
            self.idempotent,
            False,
        )


def _seg(value: str) -> str:
    # A path segment: an id with "/", "?" or ":" must not change the route.
    return quote(value, safe="")


def _page_query(page_size: int | None, page_token: str | None, **extra: str) -> dict[str, str]:
    q = {k: v for k, v in extra.items()}
    if page_size is not None:
        q["pageSize"] = str(page_size)
    if page_token:
        q["pageToken"] = page_token
    return q


def _compact(body: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if v is not None}


def _page_parser(
    cls: Callable[[list[T], str], PageT], field: str, item: Callable[[Json], T]
) -> Callable[[Json], PageT]:
    def parse(j: Json) -> PageT:
        return cls([item(x) for x in j.get(field) or ()], j.get("nextPageToken", ""))

    return parse


def _update_body(fields: Mapping[str, Any]) -> dict[str, Any]:
    """The PATCH body: the fields given, and an updateMask naming exactly them."""
    given = {k: v for k, v in fields.items() if v is not None}
    return {"updateMask": ",".join(given), **given}


def _empty(_: Json) -> None:
    return None


# --- SymmetricCrypto ---------------------------------------------------------------------


def encrypt(
    key_id: str,
    plaintext: bytes,
    *,
    aad_context: bytes | None = None,
    version_id: str | None = None,
) -> Call[EncryptResult]:
    """SymmetricCrypto.Encrypt with the key's primary version (or ``version_id``)."""
    body = {
        "plaintext": b64(plaintext),
        "aadContext": b64(aad_context) if aad_context is not None else None,
        "versionId": version_id,
    }
    return Call(
        "POST",
        f"{KEYS}/{_seg(key_id)}:encrypt",
        EncryptResult.from_json,
        _compact(body),
        idempotent=True,
    )


def decrypt(
    key_id: str, ciphertext: bytes, *, aad_context: bytes | None = None
) -> Call[DecryptResult]:
    """SymmetricCrypto.Decrypt."""
    body = {
        "ciphertext": b64(ciphertext),
        "aadContext": b64(aad_context) if aad_context is not None else None,
    }
    return Call(
        "POST",
        f"{KEYS}/{_seg(key_id)}:decrypt",
        DecryptResult.from_json,
        _compact(body),
        idempotent=True,
    )


def generate_data_key(
    key_id: str,
    *,
    data_key_spec: str = "AES_256",
    aad_context: bytes | None = None,
    skip_plaintext: bool = False,
    version_id: str | None = None,
) -> Call[DataKeyResult]:
    """SymmetricCrypto.GenerateDataKey: a fresh data key, encrypted (and in plaintext)."""
    body = {
        "dataKeySpec": data_key_spec,
        "aadContext": b64(aad_context) if aad_context is not None else None,
        "skipPlaintext": skip_plaintext or None,
        "versionId": version_id,
    }
    return Call(
        "POST",
        f"{KEYS}/{_seg(key_id)}:generateDataKey",
        DataKeyResult.from_json,
        _compact(body),
        idempotent=True,
    )


def re_encrypt(
    key_id: str,
    ciphertext: bytes,
    *,
    source_key_id: str,
    aad_context: bytes | None = None,
    source_aad_context: bytes | None = None,
    version_id: str | None = None,
) -> Call[ReEncryptResult]:
    """SymmetricCrypto.ReEncrypt: decrypt with ``source_key_id``, encrypt with ``key_id``."""
    body = {
        "ciphertext": b64(ciphertext),
        "sourceKeyId": source_key_id,
        "aadContext": b64(aad_context) if aad_context is not None else None,
        "sourceAadContext": b64(source_aad_context) if source_aad_context is not None else None,
        "versionId": version_id,
    }
    return Call(
        "POST",
        f"{KEYS}/{_seg(key_id)}:reEncrypt",
        ReEncryptResult.from_json,
        _compact(body),
        idempotent=True,
    )


# --- SymmetricKeyService -----------------------------------------------------------------


def create_key(
    folder_id: str,
    *,
    name: str = "",
    description: str = "",
    labels: Mapping[str, str] | None = None,
    default_algorithm: str = "AES_256",
    rotation_period: timedelta | None = None,
    deletion_protection: bool = False,
) -> Call[SymmetricKey]:
    """SymmetricKeyService.Create; waits for the Operation and returns the key."""
    body = {
        "folderId": folder_id,
        "name": name or None,
        "description": description or None,
        "labels": dict(labels) if labels else None,
        "defaultAlgorithm": default_algorithm,
        "rotationPeriod": duration(rotation_period) if rotation_period is not None else None,
        "deletionProtection": deletion_protection or None,
    }
    return Call("POST", KEYS, SymmetricKey.from_json, _compact(body), operation=True)


def get_key(key_id: str) -> Call[SymmetricKey]:
    """SymmetricKeyService.Get."""
    return Call("GET", f"{KEYS}/{_seg(key_id)}", SymmetricKey.from_json, idempotent=True)


def list_keys(
    folder_id: str, *, page_size: int | None = None, page_token: str | None = None
) -> Call[KeyPage]:
    """SymmetricKeyService.List: one page of the folder's keys."""
    parse = _page_parser(KeyPage, "keys", SymmetricKey.from_json)
    query = _page_query(page_size, page_token, folderId=folder_id)
    return Call("GET", KEYS, parse, query=query, idempotent=True)


def update_key(
    key_id: str,
    *,
    name: str | None = None,
    description: str | None = None,
    labels: Mapping[str, str] | None = None,
    status: str | None = None,
    default_algorithm: str | None = None,
    rotation_period: timedelta | None = None,
    deletion_protection: bool | None = None,
) -> Call[SymmetricKey]:
    """SymmetricKeyService.Update: the updateMask names exactly the arguments given."""
    body = _update_body(
        {
            "name": name,
            "description": description,
            "labels": dict(labels) if labels is not None else None,
            "status": status,
            "defaultAlgorithm": default_algorithm,
            "rotationPeriod": duration(rotation_period) if rotation_period is not None else None,
            "deletionProtection": deletion_protection,
        }
    )
    return Call("PATCH", f"{KEYS}/{_seg(key_id)}", SymmetricKey.from_json, body, operation=True)


def delete_key(key_id: str) -> Call[SymmetricKey]:
    """SymmetricKeyService.Delete; returns the deleted key."""
    return Call("DELETE", f"{KEYS}/{_seg(key_id)}", SymmetricKey.from_json, operation=True)


def _new_primary(j: Json) -> SymmetricKeyVersion:
    # Rotate's Operation answers with the SymmetricKey (as Yandex's does); the new
    # version is its primary.
    version = SymmetricKey.from_json(j).primary_version
    if version is None:
        raise ValueError("the rotated key has no primary version")
    return version


def rotate_key(key_id: str) -> Call[SymmetricKeyVersion]:
    """SymmetricKeyService.Rotate; returns the new primary version (the raw Operation's
    response is the SymmetricKey)."""
    return Call("POST", f"{KEYS}/{_seg(key_id)}:rotate", _new_primary, {}, operation=True)


def list_versions(
    key_id: str, *, page_size: int | None = None, page_token: str | None = None
) -> Call[VersionPage]:
    """SymmetricKeyService.ListVersions: one page of the key's versions."""
    parse = _page_parser(VersionPage, "keyVersions", SymmetricKeyVersion.from_json)
    return Call(
        "GET",
        f"{KEYS}/{_seg(key_id)}/versions",
        parse,
        query=_page_query(page_size, page_token),
        idempotent=True,
    )


def set_primary_version(key_id: str, version_id: str) -> Call[SymmetricKey]:
    """SymmetricKeyService.SetPrimaryVersion; returns the key."""
    return Call(
        "POST",
        f"{KEYS}/{_seg(key_id)}:setPrimaryVersion",
        SymmetricKey.from_json,
        {"versionId": version_id},
        operation=True,
    )


def schedule_version_destruction(
    key_id: str, version_id: str, *, pending_period: timedelta | None = None
) -> Call[SymmetricKeyVersion]:
    """SymmetricKeyService.ScheduleVersionDestruction; returns the version."""
    body = _compact(
        {
            "versionId": version_id,
            "pendingPeriod": duration(pending_period) if pending_period is not None else None,
        }
    )
    return Call(
        "POST",
        f"{KEYS}/{_seg(key_id)}:scheduleVersionDestruction",
        SymmetricKeyVersion.from_json,
        body,
        operation=True,
    )


def cancel_version_destruction(key_id: str, version_id: str) -> Call[SymmetricKeyVersion]:
    """SymmetricKeyService.CancelVersionDestruction; returns the version."""
    return Call(
        "POST",
        f"{KEYS}/{_seg(key_id)}:cancelVersionDestruction",
        SymmetricKeyVersion.from_json,
        {"versionId": version_id},
        operation=True,
    )


def list_key_operations(
    key_id: str, *, page_size: int | None = None, page_token: str | None = None
) -> Call[OperationPage]:
    """SymmetricKeyService.ListOperations: one page of the key's operations."""
    parse = _page_parser(OperationPage, "operations", Operation.from_json)
    return Call(
        "GET",
        f"{KEYS}/{_seg(key_id)}/operations",
        parse,
        query=_page_query(page_size, page_token),
        idempotent=True,
    )


# --- OperationService --------------------------------------------------------------------


def get_operation(operation_id: str) -> Call[Operation]:
    """OperationService.Get."""
    return Call("GET", f"/operations/{_seg(operation_id)}", Operation.from_json, idempotent=True)


# --- Access bindings (keys of each family, folders) --------------------------------------


def _list_bindings(
    base: str, resource_id: str, page_size: int | None, page_token: str | None
) -> Call[BindingPage]:
    parse = _page_parser(BindingPage, "accessBindings", AccessBinding.from_json)
    return Call(
        "GET",
        f"{base}/{_seg(resource_id)}:listAccessBindings",
        parse,
        query=_page_query(page_size, page_token),
        idempotent=True,
    )


def _set_bindings(base: str, resource_id: str, bindings: Iterable[AccessBinding]) -> Call[None]:
    body = {"accessBindings": [b.to_json() for b in bindings]}
    return Call(
        "POST", f"{base}/{_seg(resource_id)}:setAccessBindings", _empty, body, operation=True
    )


def _update_bindings(
    base: str, resource_id: str, deltas: Iterable[AccessBindingDelta]
) -> Call[None]:
    body = {"accessBindingDeltas": [d.to_json() for d in deltas]}
    return Call(
        "POST", f"{base}/{_seg(resource_id)}:updateAccessBindings", _empty, body, operation=True
    )


def list_key_access_bindings(
    key_id: str, *, page_size: int | None = None, page_token: str | None = None
) -> Call[BindingPage]:
    """SymmetricKeyService.ListAccessBindings."""
    return _list_bindings(KEYS, key_id, page_size, page_token)


def set_key_access_bindings(key_id: str, bindings: Iterable[AccessBinding]) -> Call[None]:
    """SymmetricKeyService.SetAccessBindings: replace the key's bindings."""
    return _set_bindings(KEYS, key_id, bindings)


def update_key_access_bindings(key_id: str, deltas: Iterable[AccessBindingDelta]) -> Call[None]:
    """SymmetricKeyService.UpdateAccessBindings: add or remove bindings."""
    return _update_bindings(KEYS, key_id, deltas)


def list_signature_key_access_bindings(
    key_id: str, *, page_size: int | None = None, page_token: str | None = None
) -> Call[BindingPage]:
    """AsymmetricSignatureKeyService.ListAccessBindings."""
    return _list_bindings(SIGNATURE_KEYS, key_id, page_size, page_token)


def set_signature_key_access_bindings(key_id: str, bindings: Iterable[AccessBinding]) -> Call[None]:
    """AsymmetricSignatureKeyService.SetAccessBindings."""
    return _set_bindings(SIGNATURE_KEYS, key_id, bindings)


def update_signature_key_access_bindings(
    key_id: str, deltas: Iterable[AccessBindingDelta]
) -> Call[None]:
    """AsymmetricSignatureKeyService.UpdateAccessBindings."""
    return _update_bindings(SIGNATURE_KEYS, key_id, deltas)


def list_encryption_key_access_bindings(
    key_id: str, *, page_size: int | None = None, page_token: str | None = None
) -> Call[BindingPage]:
    """AsymmetricEncryptionKeyService.ListAccessBindings."""
    return _list_bindings(ENCRYPTION_KEYS, key_id, page_size, page_token)


def set_encryption_key_access_bindings(
    key_id: str, bindings: Iterable[AccessBinding]
) -> Call[None]:
    """AsymmetricEncryptionKeyService.SetAccessBindings."""
    return _set_bindings(ENCRYPTION_KEYS, key_id, bindings)


def update_encryption_key_access_bindings(
    key_id: str, deltas: Iterable[AccessBindingDelta]
) -> Call[None]:
    """AsymmetricEncryptionKeyService.UpdateAccessBindings."""
    return _update_bindings(ENCRYPTION_KEYS, key_id, deltas)


def list_folder_access_bindings(
    folder_id: str, *, page_size: int | None = None, page_token: str | None = None
) -> Call[BindingPage]:
    """The folder's bindings (kms-hsm's own folder API)."""
    return _list_bindings(FOLDERS, folder_id, page_size, page_token)


def set_folder_access_bindings(folder_id: str, bindings: Iterable[AccessBinding]) -> Call[None]:
    """Replace the folder's bindings."""
    return _set_bindings(FOLDERS, folder_id, bindings)


def update_folder_access_bindings(
    folder_id: str, deltas: Iterable[AccessBindingDelta]
) -> Call[None]:
    """Add or remove bindings of the folder."""
    return _update_bindings(FOLDERS, folder_id, deltas)


# --- Asymmetric signature keys -----------------------------------------------------------


def create_signature_key(
    folder_id: str,
    *,
    signature_algorithm: str = "ECDSA_NIST_P256_SHA_256",
    name: str = "",
    description: str = "",
    labels: Mapping[str, str] | None = None,
    deletion_protection: bool = False,
) -> Call[AsymmetricSignatureKey]:
    """AsymmetricSignatureKeyService.Create; waits for the Operation and returns the key."""
    body = {
        "folderId": folder_id,
        "signatureAlgorithm": signature_algorithm,
        "name": name or None,
        "description": description or None,
        "labels": dict(labels) if labels else None,
        "deletionProtection": deletion_protection or None,
    }
    return Call(
        "POST", SIGNATURE_KEYS, AsymmetricSignatureKey.from_json, _compact(body), operation=True
    )


def get_signature_key(key_id: str) -> Call[AsymmetricSignatureKey]:
    """AsymmetricSignatureKeyService.Get."""
    return Call(
        "GET", f"{SIGNATURE_KEYS}/{_seg(key_id)}", AsymmetricSignatureKey.from_json, idempotent=True
    )


def list_signature_keys(
    folder_id: str, *, page_size: int | None = None, page_token: str | None = None
) -> Call[SignatureKeyPage]:
    """AsymmetricSignatureKeyService.List."""
    parse = _page_parser(SignatureKeyPage, "keys", AsymmetricSignatureKey.from_json)
    query = _page_query(page_size, page_token, folderId=folder_id)
    return Call("GET", SIGNATURE_KEYS, parse, query=query, idempotent=True)


def update_signature_key(
    key_id: str,
    *,
    name: str | None = None,
    description: str | None = None,
    labels: Mapping[str, str] | None = None,
    status: str | None = None,
    deletion_protection: bool | None = None,
) -> Call[AsymmetricSignatureKey]:
    """AsymmetricSignatureKeyService.Update: the updateMask names the arguments given."""
    body = _update_body(
        {
            "name": name,
            "description": description,
            "labels": dict(labels) if labels is not None else None,
            "status": status,
            "deletionProtection": deletion_protection,
        }
    )
    return Call(
        "PATCH",
        f"{SIGNATURE_KEYS}/{_seg(key_id)}",
        AsymmetricSignatureKey.from_json,
        body,
        operation=True,
    )


def delete_signature_key(key_id: str) -> Call[AsymmetricSignatureKey]:
    """AsymmetricSignatureKeyService.Delete; returns the deleted key."""
    return Call(
        "DELETE",
        f"{SIGNATURE_KEYS}/{_seg(key_id)}",
        AsymmetricSignatureKey.from_json,
        operation=True,
    )


def list_signature_key_operations(
    key_id: str, *, page_size: int | None = None, page_token: str | None = None
) -> Call[OperationPage]:
    """AsymmetricSignatureKeyService.ListOperations."""
    parse = _page_parser(OperationPage, "operations", Operation.from_json)
    return Call(
        "GET",
        f"{SIGNATURE_KEYS}/{_seg(key_id)}/operations",
        parse,
        query=_page_query(page_size, page_token),
        idempotent=True,
    )


def sign(key_id: str, message: bytes) -> Call[SignResult]:
    """AsymmetricSignatureCrypto.Sign: the server hashes ``message``."""
    return Call(
        "POST",
        f"{SIGNATURE_KEYS}/{_seg(key_id)}:sign",
        SignResult.from_json,
        {"message": b64(message)},
        idempotent=True,
    )


def sign_hash(key_id: str, hash: bytes) -> Call[SignResult]:
    """AsymmetricSignatureCrypto.SignHash: ``hash`` is the digest the algorithm names."""
    return Call(
        "POST",
        f"{SIGNATURE_KEYS}/{_seg(key_id)}:signHash",
        SignResult.from_json,
        {"hash": b64(hash)},
        idempotent=True,
    )


def get_signature_public_key(key_id: str) -> Call[PublicKey]:
    """AsymmetricSignatureCrypto.GetPublicKey (PEM)."""
    return Call(
        "GET", f"{SIGNATURE_KEYS}/{_seg(key_id)}/publicKey", PublicKey.from_json, idempotent=True
    )


# --- Asymmetric encryption keys ----------------------------------------------------------


def create_encryption_key(
    folder_id: str,
    *,
    encryption_algorithm: str = "RSA_2048_ENC_OAEP_SHA_256",
    name: str = "",
    description: str = "",
    labels: Mapping[str, str] | None = None,
    deletion_protection: bool = False,
) -> Call[AsymmetricEncryptionKey]:
    """AsymmetricEncryptionKeyService.Create; waits for the Operation and returns the key."""
    body = {
        "folderId": folder_id,
        "encryptionAlgorithm": encryption_algorithm,
        "name": name or None,
        "description": description or None,
        "labels": dict(labels) if labels else None,
        "deletionProtection": deletion_protection or None,
    }
    return Call(
        "POST", ENCRYPTION_KEYS, AsymmetricEncryptionKey.from_json, _compact(body), operation=True
    )


def get_encryption_key(key_id: str) -> Call[AsymmetricEncryptionKey]:
    """AsymmetricEncryptionKeyService.Get."""
    return Call(
        "GET",
        f"{ENCRYPTION_KEYS}/{_seg(key_id)}",
        AsymmetricEncryptionKey.from_json,
        idempotent=True,
    )


def list_encryption_keys(
    folder_id: str, *, page_size: int | None = None, page_token: str | None = None
) -> Call[EncryptionKeyPage]:
    """AsymmetricEncryptionKeyService.List."""
    parse = _page_parser(EncryptionKeyPage, "keys", AsymmetricEncryptionKey.from_json)
    query = _page_query(page_size, page_token, folderId=folder_id)
    return Call("GET", ENCRYPTION_KEYS, parse, query=query, idempotent=True)


def update_encryption_key(
    key_id: str,
    *,
    name: str | None = None,
    description: str | None = None,
    labels: Mapping[str, str] | None = None,
    status: str | None = None,
    deletion_protection: bool | None = None,
) -> Call[AsymmetricEncryptionKey]:
    """AsymmetricEncryptionKeyService.Update: the updateMask names the arguments given."""
    body = _update_body(
        {
            "name": name,
            "description": description,
            "labels": dict(labels) if labels is not None else None,
            "status": status,
            "deletionProtection": deletion_protection,
        }
    )
    return Call(
        "PATCH",
        f"{ENCRYPTION_KEYS}/{_seg(key_id)}",
        AsymmetricEncryptionKey.from_json,
        body,
        operation=True,
    )


def delete_encryption_key(key_id: str) -> Call[AsymmetricEncryptionKey]:
    """AsymmetricEncryptionKeyService.Delete; returns the deleted key."""
    return Call(
        "DELETE",
        f"{ENCRYPTION_KEYS}/{_seg(key_id)}",
        AsymmetricEncryptionKey.from_json,
        operation=True,
    )


def list_encryption_key_operations(
    key_id: str, *, page_size: int | None = None, page_token: str | None = None
) -> Call[OperationPage]:
    """AsymmetricEncryptionKeyService.ListOperations."""
    parse = _page_parser(OperationPage, "operations", Operation.from_json)
    return Call(
        "GET",
        f"{ENCRYPTION_KEYS}/{_seg(key_id)}/operations",
        parse,
        query=_page_query(page_size, page_token),
        idempotent=True,
    )


def asymmetric_decrypt(key_id: str, ciphertext: bytes) -> Call[AsymmetricDecryptResult]:
    """AsymmetricEncryptionCrypto.Decrypt (RSA-OAEP)."""
    return Call(
        "POST",
        f"{ENCRYPTION_KEYS}/{_seg(key_id)}:decrypt",
        AsymmetricDecryptResult.from_json,
        {"ciphertext": b64(ciphertext)},
        idempotent=True,
    )


def get_encryption_public_key(key_id: str) -> Call[PublicKey]:
    """AsymmetricEncryptionCrypto.GetPublicKey (PEM)."""
    return Call(
        "GET", f"{ENCRYPTION_KEYS}/{_seg(key_id)}/publicKey", PublicKey.from_json, idempotent=True
    )


# --- IAM ---------------------------------------------------------------------------------


def create_iam_token(
    *, yandex_passport_oauth_token: str | None = None, jwt: str | None = None
) -> Call[IamToken]:
    """IamTokenService.Create: exchange a bearer token or a signed JWT for an IAM token."""
    body = _compact({"yandexPassportOauthToken": yandex_passport_oauth_token, "jwt": jwt})
    # Safe to repeat: a second token is as good as the first.
    return Call("POST", "/iam/v1/tokens", IamToken.from_json, body, idempotent=True)
