"""Access bindings: Yandex's three key methods, and the same three on folders (ours)."""

from __future__ import annotations

from typing import Any

from fastapi import Request, Response

from kms_hsm.api import wire
from kms_hsm.api.calls import handle
from kms_hsm.api.deps import json_body
from kms_hsm.api.rest import Routes
from kms_hsm.api.routes.keys import operation_json
from kms_hsm.domain.fields import FieldError
from kms_hsm.domain.validation import MAX_RESOURCE_ID
from kms_hsm.service import handlers, methods
from kms_hsm.service.access import Binding, Resource
from kms_hsm.service.pipeline import Call

_PAGING = ("pageSize", "pageToken")

routes = Routes("AccessBindings")


def _binding(field: str, value: Any) -> Binding:
    """An AccessBinding object's fields, typed; their rules are the handler's."""
    if not isinstance(value, dict):
        raise FieldError(field, "must be an AccessBinding object")
    f = wire.Fields(value, ("roleId", "subject"))
    subject = value.get("subject")
    if not isinstance(subject, dict):
        raise FieldError(f"{field}.subject", "is required")
    s = wire.Fields(subject, ("id", "type"))
    subject_id = subject.get("id")
    if not isinstance(subject_id, str) or not subject_id:
        raise FieldError(f"{field}.subject.id", "is required (a string)")
    return Binding(f.string("roleId"), s.string("type"), subject_id)


def _binding_json(b: Binding) -> dict[str, Any]:
    return {"roleId": b.role_id, "subject": {"id": b.subject_id, "type": b.subject_type}}


def render_bindings(page: handlers.BindingsPage) -> dict[str, Any]:
    """``ListAccessBindingsResponse``."""
    return wire.compact(
        {
            "accessBindings": [_binding_json(b) for b in page.bindings],
            "nextPageToken": page.next_page_token,
        }
    )


def read_bindings(body: dict[str, Any]) -> list[Binding]:
    """The bindings of a ``SetAccessBindingsRequest`` body."""
    f = wire.Fields(body, ("resourceId", "accessBindings"))
    raw = f.list_("accessBindings")
    return [_binding(f"accessBindings[{i}]", b) for i, b in enumerate(raw)]


def read_deltas(body: dict[str, Any]) -> list[tuple[str, Binding]]:
    """The (action, binding) deltas of an ``UpdateAccessBindingsRequest`` body."""
    f = wire.Fields(body, ("resourceId", "accessBindingDeltas"))
    deltas = []
    for i, raw in enumerate(f.list_("accessBindingDeltas", required=True)):
        field = f"accessBindingDeltas[{i}]"
        if not isinstance(raw, dict):
            raise FieldError(field, "must be an AccessBindingDelta object")
        d = wire.Fields(raw, ("action", "accessBinding"))
        action = d.string("action", required=True)
        deltas.append((action, _binding(f"{field}.accessBinding", raw.get("accessBinding"))))
    return deltas


async def _list(request: Request, call: Call, resource: Resource) -> dict[str, Any]:
    q = wire.Query(request.query_params, _PAGING)
    r = handlers.ListBindingsRequest(resource, q.integer("pageSize"), q.string("pageToken"))
    return render_bindings(await handlers.list_access_bindings(call, r))


async def _set(request: Request, call: Call, resource: Resource) -> dict[str, Any]:
    r = handlers.SetBindingsRequest(resource, read_bindings(await json_body(request)))
    return operation_json(await handlers.set_access_bindings(call, r))


async def _update(request: Request, call: Call, resource: Resource) -> dict[str, Any]:
    r = handlers.UpdateBindingsRequest(resource, read_deltas(await json_body(request)))
    return operation_json(await handlers.update_access_bindings(call, r))


@routes.bind(
    methods.KEY_LIST_ACCESS_BINDINGS,
    "get",
    "/kms/v1/keys/{resourceId}:listAccessBindings",
    summary="List a key's bindings",
    query=_PAGING,
)
async def list_key_bindings(resourceId: str, request: Request) -> Response:
    """ListAccessBindings."""
    resource = handlers.key_resource(resourceId)
    return await handle(
        request,
        methods.KEY_LIST_ACCESS_BINDINGS,
        lambda c: _list(request, c, resource),
        key_id=resourceId[:MAX_RESOURCE_ID],
    )


@routes.bind(
    methods.KEY_SET_ACCESS_BINDINGS,
    "post",
    "/kms/v1/keys/{resourceId}:setAccessBindings",
    summary="Replace a key's bindings",
)
async def set_key_bindings(resourceId: str, request: Request) -> Response:
    """SetAccessBindings."""
    resource = handlers.key_resource(resourceId)
    return await handle(
        request,
        methods.KEY_SET_ACCESS_BINDINGS,
        lambda c: _set(request, c, resource),
        key_id=resourceId[:MAX_RESOURCE_ID],
    )


@routes.bind(
    methods.KEY_UPDATE_ACCESS_BINDINGS,
    "post",
    "/kms/v1/keys/{resourceId}:updateAccessBindings",
    summary="Add or remove a key's bindings",
)
async def update_key_bindings(resourceId: str, request: Request) -> Response:
    """UpdateAccessBindings."""
    resource = handlers.key_resource(resourceId)
    return await handle(
        request,
        methods.KEY_UPDATE_ACCESS_BINDINGS,
        lambda c: _update(request, c, resource),
        key_id=resourceId[:MAX_RESOURCE_ID],
    )


@routes.bind(
    methods.FOLDER_LIST_ACCESS_BINDINGS,
    "get",
    "/kms-hsm/v1/folders/{folderId}:listAccessBindings",
    summary="List a folder's bindings",
    query=_PAGING,
)
async def list_folder_bindings(folderId: str, request: Request) -> Response:
    """Folder bindings apply to every key in the folder (a kms-hsm extension)."""
    resource = handlers.folder_resource(folderId)
    return await handle(
        request, methods.FOLDER_LIST_ACCESS_BINDINGS, lambda c: _list(request, c, resource)
    )


@routes.bind(
    methods.FOLDER_SET_ACCESS_BINDINGS,
    "post",
    "/kms-hsm/v1/folders/{folderId}:setAccessBindings",
    summary="Replace a folder's bindings",
)
async def set_folder_bindings(folderId: str, request: Request) -> Response:
    """Replace every binding on a folder."""
    resource = handlers.folder_resource(folderId)
    return await handle(
        request, methods.FOLDER_SET_ACCESS_BINDINGS, lambda c: _set(request, c, resource)
    )


@routes.bind(
    methods.FOLDER_UPDATE_ACCESS_BINDINGS,
    "post",
    "/kms-hsm/v1/folders/{folderId}:updateAccessBindings",
    summary="Add or remove a folder's bindings",
)
async def update_folder_bindings(folderId: str, request: Request) -> Response:
    """ADD/REMOVE deltas on a folder's bindings."""
    resource = handlers.folder_resource(folderId)
    return await handle(
        request, methods.FOLDER_UPDATE_ACCESS_BINDINGS, lambda c: _update(request, c, resource)
    )
