"""Domain values as the generated proto messages: the same fields and defaults as REST's JSON.

REST's renderers (``kms_hsm.api.wire``, ``kms_hsm.api.routes.keys.operation_json``) leave
out default-valued fields; proto3 does the same by itself, so each field is simply set.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from google.protobuf import any_pb2, duration_pb2, empty_pb2, message, timestamp_pb2
from google.rpc import status_pb2
from yandex.cloud.access import access_pb2
from yandex.cloud.kms.v1 import symmetric_key_pb2, symmetric_key_service_pb2
from yandex.cloud.kms.v1.asymmetricencryption import (
    asymmetric_encryption_key_pb2,
    asymmetric_encryption_key_service_pb2,
)
from yandex.cloud.kms.v1.asymmetricsignature import (
    asymmetric_signature_key_pb2,
    asymmetric_signature_key_service_pb2,
)
from yandex.cloud.operation import operation_pb2

from kms_hsm.domain.asymmetric import AsymmetricKey, KeyFamily
from kms_hsm.domain.model import Key, KeyVersion
from kms_hsm.domain.records import key_from_record, key_pair_from_record, version_from_record
from kms_hsm.service import handlers
from kms_hsm.service.access import Binding
from kms_hsm.store.repository import StoredOperation

log = logging.getLogger("kms_hsm.grpc")


def timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    """A ``google.protobuf.Timestamp`` (naive datetimes are UTC, as stored)."""
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value)
    return ts


def duration(value: timedelta) -> duration_pb2.Duration:
    """A ``google.protobuf.Duration``."""
    d = duration_pb2.Duration()
    d.FromTimedelta(value)
    return d


def _number(value: enum.IntEnum) -> Any:
    """A domain enum as its proto number (the domain's numbers are the proto's)."""
    return int(value)


def version(v: KeyVersion) -> symmetric_key_pb2.SymmetricKeyVersion:
    """``SymmetricKeyVersion``."""
    out = symmetric_key_pb2.SymmetricKeyVersion(
        id=v.id,
        key_id=v.key_id,
        status=_number(v.status),
        algorithm=_number(v.algorithm),
        created_at=timestamp(v.created_at),
        primary=v.primary,
        hosted_by_hsm=v.hosted_by_hsm,
    )
    if v.destroy_at is not None:
        out.destroy_at.CopyFrom(timestamp(v.destroy_at))
    return out


def key(k: Key) -> symmetric_key_pb2.SymmetricKey:
    """``SymmetricKey``."""
    out = symmetric_key_pb2.SymmetricKey(
        id=k.id,
        folder_id=k.folder_id,
        created_at=timestamp(k.created_at),
        name=k.name,
        description=k.description,
        labels=k.labels,
        status=_number(k.status),
        default_algorithm=_number(k.default_algorithm),
        deletion_protection=k.deletion_protection,
    )
    if k.primary_version is not None:
        out.primary_version.CopyFrom(version(k.primary_version))
    if k.rotated_at is not None:
        out.rotated_at.CopyFrom(timestamp(k.rotated_at))
    if k.rotation_period is not None:
        out.rotation_period.CopyFrom(duration(k.rotation_period))
    return out


def signature_key(k: AsymmetricKey) -> asymmetric_signature_key_pb2.AsymmetricSignatureKey:
    """``AsymmetricSignatureKey``."""
    return asymmetric_signature_key_pb2.AsymmetricSignatureKey(
        id=k.id,
        folder_id=k.folder_id,
        created_at=timestamp(k.created_at),
        name=k.name,
        description=k.description,
        labels=k.labels,
        status=_number(k.status),
        signature_algorithm=_number(k.algorithm),
        deletion_protection=k.deletion_protection,
    )


def encryption_key(k: AsymmetricKey) -> asymmetric_encryption_key_pb2.AsymmetricEncryptionKey:
    """``AsymmetricEncryptionKey``."""
    return asymmetric_encryption_key_pb2.AsymmetricEncryptionKey(
        id=k.id,
        folder_id=k.folder_id,
        created_at=timestamp(k.created_at),
        name=k.name,
        description=k.description,
        labels=k.labels,
        status=_number(k.status),
        encryption_algorithm=_number(k.algorithm),
        deletion_protection=k.deletion_protection,
    )


def key_pair(k: AsymmetricKey) -> message.Message:
    """An asymmetric key as its family's message."""
    if k.family is KeyFamily.ASYMMETRIC_SIGNATURE:
        return signature_key(k)
    if k.family is KeyFamily.ASYMMETRIC_ENCRYPTION:
        return encryption_key(k)
    raise ValueError(f"key {k.id}: not an asymmetric key")


def binding(b: Binding) -> access_pb2.AccessBinding:
    """``AccessBinding``."""
    return access_pb2.AccessBinding(
        role_id=b.role_id, subject=access_pb2.Subject(id=b.subject_id, type=b.subject_type)
    )


# The messages an Operation's metadata may name; anything else is rendered as Empty.
_METADATA: dict[str, type[message.Message]] = {
    **{
        f"yandex.cloud.kms.v1.{name}": getattr(symmetric_key_service_pb2, name)
        for name in (
            "CreateSymmetricKeyMetadata",
            "UpdateSymmetricKeyMetadata",
            "DeleteSymmetricKeyMetadata",
            "RotateSymmetricKeyMetadata",
            "SetPrimarySymmetricKeyVersionMetadata",
            "ScheduleSymmetricKeyVersionDestructionMetadata",
            "CancelSymmetricKeyVersionDestructionMetadata",
        )
    },
    # Asymmetric keys: the messages' full names carry their package (…asymmetricsignature.).
    **{
        cls.DESCRIPTOR.full_name: cls
        for module, kind in (
            (asymmetric_signature_key_service_pb2, "Signature"),
            (asymmetric_encryption_key_service_pb2, "Encryption"),
        )
        for cls in (
            getattr(module, f"{verb}Asymmetric{kind}KeyMetadata")
            for verb in ("Create", "Update", "Delete")
        )
    },
    "yandex.cloud.access.SetAccessBindingsMetadata": access_pb2.SetAccessBindingsMetadata,
    "yandex.cloud.access.UpdateAccessBindingsMetadata": access_pb2.UpdateAccessBindingsMetadata,
}

_RESPONSES: dict[str, Callable[[dict[str, Any]], message.Message]] = {
    "yandex.cloud.kms.v1.SymmetricKey": lambda r: key(key_from_record(r)),
    "yandex.cloud.kms.v1.SymmetricKeyVersion": lambda r: version(version_from_record(r)),
    asymmetric_signature_key_pb2.AsymmetricSignatureKey.DESCRIPTOR.full_name: lambda r: (
        signature_key(key_pair_from_record(r))
    ),
    asymmetric_encryption_key_pb2.AsymmetricEncryptionKey.DESCRIPTOR.full_name: lambda r: (
        encryption_key(key_pair_from_record(r))
    ),
    "google.protobuf.Empty": lambda r: empty_pb2.Empty(),
}


def _pack(value: message.Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(value)
    return packed


def _metadata(op: StoredOperation) -> message.Message:
    """The metadata message; fields it does not have, or cannot hold, are left out."""
    type_name = op.metadata.get("type") if isinstance(op.metadata, dict) else None
    cls = _METADATA.get(type_name) if isinstance(type_name, str) else None
    if cls is None:
        return empty_pb2.Empty()
    out = cls()
    fields = out.DESCRIPTOR.fields_by_name
    for name, value in handlers.operation_metadata(op).items():
        field = fields.get(name)
        if field is None or value in (None, ""):
            continue
        try:
            if field.message_type is not None and field.message_type.full_name == (
                "google.protobuf.Timestamp"
            ):
                getattr(out, name).CopyFrom(timestamp(datetime.fromisoformat(str(value))))
            elif field.message_type is None:
                setattr(out, name, value)
        except (TypeError, ValueError):
            # A row edited by hand or written by another version: REST shows it as is,
            # a proto field cannot hold it; the rest of the operation still renders.
            log.warning("operation %s: metadata field %s not renderable", op.id, name)
    return out


def operation(op: StoredOperation) -> operation_pb2.Operation:
    """``yandex.cloud.operation.Operation`` with metadata and response packed as ``Any``."""
    out = operation_pb2.Operation(
        id=op.id,
        description=op.description,
        created_at=timestamp(op.created_at),
        created_by=op.created_by,
        modified_at=timestamp(op.modified_at),
        done=op.done,
    )
    out.metadata.CopyFrom(_pack(_metadata(op)))
    if op.error is not None:
        code = op.error.get("code", 2) if isinstance(op.error, dict) else 2
        text = op.error.get("message", "") if isinstance(op.error, dict) else ""
        out.error.CopyFrom(
            status_pb2.Status(
                code=code if isinstance(code, int) else 2,
                message=text if isinstance(text, str) else "",
            )
        )
    elif op.response is not None:
        render = _RESPONSES.get(op.response.get("type", ""))
        if render is None:
            raise ValueError(f"operation {op.id}: unknown response type")
        out.response.CopyFrom(_pack(render(op.response.get("value") or {})))
    return out
