"""SymmetricKeyService and OperationService over REST (the parts built so far)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request, Response

from kms_hsm.api import wire
from kms_hsm.api.deps import caller, json_body, runtime
from kms_hsm.domain.model import Algorithm
from kms_hsm.domain.records import key_from_record
from kms_hsm.domain.validation import MAX_DESCRIPTION, MAX_ID, MAX_NAME
from kms_hsm.service.keys import KeySpec
from kms_hsm.store.repository import StoredOperation

router = APIRouter(tags=["SymmetricKey"])


def _render_key(record: dict[str, Any]) -> dict[str, Any]:
    return wire.key_json(key_from_record(record))


def _render_empty(record: dict[str, Any]) -> dict[str, Any]:
    return {}


_RESOURCE_RENDERERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "yandex.cloud.kms.v1.SymmetricKey": _render_key,
    "google.protobuf.Empty": _render_empty,
}


def _any(type_name: str, message: dict[str, Any]) -> dict[str, Any]:
    return {"@type": f"type.googleapis.com/{type_name}", **message}


def operation_json(op: StoredOperation) -> dict[str, Any]:
    """``yandex.cloud.operation.Operation`` with metadata and response as ``Any``."""
    metadata = {wire.camel(k): v for k, v in op.metadata["value"].items() if v not in (None, "")}
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
