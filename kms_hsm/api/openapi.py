"""The served OpenAPI document: Yandex's paths with their request and response messages.

Routes read their bodies through ``wire.Fields`` (proto3 JSON rules), so FastAPI cannot see
their shapes: each operation's request and response schemas are found by its method's
message names (``kms_hsm.service.methods``), its path and query in its REST binding.
``kms-hsm openapi`` writes the document; ``openapi.json`` beside this file is the committed
copy that a test keeps in sync.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from kms_hsm.api import schemas
from kms_hsm.api.rest import Binding, Routes
from kms_hsm.api.routes import access, asymmetric, crypto, iam, keys
from kms_hsm.api.schemas import ID_PATTERN

if TYPE_CHECKING:
    from kms_hsm.api.app import KmsApp

COMMITTED = Path(__file__).with_name("openapi.json")

# Every route module's bindings, in the order the document lists them.
ROUTES: tuple[Routes, ...] = (
    crypto.routes,
    keys.routes,
    access.routes,
    *asymmetric.ROUTES,
    iam.routes,
)


def bindings() -> list[Binding]:
    """Every method's REST binding."""
    return [b for routes in ROUTES for b in routes.bindings]


def message_models(binding: Binding) -> tuple[type[BaseModel] | None, type[BaseModel]]:
    """The request body and response schemas of a binding, by its method's message names.

    Only POST and PATCH carry a body; a method whose request has no schema (Rotate) has none.
    """
    body = (
        getattr(schemas, binding.method.request, None)
        if binding.verb in ("post", "patch")
        else None
    )
    return body, getattr(schemas, binding.method.response)


_QUERY_SCHEMAS: dict[str, dict[str, Any]] = {
    "folderId": {"type": "string", "minLength": 1, "maxLength": 50, "pattern": ID_PATTERN},
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
    """The OpenAPI document of the control plane ``app`` and the data plane's bindings."""
    documented = [r for routes in ROUTES for r in routes.documented_only()]
    doc = get_openapi(
        title=app.title,
        version=app.version,
        description=app.description,
        routes=[*documented, *app.routes],
    )
    components = doc.setdefault("components", {}).setdefault("schemas", {})
    models = {m for b in bindings() for m in message_models(b) if m} | {schemas.Status}
    for model in sorted(models, key=lambda m: m.__name__):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(schema.pop("$defs", {}))
        components[model.__name__] = schema
    for binding in bindings():
        request, response = message_models(binding)
        operation = doc["paths"][binding.path][binding.verb]
        operation["operationId"] = binding.method.operation_id
        if request is not None:
            operation["requestBody"] = {
                # proto3: an empty body is every field at its default (then checked).
                "required": False,
                "content": {"application/json": {"schema": _ref(request)}},
            }
        params = [p for p in operation.get("parameters", []) if p.get("in") == "path"]
        for name in binding.query:
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
                longest = 64 if p["name"] == "resourceId" else 50
                p["schema"] = {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": longest,
                    "pattern": ID_PATTERN,
                }
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
        # A public method (IamToken.Create) carries its credential in the body.
        operation["security"] = [] if binding.method.public else [{"bearer": []}]
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


def render(app: KmsApp) -> str:
    """The document as committed: sorted keys, two-space indent, trailing newline."""
    return json.dumps(build_openapi(app.control_plane), indent=2, sort_keys=True) + "\n"
