"""Typed results of the REST API: frozen dataclasses, bytes for every base64 field.

Each ``from_json`` reads the proto3 JSON the server prints (camelCase, default-valued fields
left out), so a missing field is its proto default.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar

T = TypeVar("T")

Json = Mapping[str, Any]

_DURATION = re.compile(r"^(-?)(\d{1,12})(?:\.(\d{1,9}))?s$")


def b64(value: bytes) -> str:
    """Standard base64 of ``value`` (proto3 JSON's ``bytes``)."""
    return base64.b64encode(value).decode("ascii")


def unb64(value: Any) -> bytes:
    """Bytes of a proto3 JSON ``bytes`` field (standard or URL-safe alphabet, any padding)."""
    if not value:
        return b""
    text = str(value).replace("-", "+").replace("_", "/")
    return base64.b64decode(text + "=" * (-len(text) % 4))


def duration(value: timedelta) -> str:
    """A ``google.protobuf.Duration`` in JSON: ``"<seconds>s"``."""
    total = value.total_seconds()
    return f"{int(total)}s" if total == int(total) else f"{total:.9f}".rstrip("0") + "s"


def parse_duration(value: Any) -> timedelta | None:
    """``"86400s"`` -> ``timedelta``; None for an absent field."""
    if not value:
        return None
    m = _DURATION.match(str(value))
    if m is None:
        raise ValueError(f"not a duration: {value!r}")
    seconds = int(m.group(2)) + (int(m.group(3).ljust(9, "0")) / 1e9 if m.group(3) else 0)
    return timedelta(seconds=-seconds if m.group(1) else seconds)


def parse_time(value: Any) -> datetime | None:
    """An RFC 3339 timestamp (``Z`` or offset, up to 9 fractional digits) -> aware datetime."""
    if not value:
        return None
    text = str(value).replace("z", "Z").replace("Z", "+00:00")
    # datetime takes at most 6 fractional digits; proto3 JSON may print 9.
    text = re.sub(r"(\.\d{6})\d+", r"\1", text)
    return datetime.fromisoformat(text)


def _time(value: Any) -> datetime:
    parsed = parse_time(value)
    if parsed is None:
        raise ValueError("a required timestamp is missing")
    return parsed


def _labels(value: Any) -> dict[str, str]:
    return {str(k): str(v) for k, v in (value or {}).items()}


@dataclass(frozen=True)
class SymmetricKeyVersion:
    """``SymmetricKeyVersion``."""

    id: str
    key_id: str
    status: str
    algorithm: str
    created_at: datetime
    primary: bool = False
    destroy_at: datetime | None = None
    hosted_by_hsm: bool = False

    @classmethod
    def from_json(cls, j: Json) -> SymmetricKeyVersion:
        """Parse the JSON message."""
        return cls(
            id=j["id"],
            key_id=j.get("keyId", ""),
            status=j.get("status", "STATUS_UNSPECIFIED"),
            algorithm=j.get("algorithm", "SYMMETRIC_ALGORITHM_UNSPECIFIED"),
            created_at=_time(j.get("createdAt")),
            primary=bool(j.get("primary", False)),
            destroy_at=parse_time(j.get("destroyAt")),
            hosted_by_hsm=bool(j.get("hostedByHsm", False)),
        )


@dataclass(frozen=True)
class SymmetricKey:
    """``SymmetricKey``."""

    id: str
    folder_id: str
    created_at: datetime
    status: str
    default_algorithm: str
    name: str = ""
    description: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    primary_version: SymmetricKeyVersion | None = None
    rotated_at: datetime | None = None
    rotation_period: timedelta | None = None
    deletion_protection: bool = False

    @classmethod
    def from_json(cls, j: Json) -> SymmetricKey:
        """Parse the JSON message."""
        primary = j.get("primaryVersion")
        return cls(
            id=j["id"],
            folder_id=j.get("folderId", ""),
            created_at=_time(j.get("createdAt")),
            status=j.get("status", "STATUS_UNSPECIFIED"),
            default_algorithm=j.get("defaultAlgorithm", "SYMMETRIC_ALGORITHM_UNSPECIFIED"),
            name=j.get("name", ""),
            description=j.get("description", ""),
            labels=_labels(j.get("labels")),
            primary_version=SymmetricKeyVersion.from_json(primary) if primary else None,
            rotated_at=parse_time(j.get("rotatedAt")),
            rotation_period=parse_duration(j.get("rotationPeriod")),
            deletion_protection=bool(j.get("deletionProtection", False)),
        )


@dataclass(frozen=True)
class AsymmetricSignatureKey:
    """``AsymmetricSignatureKey``."""

    id: str
    folder_id: str
    created_at: datetime
    status: str
    signature_algorithm: str
    name: str = ""
    description: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    deletion_protection: bool = False

    @classmethod
    def from_json(cls, j: Json) -> AsymmetricSignatureKey:
        """Parse the JSON message."""
        return cls(
            id=j["id"],
            folder_id=j.get("folderId", ""),
            created_at=_time(j.get("createdAt")),
            status=j.get("status", "STATUS_UNSPECIFIED"),
            signature_algorithm=j.get("signatureAlgorithm", ""),
            name=j.get("name", ""),
            description=j.get("description", ""),
            labels=_labels(j.get("labels")),
            deletion_protection=bool(j.get("deletionProtection", False)),
        )


@dataclass(frozen=True)
class AsymmetricEncryptionKey:
    """``AsymmetricEncryptionKey``."""

    id: str
    folder_id: str
    created_at: datetime
    status: str
    encryption_algorithm: str
    name: str = ""
    description: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    deletion_protection: bool = False

    @classmethod
    def from_json(cls, j: Json) -> AsymmetricEncryptionKey:
        """Parse the JSON message."""
        return cls(
            id=j["id"],
            folder_id=j.get("folderId", ""),
            created_at=_time(j.get("createdAt")),
            status=j.get("status", "STATUS_UNSPECIFIED"),
            encryption_algorithm=j.get("encryptionAlgorithm", ""),
            name=j.get("name", ""),
            description=j.get("description", ""),
            labels=_labels(j.get("labels")),
            deletion_protection=bool(j.get("deletionProtection", False)),
        )


@dataclass(frozen=True)
class EncryptResult:
    """``SymmetricEncryptResponse``."""

    key_id: str
    version_id: str
    ciphertext: bytes

    @classmethod
    def from_json(cls, j: Json) -> EncryptResult:
        """Parse the JSON message."""
        return cls(j.get("keyId", ""), j.get("versionId", ""), unb64(j.get("ciphertext")))


@dataclass(frozen=True)
class DecryptResult:
    """``SymmetricDecryptResponse``; ``repr`` leaves the plaintext out."""

    key_id: str
    version_id: str
    plaintext: bytes = field(repr=False)

    @classmethod
    def from_json(cls, j: Json) -> DecryptResult:
        """Parse the JSON message."""
        return cls(j.get("keyId", ""), j.get("versionId", ""), unb64(j.get("plaintext")))


@dataclass(frozen=True)
class DataKeyResult:
    """``GenerateDataKeyResponse``; ``repr`` leaves the plaintext data key out."""

    key_id: str
    version_id: str
    data_key_plaintext: bytes | None = field(repr=False)
    data_key_ciphertext: bytes

    @classmethod
    def from_json(cls, j: Json) -> DataKeyResult:
        """Parse the JSON message (no plaintext when it was skipped)."""
        plain = j.get("dataKeyPlaintext")
        return cls(
            j.get("keyId", ""),
            j.get("versionId", ""),
            unb64(plain) if plain else None,
            unb64(j.get("dataKeyCiphertext")),
        )


@dataclass(frozen=True)
class ReEncryptResult:
    """``SymmetricReEncryptResponse``."""

    key_id: str
    version_id: str
    source_key_id: str
    source_version_id: str
    ciphertext: bytes

    @classmethod
    def from_json(cls, j: Json) -> ReEncryptResult:
        """Parse the JSON message."""
        return cls(
            j.get("keyId", ""),
            j.get("versionId", ""),
            j.get("sourceKeyId", ""),
            j.get("sourceVersionId", ""),
            unb64(j.get("ciphertext")),
        )


@dataclass(frozen=True)
class SignResult:
    """``AsymmetricSignResponse`` / ``AsymmetricSignHashResponse``."""

    key_id: str
    signature: bytes

    @classmethod
    def from_json(cls, j: Json) -> SignResult:
        """Parse the JSON message."""
        return cls(j.get("keyId", ""), unb64(j.get("signature")))


@dataclass(frozen=True)
class AsymmetricDecryptResult:
    """``AsymmetricDecryptResponse``; ``repr`` leaves the plaintext out."""

    key_id: str
    plaintext: bytes = field(repr=False)

    @classmethod
    def from_json(cls, j: Json) -> AsymmetricDecryptResult:
        """Parse the JSON message."""
        return cls(j.get("keyId", ""), unb64(j.get("plaintext")))


@dataclass(frozen=True)
class PublicKey:
    """``AsymmetricGetPublicKeyResponse``: the public key in PEM."""

    key_id: str
    public_key: str

    @classmethod
    def from_json(cls, j: Json) -> PublicKey:
        """Parse the JSON message."""
        return cls(j.get("keyId", ""), j.get("publicKey", ""))


@dataclass(frozen=True)
class Subject:
    """Who a binding is for: ``type`` is ``userAccount``, ``serviceAccount``, ``system``, …"""

    id: str
    type: str


@dataclass(frozen=True)
class AccessBinding:
    """A role given to a subject on a key or a folder."""

    role_id: str
    subject: Subject

    @classmethod
    def from_json(cls, j: Json) -> AccessBinding:
        """Parse the JSON message."""
        s = j.get("subject") or {}
        return cls(j.get("roleId", ""), Subject(s.get("id", ""), s.get("type", "")))

    def to_json(self) -> dict[str, Any]:
        """The JSON message."""
        return {
            "roleId": self.role_id,
            "subject": {"id": self.subject.id, "type": self.subject.type},
        }


@dataclass(frozen=True)
class AccessBindingDelta:
    """One change of an UpdateAccessBindings call: ``action`` is ``ADD`` or ``REMOVE``."""

    action: str
    access_binding: AccessBinding

    def to_json(self) -> dict[str, Any]:
        """The JSON message."""
        return {"action": self.action, "accessBinding": self.access_binding.to_json()}


@dataclass(frozen=True)
class IamToken:
    """``CreateIamTokenResponse``; ``repr`` leaves the token out."""

    iam_token: str = field(repr=False)
    expires_at: datetime | None

    @classmethod
    def from_json(cls, j: Json) -> IamToken:
        """Parse the JSON message."""
        return cls(j.get("iamToken", ""), parse_time(j.get("expiresAt")))


@dataclass(frozen=True)
class Status:
    """``google.rpc.Status``: an Operation's error."""

    code: int
    message: str
    details: Sequence[Mapping[str, Any]] = ()

    @classmethod
    def from_json(cls, j: Json) -> Status:
        """Parse the JSON message."""
        return cls(int(j.get("code", 2)), str(j.get("message", "")), tuple(j.get("details") or ()))


@dataclass(frozen=True)
class Operation:
    """``yandex.cloud.operation.Operation``; ``metadata``/``response`` keep their ``@type``."""

    id: str
    done: bool
    description: str = ""
    created_at: datetime | None = None
    created_by: str = ""
    modified_at: datetime | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    response: Mapping[str, Any] | None = None
    error: Status | None = None

    @classmethod
    def from_json(cls, j: Json) -> Operation:
        """Parse the JSON message."""
        error = j.get("error")
        return cls(
            id=j.get("id", ""),
            done=bool(j.get("done", False)),
            description=j.get("description", ""),
            created_at=parse_time(j.get("createdAt")),
            created_by=j.get("createdBy", ""),
            modified_at=parse_time(j.get("modifiedAt")),
            metadata=dict(j.get("metadata") or {}),
            response=dict(j["response"]) if j.get("response") is not None else None,
            error=Status.from_json(error) if error is not None else None,
        )

    @property
    def response_type(self) -> str:
        """The response's message name (``yandex.cloud.kms.v1.SymmetricKey``), or ``""``."""
        if not self.response:
            return ""
        return str(self.response.get("@type", "")).rsplit("/", 1)[-1]


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a List call; an empty ``next_page_token`` means the last page."""

    items: Sequence[T]
    next_page_token: str = ""


@dataclass(frozen=True)
class KeyPage(Page[SymmetricKey]):
    """A page of ``SymmetricKey``."""

    @property
    def keys(self) -> Sequence[SymmetricKey]:
        """The keys of this page."""
        return self.items


@dataclass(frozen=True)
class VersionPage(Page[SymmetricKeyVersion]):
    """A page of ``SymmetricKeyVersion``."""

    @property
    def versions(self) -> Sequence[SymmetricKeyVersion]:
        """The versions of this page."""
        return self.items


@dataclass(frozen=True)
class SignatureKeyPage(Page[AsymmetricSignatureKey]):
    """A page of ``AsymmetricSignatureKey``."""

    @property
    def keys(self) -> Sequence[AsymmetricSignatureKey]:
        """The keys of this page."""
        return self.items


@dataclass(frozen=True)
class EncryptionKeyPage(Page[AsymmetricEncryptionKey]):
    """A page of ``AsymmetricEncryptionKey``."""

    @property
    def keys(self) -> Sequence[AsymmetricEncryptionKey]:
        """The keys of this page."""
        return self.items


@dataclass(frozen=True)
class OperationPage(Page[Operation]):
    """A page of ``Operation``."""

    @property
    def operations(self) -> Sequence[Operation]:
        """The operations of this page."""
        return self.items


@dataclass(frozen=True)
class BindingPage(Page[AccessBinding]):
    """A page of ``AccessBinding``."""

    @property
    def access_bindings(self) -> Sequence[AccessBinding]:
        """The bindings of this page."""
        return self.items
