"""SymmetricKeyService and OperationService over REST (the parts built so far)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request, Response

from kms_hsm.api import wire
from kms_hsm.api.deps import caller, json_body, runtime
from kms_hsm.domain.model import Algorithm, KeyStatus
from kms_hsm.domain.records import key_from_record, version_from_record
from kms_hsm.domain.validation import MAX_DESCRIPTION, MAX_ID, MAX_NAME
from kms_hsm.service.keys import KeySpec, KeyUpdate
from kms_hsm.store.repository import StoredOperation

router = APIRouter(tags=["SymmetricKey"])

# updateMask paths (camelCase, as the proto3 JSON FieldMask carries them) -> service fields.
UPDATE_PATHS = {
    "name": "name",
    "description": "description",
    "status": "status",
    "labels": "labels",
    "defaultAlgorithm": "default_algorithm",
    "rotationPeriod": "rotation_period",
    "deletionProtection": "deletion_protection",
}


def _render_key(record: dict[str, Any]) -> dict[str, Any]:
    return wire.key_json(key_from_record(record))


def _render_version(record: dict[str, Any]) -> dict[str, Any]:
    return wire.version_json(version_from_record(record))


def _render_empty(record: dict[str, Any]) -> dict[str, Any]:
    return {}


_RESOURCE_RENDERERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "yandex.cloud.kms.v1.SymmetricKey": _render_key,
    "yandex.cloud.kms.v1.SymmetricKeyVersion": _render_version,
    "google.protobuf.Empty": _render_empty,
}


def _any(type_name: str, message: dict[str, Any]) -> dict[str, Any]:
    return {"@type": f"type.googleapis.com/{type_name}", **message}


def _metadata_value(name: str, value: Any) -> Any:
    if name.endswith("_at") and isinstance(value, str):
        return wire.timestamp(datetime.fromisoformat(value))
    return value


def operation_json(op: StoredOperation) -> dict[str, Any]:
    """``yandex.cloud.operation.Operation`` with metadata and response as ``Any``."""
    metadata = {
        wire.camel(k): _metadata_value(k, v)
        for k, v in op.metadata["value"].items()
        if v not in (None, "")
    }
    body: dict[str, Any] = {
        "id": op.id,
        "description": op.description,
        "createdAt": wire.timestamp(op.created_at),
        "createdBy": op.created_by,
        "modifiedAt": wire.timestamp(op.modified_at),
        "done": op.done,
        "metadata": _any(op.metadata["type"], metadata),
    }
    if op.error is not None:
        body["error"] = op.error
    elif op.response is not None:
        render = _RESOURCE_RENDERERS[op.response["type"]]
        body["response"] = _any(op.response["type"], render(op.response["value"]))
    return wire.compact(body)


def _json(message: dict[str, Any]) -> Response:
    return Response(wire.dumps(message), media_type="application/json")


def _check_path_id(field: str, value: str) -> str:
    if not value or len(value) > MAX_ID or ":" in value:
        raise wire.FieldError(field, f"must be 1..{MAX_ID} characters")
    return value


@router.post("/kms/v1/keys", summary="Create a symmetric key")
async def create_key(request: Request) -> Response:
    """Create: returns a done Operation whose response is the key."""
    principal = caller(request)
    f = wire.Fields(
        await json_body(request),
        (
            "folderId",
            "name",
            "description",
            "labels",
            "defaultAlgorithm",
            "rotationPeriod",
            "deletionProtection",
        ),
    )
    algorithm = f.enum("defaultAlgorithm", Algorithm)
    if algorithm is Algorithm.SYMMETRIC_ALGORITHM_UNSPECIFIED:
        raise wire.FieldError("defaultAlgorithm", "is required")
    spec = KeySpec(
        folder_id=f.string("folderId", required=True, max_len=MAX_ID),
        name=f.string("name", max_len=MAX_NAME),
        description=f.string("description", max_len=MAX_DESCRIPTION),
        labels=f.labels("labels"),
        default_algorithm=algorithm,
        rotation_period=f.duration("rotationPeriod"),
        deletion_protection=f.boolean("deletionProtection"),
    )
    op = runtime(request).keys.create(spec, principal.id)
    return _json(operation_json(op))


@router.get("/kms/v1/keys", summary="List the symmetric keys of a folder")
async def list_keys(request: Request) -> Response:
    """List."""
    caller(request)
    q = wire.Query(request.query_params, ("folderId", "pageSize", "pageToken"))
    page = runtime(request).keys.list_keys(
        q.string("folderId", required=True, max_len=MAX_ID),
        q.integer("pageSize"),
        q.string("pageToken"),
    )
    return _json(
        wire.compact(
            {
                "keys": [wire.key_json(k) for k in page.items],
                "nextPageToken": page.next_page_token,
            }
        )
    )


@router.post("/kms/v1/keys/{keyId}:rotate", summary="Rotate a key: a new primary version")
async def rotate(keyId: str, request: Request) -> Response:
    """Rotate (no body)."""
    principal = caller(request)
    op = runtime(request).keys.rotate(_check_path_id("keyId", keyId), principal.id)
    return _json(operation_json(op))


@router.post("/kms/v1/keys/{keyId}:setPrimaryVersion", summary="Make a version primary")
async def set_primary_version(keyId: str, request: Request) -> Response:
    """SetPrimaryVersion."""
    principal = caller(request)
    f = wire.Fields(await json_body(request), ("keyId", "versionId"))
    op = runtime(request).keys.set_primary_version(
        _check_path_id("keyId", keyId),
        f.string("versionId", required=True, max_len=MAX_ID),
        principal.id,
    )
    return _json(operation_json(op))


@router.post(
    "/kms/v1/keys/{keyId}:scheduleVersionDestruction",
    summary="Schedule a version for destruction",
)
async def schedule_version_destruction(keyId: str, request: Request) -> Response:
    """ScheduleVersionDestruction; pendingPeriod defaults to 7 days."""
    principal = caller(request)
    f = wire.Fields(await json_body(request), ("keyId", "versionId", "pendingPeriod"))
    op = runtime(request).keys.schedule_version_destruction(
        _check_path_id("keyId", keyId),
        f.string("versionId", required=True, max_len=MAX_ID),
        f.duration("pendingPeriod"),
        principal.id,
    )
    return _json(operation_json(op))


@router.post(
    "/kms/v1/keys/{keyId}:cancelVersionDestruction",
    summary="Cancel a scheduled version destruction",
)
async def cancel_version_destruction(keyId: str, request: Request) -> Response:
    """CancelVersionDestruction."""
    principal = caller(request)
    f = wire.Fields(await json_body(request), ("keyId", "versionId"))
    op = runtime(request).keys.cancel_version_destruction(
        _check_path_id("keyId", keyId),
        f.string("versionId", required=True, max_len=MAX_ID),
        principal.id,
    )
    return _json(operation_json(op))


@router.get("/kms/v1/keys/{keyId}/versions", summary="List the versions of a key")
async def list_versions(keyId: str, request: Request) -> Response:
    """ListVersions."""
    caller(request)
    q = wire.Query(request.query_params, ("pageSize", "pageToken"))
    page = runtime(request).keys.list_versions(
        _check_path_id("keyId", keyId), q.integer("pageSize"), q.string("pageToken")
    )
    return _json(
        wire.compact(
            {
                "keyVersions": [wire.version_json(v) for v in page.items],
                "nextPageToken": page.next_page_token,
            }
        )
    )


@router.get("/kms/v1/keys/{keyId}/operations", summary="List the operations on a key")
async def list_operations(keyId: str, request: Request) -> Response:
    """ListOperations."""
    caller(request)
    q = wire.Query(request.query_params, ("pageSize", "pageToken"))
    page = runtime(request).keys.list_operations(
        _check_path_id("keyId", keyId), q.integer("pageSize"), q.string("pageToken")
    )
    return _json(
        wire.compact(
            {
                "operations": [operation_json(o) for o in page.items],
                "nextPageToken": page.next_page_token,
            }
        )
    )


@router.patch("/kms/v1/keys/{keyId}", summary="Update a symmetric key")
async def update_key(keyId: str, request: Request) -> Response:
    """Update: only the fields in updateMask change; listed but absent fields reset."""
    principal = caller(request)
    f = wire.Fields(
        await json_body(request),
        (
            "keyId",
            "updateMask",
            "name",
            "description",
            "status",
            "labels",
            "defaultAlgorithm",
            "rotationPeriod",
            "deletionProtection",
        ),
    )
    values = KeyUpdate(
        name=f.string("name", max_len=MAX_NAME),
        description=f.string("description", max_len=MAX_DESCRIPTION),
        status=f.enum("status", KeyStatus),
        labels=f.labels("labels"),
        default_algorithm=f.enum("defaultAlgorithm", Algorithm),
        rotation_period=f.duration("rotationPeriod"),
        deletion_protection=f.boolean("deletionProtection"),
    )
    mask = wire.field_mask("updateMask", f.string("updateMask", required=True), UPDATE_PATHS)
    op = runtime(request).keys.update(_check_path_id("keyId", keyId), mask, values, principal.id)
    return _json(operation_json(op))


@router.delete("/kms/v1/keys/{keyId}", summary="Delete a symmetric key")
async def delete_key(keyId: str, request: Request) -> Response:
    """Delete: hidden at once, versions destroyed after 72 hours."""
    principal = caller(request)
    op = runtime(request).keys.delete(_check_path_id("keyId", keyId), principal.id)
    return _json(operation_json(op))


@router.get("/kms/v1/keys/{keyId}", summary="Get a symmetric key")
async def get_key(keyId: str, request: Request) -> Response:
    """Get."""
    caller(request)
    key = runtime(request).keys.get(_check_path_id("keyId", keyId))
    return _json(wire.key_json(key))


@router.get("/operations/{operationId}", summary="Get an operation")
async def get_operation(operationId: str, request: Request) -> Response:
    """OperationService.Get."""
    caller(request)
    op = runtime(request).keys.get_operation(_check_path_id("operationId", operationId))
    return _json(operation_json(op))
