"""Pydantic models of the wire messages, for the OpenAPI document only.

Requests are parsed by ``wire.Fields`` (proto3 JSON rules, named field errors) and
responses are rendered by ``wire``; these models describe the same shapes so that the
served OpenAPI document carries Yandex's paths, field names and types.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Algorithm = Literal[
    "SYMMETRIC_ALGORITHM_UNSPECIFIED",
    "AES_128",
    "AES_192",
    "AES_256",
    "AES_256_HSM",
    "GOST_R_3412_2015_K",
]
KeyStatus = Literal["STATUS_UNSPECIFIED", "CREATING", "ACTIVE", "INACTIVE"]
AsymmetricKeyStatus = Literal["STATUS_UNSPECIFIED", "CREATING", "ACTIVE", "INACTIVE"]
SignatureAlgorithm = Literal[
    "ASYMMETRIC_SIGNATURE_ALGORITHM_UNSPECIFIED",
    "RSA_2048_SIGN_PSS_SHA_256",
    "RSA_2048_SIGN_PSS_SHA_384",
    "RSA_2048_SIGN_PSS_SHA_512",
    "RSA_3072_SIGN_PSS_SHA_256",
    "RSA_3072_SIGN_PSS_SHA_384",
    "RSA_3072_SIGN_PSS_SHA_512",
    "RSA_4096_SIGN_PSS_SHA_256",
    "RSA_4096_SIGN_PSS_SHA_384",
    "RSA_4096_SIGN_PSS_SHA_512",
    "ECDSA_NIST_P256_SHA_256",
    "ECDSA_NIST_P384_SHA_384",
    "ECDSA_NIST_P521_SHA_512",
    "ECDSA_SECP256_K1_SHA_256",
]
EncryptionAlgorithm = Literal[
    "ASYMMETRIC_ENCRYPTION_ALGORITHM_UNSPECIFIED",
    "RSA_2048_ENC_OAEP_SHA_256",
    "RSA_3072_ENC_OAEP_SHA_256",
    "RSA_4096_ENC_OAEP_SHA_256",
]
VersionStatus = Literal["STATUS_UNSPECIFIED", "ACTIVE", "SCHEDULED_FOR_DESTRUCTION", "DESTROYED"]


# What ``validation.is_id`` accepts (lengths are per field).
ID_PATTERN = r"^[A-Za-z0-9_-]+$"
ID_OR_EMPTY = r"^[A-Za-z0-9_-]*$"  # optional ids: "" is the default (the primary version)


def _bytes(description: str, max_bytes: int | None = None) -> Any:
    extra: dict[str, Any] = {"format": "byte"}
    if max_bytes is not None:
        extra["x-max-bytes"] = max_bytes
    return Field(default=None, description=description, json_schema_extra=extra)


def _timestamp(description: str) -> Any:
    return Field(default=None, description=description, json_schema_extra={"format": "date-time"})


def _duration(description: str) -> Any:
    return Field(
        default=None,
        description=description,
        pattern=r"^-?\d{1,12}(\.\d{1,9})?s$",
        json_schema_extra={"example": "86400s"},
    )


class Message(BaseModel):
    """Base: proto3 JSON messages accept no unknown fields."""

    model_config = ConfigDict(extra="forbid")


class SymmetricEncryptRequest(Message):
    """Body of :encrypt."""

    versionId: str | None = Field(default=None, max_length=50, pattern=ID_OR_EMPTY)
    aadContext: str | None = _bytes("Additional authenticated data", 8192)
    plaintext: str = Field(
        min_length=1, description="Plaintext, 1..32768 bytes", json_schema_extra={"format": "byte"}
    )


class SymmetricEncryptResponse(Message):
    """Response of :encrypt."""

    keyId: str
    versionId: str
    ciphertext: str = Field(json_schema_extra={"format": "byte"})


class SymmetricDecryptRequest(Message):
    """Body of :decrypt (the version comes from the ciphertext)."""

    aadContext: str | None = _bytes("The aadContext given at encryption", 8192)
    ciphertext: str = Field(min_length=1, json_schema_extra={"format": "byte"})


class SymmetricDecryptResponse(Message):
    """Response of :decrypt."""

    keyId: str
    versionId: str
    plaintext: str | None = _bytes("Decrypted plaintext")


class SymmetricReEncryptRequest(Message):
    """Body of :reEncrypt."""

    versionId: str | None = Field(default=None, max_length=50, pattern=ID_OR_EMPTY)
    aadContext: str | None = _bytes("AAD for the new ciphertext", 8192)
    sourceKeyId: str = Field(min_length=1, max_length=50, pattern=ID_PATTERN)
    sourceAadContext: str | None = _bytes("AAD of the source ciphertext", 8192)
    ciphertext: str = Field(min_length=1, json_schema_extra={"format": "byte"})


class SymmetricReEncryptResponse(Message):
    """Response of :reEncrypt."""

    keyId: str
    versionId: str
    sourceKeyId: str
    sourceVersionId: str
    ciphertext: str = Field(json_schema_extra={"format": "byte"})


class GenerateDataKeyRequest(Message):
    """Body of :generateDataKey; dataKeySpec UNSPECIFIED means AES_256."""

    versionId: str | None = Field(default=None, max_length=50, pattern=ID_OR_EMPTY)
    aadContext: str | None = _bytes("AAD bound to the data key ciphertext", 8192)
    dataKeySpec: Algorithm | None = None
    skipPlaintext: bool | None = None


class GenerateDataKeyResponse(Message):
    """Response of :generateDataKey."""

    keyId: str
    versionId: str
    dataKeyPlaintext: str | None = _bytes("Absent when skipPlaintext")
    dataKeyCiphertext: str = Field(json_schema_extra={"format": "byte"})


class SymmetricKeyVersion(Message):
    """``yandex.cloud.kms.v1.SymmetricKeyVersion``."""

    id: str
    keyId: str
    status: VersionStatus
    algorithm: Algorithm
    createdAt: str = Field(json_schema_extra={"format": "date-time"})
    primary: bool | None = None
    destroyAt: str | None = _timestamp("Set while SCHEDULED_FOR_DESTRUCTION")
    hostedByHsm: bool | None = None


class SymmetricKey(Message):
    """``yandex.cloud.kms.v1.SymmetricKey``."""

    id: str
    folderId: str
    createdAt: str = Field(json_schema_extra={"format": "date-time"})
    name: str | None = None
    description: str | None = None
    labels: dict[str, str] | None = None
    status: KeyStatus
    primaryVersion: SymmetricKeyVersion | None = None
    defaultAlgorithm: Algorithm
    rotatedAt: str | None = _timestamp("Creation time of the newest version")
    rotationPeriod: str | None = _duration("Automatic rotation period")
    deletionProtection: bool | None = None


class CreateSymmetricKeyRequest(Message):
    """Body of Create."""

    folderId: str = Field(min_length=1, max_length=50, pattern=ID_PATTERN)
    name: str | None = Field(default=None, max_length=100)
    description: str | None = Field(default=None, max_length=1024)
    labels: dict[str, str] | None = Field(default=None, max_length=64)
    defaultAlgorithm: Algorithm
    rotationPeriod: str | None = _duration("Omit to disable automatic rotation")
    deletionProtection: bool | None = None


class UpdateSymmetricKeyRequest(Message):
    """Body of Update; ``updateMask`` is a comma-separated list of camelCase paths."""

    updateMask: str = Field(min_length=1, json_schema_extra={"example": "name,rotationPeriod"})
    name: str | None = Field(default=None, max_length=100)
    description: str | None = Field(default=None, max_length=1024)
    status: KeyStatus | None = None
    labels: dict[str, str] | None = Field(default=None, max_length=64)
    defaultAlgorithm: Algorithm | None = None
    rotationPeriod: str | None = _duration("Automatic rotation period")
    deletionProtection: bool | None = None


class SetPrimarySymmetricKeyVersionRequest(Message):
    """Body of :setPrimaryVersion."""

    versionId: str = Field(min_length=1, max_length=50, pattern=ID_PATTERN)


class ScheduleSymmetricKeyVersionDestructionRequest(Message):
    """Body of :scheduleVersionDestruction; pendingPeriod defaults to 7 days."""

    versionId: str = Field(min_length=1, max_length=50, pattern=ID_PATTERN)
    pendingPeriod: str | None = _duration("86400s .. 31536000s")


class CancelSymmetricKeyVersionDestructionRequest(Message):
    """Body of :cancelVersionDestruction."""

    versionId: str = Field(min_length=1, max_length=50, pattern=ID_PATTERN)


class Any_(BaseModel):
    """``google.protobuf.Any`` in JSON: ``@type`` plus the message's fields."""

    model_config = ConfigDict(extra="allow")

    type_: str = Field(alias="@type")


class Status(BaseModel):
    """``google.rpc.Status``: every error response."""

    code: int
    message: str
    details: list[dict[str, Any]] | None = None


class Operation(Message):
    """``yandex.cloud.operation.Operation``; mutations return it with done=true."""

    id: str
    description: str | None = None
    createdAt: str = Field(json_schema_extra={"format": "date-time"})
    createdBy: str | None = None
    modifiedAt: str = Field(json_schema_extra={"format": "date-time"})
    done: bool | None = None
    metadata: Any_ | None = None
    error: Status | None = None
    response: Any_ | None = None


class ListSymmetricKeysResponse(Message):
    """Response of List."""

    keys: list[SymmetricKey] | None = None
    nextPageToken: str | None = None


class ListSymmetricKeyVersionsResponse(Message):
    """Response of ListVersions."""

    keyVersions: list[SymmetricKeyVersion] | None = None
    nextPageToken: str | None = None


class ListSymmetricKeyOperationsResponse(Message):
    """Response of ListOperations."""

    operations: list[Operation] | None = None
    nextPageToken: str | None = None


class Subject(Message):
    """``yandex.cloud.access.Subject``."""

    id: str = Field(min_length=1, max_length=100, pattern=ID_PATTERN)
    type: Literal["userAccount", "serviceAccount", "federatedUser", "system"]


class AccessBinding(Message):
    """``yandex.cloud.access.AccessBinding``."""

    roleId: Literal[
        "kms.admin",
        "kms.editor",
        "kms.viewer",
        "kms.auditor",
        "kms.keys.encrypterDecrypter",
        "kms.keys.encrypter",
        "kms.keys.decrypter",
        "kms.asymmetricSignatureKeys.signer",
        "kms.asymmetricSignatureKeys.publicKeyViewer",
        "kms.asymmetricEncryptionKeys.decrypter",
        "kms.asymmetricEncryptionKeys.publicKeyViewer",
    ]
    subject: Subject


class AccessBindingDelta(Message):
    """``yandex.cloud.access.AccessBindingDelta``."""

    action: Literal["ADD", "REMOVE"]
    accessBinding: AccessBinding


class ListAccessBindingsResponse(Message):
    """Response of ListAccessBindings."""

    accessBindings: list[AccessBinding] | None = None
    nextPageToken: str | None = None


class SetAccessBindingsRequest(Message):
    """Body of :setAccessBindings: the complete new set."""

    accessBindings: list[AccessBinding] = Field(max_length=1000)


class UpdateAccessBindingsRequest(Message):
    """Body of :updateAccessBindings."""

    accessBindingDeltas: list[AccessBindingDelta] = Field(min_length=1, max_length=1000)


# --- Asymmetric keys (yandex.cloud.kms.v1.asymmetricsignature / asymmetricencryption) ---


class AsymmetricSignRequest(Message):
    """Body of :sign: the message, hashed as the key's algorithm says."""

    message: str = Field(
        min_length=1,
        description="The message, 1..32768 bytes",
        json_schema_extra={"format": "byte", "x-max-bytes": 32768},
    )


class AsymmetricSignResponse(Message):
    """Response of :sign (RSA-PSS per RFC 8017; ECDSA DER as X9.62 says)."""

    keyId: str
    signature: str = Field(json_schema_extra={"format": "byte"})


class AsymmetricSignHashRequest(Message):
    """Body of :signHash: a digest of exactly the algorithm's hash length."""

    hash: str = Field(
        min_length=1,
        description="The digest: 32, 48 or 64 bytes as the key's algorithm says",
        json_schema_extra={"format": "byte", "x-max-bytes": 4096},
    )


class AsymmetricSignHashResponse(Message):
    """Response of :signHash."""

    keyId: str
    signature: str = Field(json_schema_extra={"format": "byte"})


class AsymmetricGetPublicKeyResponse(Message):
    """Response of GET .../publicKey (both families)."""

    keyId: str
    publicKey: str = Field(description="PEM SubjectPublicKeyInfo")


class AsymmetricDecryptRequest(Message):
    """Body of :decrypt: an RSA-OAEP (SHA-256, MGF1-SHA-256) ciphertext."""

    ciphertext: str = Field(
        min_length=1,
        description="The ciphertext, as long as the modulus",
        json_schema_extra={"format": "byte", "x-max-bytes": 32768},
    )


class AsymmetricDecryptResponse(Message):
    """Response of :decrypt."""

    keyId: str
    plaintext: str | None = _bytes("Decrypted plaintext")


class AsymmetricSignatureKey(Message):
    """``yandex.cloud.kms.v1.asymmetricsignature.AsymmetricSignatureKey``."""

    id: str
    folderId: str
    createdAt: str = Field(json_schema_extra={"format": "date-time"})
    name: str | None = None
    description: str | None = None
    labels: dict[str, str] | None = None
    status: AsymmetricKeyStatus
    signatureAlgorithm: SignatureAlgorithm
    deletionProtection: bool | None = None


class AsymmetricEncryptionKey(Message):
    """``yandex.cloud.kms.v1.asymmetricencryption.AsymmetricEncryptionKey``."""

    id: str
    folderId: str
    createdAt: str = Field(json_schema_extra={"format": "date-time"})
    name: str | None = None
    description: str | None = None
    labels: dict[str, str] | None = None
    status: AsymmetricKeyStatus
    encryptionAlgorithm: EncryptionAlgorithm
    deletionProtection: bool | None = None


class CreateAsymmetricSignatureKeyRequest(Message):
    """Body of Create (signature keys)."""

    folderId: str = Field(min_length=1, max_length=50, pattern=ID_PATTERN)
    name: str | None = Field(default=None, max_length=100)
    description: str | None = Field(default=None, max_length=1024)
    labels: dict[str, str] | None = Field(default=None, max_length=64)
    signatureAlgorithm: SignatureAlgorithm
    deletionProtection: bool | None = None


class CreateAsymmetricEncryptionKeyRequest(Message):
    """Body of Create (encryption keys)."""

    folderId: str = Field(min_length=1, max_length=50, pattern=ID_PATTERN)
    name: str | None = Field(default=None, max_length=100)
    description: str | None = Field(default=None, max_length=1024)
    labels: dict[str, str] | None = Field(default=None, max_length=64)
    encryptionAlgorithm: EncryptionAlgorithm
    deletionProtection: bool | None = None


class _UpdateAsymmetricKeyRequest(Message):
    """Body of Update; ``updateMask`` is a comma-separated list of camelCase paths."""

    updateMask: str = Field(min_length=1, json_schema_extra={"example": "name,status"})
    name: str | None = Field(default=None, max_length=100)
    description: str | None = Field(default=None, max_length=1024)
    status: AsymmetricKeyStatus | None = None
    labels: dict[str, str] | None = Field(default=None, max_length=64)
    deletionProtection: bool | None = None


class UpdateAsymmetricSignatureKeyRequest(_UpdateAsymmetricKeyRequest):
    """Body of Update (signature keys); ``updateMask`` names the fields that change."""


class UpdateAsymmetricEncryptionKeyRequest(_UpdateAsymmetricKeyRequest):
    """Body of Update (encryption keys); ``updateMask`` names the fields that change."""


class ListAsymmetricSignatureKeysResponse(Message):
    """Response of List (signature keys)."""

    keys: list[AsymmetricSignatureKey] | None = None
    nextPageToken: str | None = None


class ListAsymmetricEncryptionKeysResponse(Message):
    """Response of List (encryption keys)."""

    keys: list[AsymmetricEncryptionKey] | None = None
    nextPageToken: str | None = None


class ListAsymmetricSignatureKeyOperationsResponse(Message):
    """Response of ListOperations (signature keys)."""

    operations: list[Operation] | None = None
    nextPageToken: str | None = None


class ListAsymmetricEncryptionKeyOperationsResponse(Message):
    """Response of ListOperations (encryption keys)."""

    operations: list[Operation] | None = None
    nextPageToken: str | None = None


class CreateIamTokenRequest(Message):
    """Body of POST /iam/v1/tokens: exactly one of the two credentials."""

    yandexPassportOauthToken: str | None = Field(
        default=None, max_length=8192, description="A kms-hsm bearer token (kmsh1_...)"
    )
    jwt: str | None = Field(
        default=None, max_length=8192, description="A PS256 JWT signed with an authorized key"
    )


class CreateIamTokenResponse(Message):
    """Response of POST /iam/v1/tokens."""

    iamToken: str
    expiresAt: str | None = _timestamp("When the IAM token stops working")
