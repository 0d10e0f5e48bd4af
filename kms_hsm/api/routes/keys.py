"""SymmetricKeyService and OperationService over REST (the parts built so far)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from fastapi import Request, Response

from kms_hsm.api import wire
from kms_hsm.api.calls import handle
from kms_hsm.api.deps import json_body
from kms_hsm.api.rest import Routes
from kms_hsm.domain.model import Algorithm, KeyStatus
from kms_hsm.domain.records import key_from_record, version_from_record
from kms_hsm.domain.validation import MAX_DESCRIPTION, MAX_ID, MAX_NAME
from kms_hsm.errors import NotFound, PermissionDenied
from kms_hsm.service import methods
from kms_hsm.service.keys import KeySpec, KeyUpdate
from kms_hsm.service.pipeline import Call
from kms_hsm.store.repository import StoredOperation

_PAGING = ("pageSize", "pageToken")

routes = Routes("SymmetricKey")

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


def _metadata_fields(op: StoredOperation) -> dict[str, Any]:
    """The operation's metadata fields; none when the stored metadata is not the usual shape.

    Rows are JSON written by this and earlier versions (or edited by hand): a missing or
    odd "value" must not turn a read into a 500.
    """
    value = op.metadata.get("value") if isinstance(op.metadata, dict) else None
    return value if isinstance(value, dict) else {}


def operation_json(op: StoredOperation) -> dict[str, Any]:
    """``yandex.cloud.operation.Operation`` with metadata and response as ``Any``."""
    metadata = {
        wire.camel(k): _metadata_value(k, v)
        for k, v in _metadata_fields(op).items()
        if v not in (None, "")
    }
    body: dict[str, Any] = {
        "id": op.id,
        "description": op.description,
        "createdAt": wire.timestamp(op.created_at),
        "createdBy": op.created_by,
        "modifiedAt": wire.timestamp(op.modified_at),
        "done": op.done,
        "metadata": _any(str(op.metadata.get("type", "google.protobuf.Empty")), metadata),
    }
    if op.error is not None:
        body["error"] = op.error
    elif op.response is not None:
        render = _RESOURCE_RENDERERS[op.response["type"]]
        body["response"] = _any(op.response["type"], render(op.response["value"]))
    return wire.compact(body)


def _check_path_id(field: str, value: str) -> str:
    return wire.path_id(field, value, MAX_ID)


def _mutation(call: Call, op: StoredOperation) -> dict[str, Any]:
    # The service appended the audit event in the operation's own transaction.
    call.audited = True
    return operation_json(op)


@routes.bind(methods.CREATE_KEY, "post", "/kms/v1/keys", summary="Create a symmetric key")
async def create_key(request: Request) -> Response:
    """Create: returns a done Operation whose response is the key."""

    async def work(call: Call) -> dict[str, Any]:
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
        folder_id = f.identifier("folderId", required=True)
        algorithm = f.enum("defaultAlgorithm", Algorithm)
        if algorithm is Algorithm.SYMMETRIC_ALGORITHM_UNSPECIFIED:
            raise wire.FieldError("defaultAlgorithm", "is required")
        spec = KeySpec(
            folder_id=folder_id,
            name=f.string("name", max_len=MAX_NAME),
            description=f.string("description", max_len=MAX_DESCRIPTION),
            labels=f.labels("labels"),
            default_algorithm=algorithm,
            rotation_period=f.duration("rotationPeriod"),
            deletion_protection=f.boolean("deletionProtection"),
        )
        call.authorize_folder(folder_id)
        op = await call.rt.keys.create(spec, call.context)
        call.key_id = op.key_id or ""
        return _mutation(call, op)

    return await handle(request, methods.CREATE_KEY, work)


@routes.bind(
    methods.LIST_KEYS,
    "get",
    "/kms/v1/keys",
    summary="List the symmetric keys of a folder",
    query=("folderId", "pageSize", "pageToken"),
)
async def list_keys(request: Request) -> Response:
    """List."""

    async def work(call: Call) -> dict[str, Any]:
        q = wire.Query(request.query_params, ("folderId", "pageSize", "pageToken"))
        folder_id = q.identifier("folderId", required=True)
        call.authorize_folder(folder_id)
        page = call.rt.keys.list_keys(folder_id, q.integer("pageSize"), q.string("pageToken"))
        return wire.compact(
            {
                "keys": [wire.key_json(k) for k in page.items],
                "nextPageToken": page.next_page_token,
            }
        )

    return await handle(request, methods.LIST_KEYS, work)


@routes.bind(
    methods.ROTATE_KEY,
    "post",
    "/kms/v1/keys/{keyId}:rotate",
    summary="Rotate a key: a new primary version",
)
async def rotate(keyId: str, request: Request) -> Response:
    """Rotate (no body)."""

    async def work(call: Call) -> dict[str, Any]:
        call.authorize_key(_check_path_id("keyId", keyId))
        return _mutation(call, await call.rt.keys.rotate(keyId, call.context))

    return await handle(request, methods.ROTATE_KEY, work, key_id=keyId[:MAX_ID])


@routes.bind(
    methods.SET_PRIMARY_VERSION,
    "post",
    "/kms/v1/keys/{keyId}:setPrimaryVersion",
    summary="Make a version primary",
)
async def set_primary_version(keyId: str, request: Request) -> Response:
    """SetPrimaryVersion."""

    async def work(call: Call) -> dict[str, Any]:
        f = wire.Fields(await json_body(request), ("keyId", "versionId"))
        version_id = f.identifier("versionId", required=True)
        call.authorize_key(_check_path_id("keyId", keyId))
        call.version_id = version_id
        op = call.rt.keys.set_primary_version(keyId, version_id, call.context)
        return _mutation(call, op)

    return await handle(request, methods.SET_PRIMARY_VERSION, work, key_id=keyId[:MAX_ID])


@routes.bind(
    methods.SCHEDULE_VERSION_DESTRUCTION,
    "post",
    "/kms/v1/keys/{keyId}:scheduleVersionDestruction",
    summary="Schedule a version for destruction",
)
async def schedule_version_destruction(keyId: str, request: Request) -> Response:
    """ScheduleVersionDestruction; pendingPeriod defaults to 7 days."""

    async def work(call: Call) -> dict[str, Any]:
        f = wire.Fields(await json_body(request), ("keyId", "versionId", "pendingPeriod"))
        version_id = f.identifier("versionId", required=True)
        pending = f.duration("pendingPeriod")
        call.authorize_key(_check_path_id("keyId", keyId))
        call.version_id = version_id
        op = call.rt.keys.schedule_version_destruction(keyId, version_id, pending, call.context)
        return _mutation(call, op)

    return await handle(request, methods.SCHEDULE_VERSION_DESTRUCTION, work, key_id=keyId[:MAX_ID])


@routes.bind(
    methods.CANCEL_VERSION_DESTRUCTION,
    "post",
    "/kms/v1/keys/{keyId}:cancelVersionDestruction",
    summary="Cancel a scheduled version destruction",
)
async def cancel_version_destruction(keyId: str, request: Request) -> Response:
    """CancelVersionDestruction."""

    async def work(call: Call) -> dict[str, Any]:
        f = wire.Fields(await json_body(request), ("keyId", "versionId"))
        version_id = f.identifier("versionId", required=True)
        call.authorize_key(_check_path_id("keyId", keyId))
        call.version_id = version_id
        op = call.rt.keys.cancel_version_destruction(keyId, version_id, call.context)
        return _mutation(call, op)

    return await handle(request, methods.CANCEL_VERSION_DESTRUCTION, work, key_id=keyId[:MAX_ID])


@routes.bind(
    methods.LIST_VERSIONS,
    "get",
    "/kms/v1/keys/{keyId}/versions",
    summary="List the versions of a key",
    query=_PAGING,
)
async def list_versions(keyId: str, request: Request) -> Response:
    """ListVersions."""

    async def work(call: Call) -> dict[str, Any]:
        q = wire.Query(request.query_params, ("pageSize", "pageToken"))
        call.authorize_key(_check_path_id("keyId", keyId))
        page = call.rt.keys.list_versions(keyId, q.integer("pageSize"), q.string("pageToken"))
        return wire.compact(
            {
                "keyVersions": [wire.version_json(v) for v in page.items],
                "nextPageToken": page.next_page_token,
            }
        )

    return await handle(request, methods.LIST_VERSIONS, work, key_id=keyId[:MAX_ID])


@routes.bind(
    methods.LIST_OPERATIONS,
    "get",
    "/kms/v1/keys/{keyId}/operations",
    summary="List the operations on a key",
    query=_PAGING,
)
async def list_operations(keyId: str, request: Request) -> Response:
    """ListOperations."""

    async def work(call: Call) -> dict[str, Any]:
        q = wire.Query(request.query_params, ("pageSize", "pageToken"))
        call.authorize_key(_check_path_id("keyId", keyId))
        page = call.rt.keys.list_operations(keyId, q.integer("pageSize"), q.string("pageToken"))
        return wire.compact(
            {
                "operations": [operation_json(o) for o in page.items],
                "nextPageToken": page.next_page_token,
            }
        )

    return await handle(request, methods.LIST_OPERATIONS, work, key_id=keyId[:MAX_ID])


@routes.bind(methods.UPDATE_KEY, "patch", "/kms/v1/keys/{keyId}", summary="Update a symmetric key")
async def update_key(keyId: str, request: Request) -> Response:
    """Update: only the fields in updateMask change; listed but absent fields reset."""

    async def work(call: Call) -> dict[str, Any]:
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
        call.authorize_key(_check_path_id("keyId", keyId))
        return _mutation(call, call.rt.keys.update(keyId, mask, values, call.context))

    return await handle(request, methods.UPDATE_KEY, work, key_id=keyId[:MAX_ID])


@routes.bind(methods.DELETE_KEY, "delete", "/kms/v1/keys/{keyId}", summary="Delete a symmetric key")
async def delete_key(keyId: str, request: Request) -> Response:
    """Delete: hidden at once, versions destroyed after 72 hours."""

    async def work(call: Call) -> dict[str, Any]:
        call.authorize_key(_check_path_id("keyId", keyId))
        return _mutation(call, call.rt.keys.delete(keyId, call.context))

    return await handle(request, methods.DELETE_KEY, work, key_id=keyId[:MAX_ID])


@routes.bind(methods.GET_KEY, "get", "/kms/v1/keys/{keyId}", summary="Get a symmetric key")
async def get_key(keyId: str, request: Request) -> Response:
    """Get."""

    async def work(call: Call) -> dict[str, Any]:
        call.authorize_key(_check_path_id("keyId", keyId))
        return wire.key_json(call.rt.keys.get(keyId))

    return await handle(request, methods.GET_KEY, work, key_id=keyId[:MAX_ID])


@routes.bind(methods.GET_OPERATION, "get", "/operations/{operationId}", summary="Get an operation")
async def get_operation(operationId: str, request: Request) -> Response:
    """OperationService.Get: allowed to whoever may view the operation's key or folder.

    An operation on no key (a folder's or the instance's access bindings) is also
    readable by its author, who may have given up their own role on the folder in it.
    """

    async def work(call: Call) -> dict[str, Any]:
        op = call.rt.keys.get_operation(_check_path_id("operationId", operationId))
        try:
            if op.key_id is not None:
                call.authorize_key(op.key_id, deleted_too=True)
            elif op.created_by != call.principal.id:
                folder_id = _metadata_fields(op).get("resource_id")
                if not isinstance(folder_id, str) or not folder_id:
                    # No folder to check a role on: only the author may read it.
                    raise NotFound(f"operation {operationId} not found")
                call.authorize_folder(folder_id)
        except NotFound:
            raise NotFound(f"operation {operationId} not found") from None
        except PermissionDenied:
            if op.key_id is not None:
                raise  # a role on the key, but not this one: as for the key itself
            raise NotFound(f"operation {operationId} not found") from None
        return operation_json(op)

    return await handle(request, methods.GET_OPERATION, work)
