"""The served OpenAPI document: Yandex's paths with their request and response messages.

Routes read their bodies through ``wire.Fields`` (proto3 JSON rules), so FastAPI cannot see
their shapes; the table below tells the document what each operation takes and returns.
``kms-hsm openapi`` writes the document; ``openapi.json`` beside this file is the committed
copy that a test keeps in sync.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from kms_hsm.api import schemas

COMMITTED = Path(__file__).with_name("openapi.json")

_PAGING = ("pageSize", "pageToken")

# (method, path) -> (request body model, response model, query parameters)
OPERATIONS: dict[
    tuple[str, str], tuple[type[BaseModel] | None, type[BaseModel], tuple[str, ...]]
] = {
    ("post", "/kms/v1/keys/{keyId}:encrypt"): (
        schemas.SymmetricEncryptRequest,
        schemas.SymmetricEncryptResponse,
        (),
    ),
    ("post", "/kms/v1/keys/{keyId}:decrypt"): (
        schemas.SymmetricDecryptRequest,
        schemas.SymmetricDecryptResponse,
        (),
    ),
    ("post", "/kms/v1/keys/{keyId}:reEncrypt"): (
        schemas.SymmetricReEncryptRequest,
        schemas.SymmetricReEncryptResponse,
        (),
    ),
    ("post", "/kms/v1/keys/{keyId}:generateDataKey"): (
        schemas.GenerateDataKeyRequest,
        schemas.GenerateDataKeyResponse,
        (),
    ),
    ("post", "/kms/v1/keys"): (schemas.CreateSymmetricKeyRequest, schemas.Operation, ()),
    ("get", "/kms/v1/keys"): (None, schemas.ListSymmetricKeysResponse, ("folderId", *_PAGING)),
    ("get", "/kms/v1/keys/{keyId}"): (None, schemas.SymmetricKey, ()),
    ("patch", "/kms/v1/keys/{keyId}"): (schemas.UpdateSymmetricKeyRequest, schemas.Operation, ()),
    ("delete", "/kms/v1/keys/{keyId}"): (None, schemas.Operation, ()),
    ("post", "/kms/v1/keys/{keyId}:rotate"): (None, schemas.Operation, ()),
    ("post", "/kms/v1/keys/{keyId}:setPrimaryVersion"): (
        schemas.SetPrimarySymmetricKeyVersionRequest,
        schemas.Operation,
        (),
    ),
    ("post", "/kms/v1/keys/{keyId}:scheduleVersionDestruction"): (
        schemas.ScheduleSymmetricKeyVersionDestructionRequest,
        schemas.Operation,
        (),
    ),
    ("post", "/kms/v1/keys/{keyId}:cancelVersionDestruction"): (
        schemas.CancelSymmetricKeyVersionDestructionRequest,
        schemas.Operation,
        (),
    ),
    ("get", "/kms/v1/keys/{keyId}/versions"): (
        None,
        schemas.ListSymmetricKeyVersionsResponse,
        _PAGING,
    ),
    ("get", "/kms/v1/keys/{keyId}/operations"): (
        None,
        schemas.ListSymmetricKeyOperationsResponse,
        _PAGING,
    ),
    ("get", "/operations/{operationId}"): (None, schemas.Operation, ()),
}
for _resource, _path in (
    ("SymmetricKey", "/kms/v1/keys/{resourceId}"),
    ("Folder", "/kms-hsm/v1/folders/{folderId}"),
):
    OPERATIONS[("get", f"{_path}:listAccessBindings")] = (
        None,
        schemas.ListAccessBindingsResponse,
        _PAGING,
    )
    OPERATIONS[("post", f"{_path}:setAccessBindings")] = (
        schemas.SetAccessBindingsRequest,
        schemas.Operation,
        (),
    )
    OPERATIONS[("post", f"{_path}:updateAccessBindings")] = (
        schemas.UpdateAccessBindingsRequest,
        schemas.Operation,
        (),
    )

# The gRPC method each route transcodes, as Yandex's REST reference names them.
OPERATION_IDS = {
    ("post", "/kms/v1/keys/{keyId}:encrypt"): "SymmetricCrypto_Encrypt",
    ("post", "/kms/v1/keys/{keyId}:decrypt"): "SymmetricCrypto_Decrypt",
    ("post", "/kms/v1/keys/{keyId}:reEncrypt"): "SymmetricCrypto_ReEncrypt",
    ("post", "/kms/v1/keys/{keyId}:generateDataKey"): "SymmetricCrypto_GenerateDataKey",
    ("post", "/kms/v1/keys"): "SymmetricKey_Create",
    ("get", "/kms/v1/keys"): "SymmetricKey_List",
    ("get", "/kms/v1/keys/{keyId}"): "SymmetricKey_Get",
    ("patch", "/kms/v1/keys/{keyId}"): "SymmetricKey_Update",
    ("delete", "/kms/v1/keys/{keyId}"): "SymmetricKey_Delete",
    ("post", "/kms/v1/keys/{keyId}:rotate"): "SymmetricKey_Rotate",
    ("post", "/kms/v1/keys/{keyId}:setPrimaryVersion"): "SymmetricKey_SetPrimaryVersion",
    ("post", "/kms/v1/keys/{keyId}:scheduleVersionDestruction"): (
        "SymmetricKey_ScheduleVersionDestruction"
    ),
    ("post", "/kms/v1/keys/{keyId}:cancelVersionDestruction"): (
        "SymmetricKey_CancelVersionDestruction"
    ),
    ("get", "/kms/v1/keys/{keyId}/versions"): "SymmetricKey_ListVersions",
    ("get", "/kms/v1/keys/{keyId}/operations"): "SymmetricKey_ListOperations",
    ("get", "/operations/{operationId}"): "Operation_Get",
    ("get", "/kms/v1/keys/{resourceId}:listAccessBindings"): "SymmetricKey_ListAccessBindings",
    ("post", "/kms/v1/keys/{resourceId}:setAccessBindings"): "SymmetricKey_SetAccessBindings",
    ("post", "/kms/v1/keys/{resourceId}:updateAccessBindings"): (
        "SymmetricKey_UpdateAccessBindings"
    ),
    ("get", "/kms-hsm/v1/folders/{folderId}:listAccessBindings"): "Folder_ListAccessBindings",
    ("post", "/kms-hsm/v1/folders/{folderId}:setAccessBindings"): "Folder_SetAccessBindings",
    ("post", "/kms-hsm/v1/folders/{folderId}:updateAccessBindings"): (
        "Folder_UpdateAccessBindings"
    ),
}

_QUERY_SCHEMAS: dict[str, dict[str, Any]] = {
    "folderId": {"type": "string", "maxLength": 50},
    "pageSize": {"type": "string", "format": "int64", "pattern": "^[0-9]{1,4}$"},
    "pageToken": {"type": "string", "maxLength": 256},
}

_ERROR_STATUSES = {
    "400": "INVALID_ARGUMENT or FAILED_PRECONDITION",
    "401": "UNAUTHENTICATED",
    "403": "PERMISSION_DENIED",
    "404": "NOT_FOUND",
    "503": "UNAVAILABLE",
}


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def build_openapi(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI document of ``app`` with every message schema filled in."""
    doc = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    components = doc.setdefault("components", {}).setdefault("schemas", {})
    models = {m for (req, resp, _q) in OPERATIONS.values() for m in (req, resp) if m} | {
        schemas.Status
    }
    for model in sorted(models, key=lambda m: m.__name__):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(schema.pop("$defs", {}))
        components[model.__name__] = schema
    for (method, path), (request, response, query) in OPERATIONS.items():
        operation = doc["paths"][path][method]
        operation["operationId"] = OPERATION_IDS[(method, path)]
        if request is not None:
            operation["requestBody"] = {
                # proto3: an empty body is every field at its default (then checked).
                "required": False,
                "content": {"application/json": {"schema": _ref(request)}},
            }
        params = [p for p in operation.get("parameters", []) if p.get("in") == "path"]
        for name in query:
            params.append(
                {
                    "name": name,
                    "in": "query",
                    "required": name == "folderId",
                    "schema": _QUERY_SCHEMAS[name],
                }
            )
        for p in params:
            if p.get("in") == "path":
                longest = 64 if p["name"] in ("resourceId", "folderId") else 50
                p["schema"] = {"type": "string", "minLength": 1, "maxLength": longest}
        operation["parameters"] = params
        responses: dict[str, Any] = {
            "200": {
                "description": "OK",
                "content": {"application/json": {"schema": _ref(response)}},
            }
        }
        for status, meaning in _ERROR_STATUSES.items():
            responses[status] = {
                "description": meaning,
                "content": {"application/json": {"schema": _ref(schemas.Status)}},
            }
        operation["responses"] = responses
        operation["security"] = [{"bearer": []}]
    components_root = doc["components"]
    components_root.pop("securitySchemes", None)
    components_root["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    return doc


def install_openapi(app: FastAPI) -> None:
    """Serve ``build_openapi`` at /openapi.json (built once)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_openapi(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def render(app: FastAPI) -> str:
    """The document as committed: sorted keys, two-space indent, trailing newline."""
    return json.dumps(build_openapi(app), indent=2, sort_keys=True) + "\n"
