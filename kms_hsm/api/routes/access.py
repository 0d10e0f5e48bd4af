"""Access bindings: Yandex's three key methods, and the same three on folders (ours)."""

from __future__ import annotations

from typing import Any

from fastapi import Request, Response

from kms_hsm.api import wire
from kms_hsm.api.calls import handle
from kms_hsm.api.deps import json_body
from kms_hsm.api.rest import Routes
from kms_hsm.api.routes.keys import operation_json
from kms_hsm.domain.validation import MAX_ID, MAX_RESOURCE_ID, MAX_SUBJECT_ID
from kms_hsm.errors import InvalidArgument
from kms_hsm.service import methods
from kms_hsm.service.access import Binding, Resource
from kms_hsm.service.paging import check_page_size
from kms_hsm.service.pipeline import Call

_PAGING = ("pageSize", "pageToken")

routes = Routes("AccessBindings")

MAX_BINDINGS_TOKEN = 100


def _resource_id(value: str) -> str:
    return wire.path_id("resourceId", value, MAX_RESOURCE_ID)


def _folder_id(value: str) -> str:
    return wire.path_id("folderId", value, MAX_ID)


def _binding(field: str, value: Any) -> Binding:
    if not isinstance(value, dict):
        raise wire.FieldError(field, "must be an AccessBinding object")
    f = wire.Fields(value, ("roleId", "subject"))
    subject = value.get("subject")
    if not isinstance(subject, dict):
        raise wire.FieldError(f"{field}.subject", "is required")
    s = wire.Fields(subject, ("id", "type"))
    subject_id = subject.get("id")
    if not isinstance(subject_id, str) or not subject_id:
        raise wire.FieldError(f"{field}.subject.id", "is required (a string)")
    return Binding(
        f.string("roleId", required=True, max_len=64),
        s.string("type", required=True, max_len=100),
        wire.check_identifier(f"{field}.subject.id", subject_id, MAX_SUBJECT_ID),
    )


def _binding_json(b: Binding) -> dict[str, Any]:
    return {"roleId": b.role_id, "subject": {"id": b.subject_id, "type": b.subject_type}}


def _authorize(call: Call, resource: Resource) -> None:
    if resource.type == "key":
        call.authorize_key(resource.id)
    else:
        call.authorize_folder(resource.id)


async def _list(request: Request, call: Call, resource: Resource) -> dict[str, Any]:
    q = wire.Query(request.query_params, ("pageSize", "pageToken"))
    size = check_page_size(q.integer("pageSize"))
    token = q.string("pageToken", max_len=MAX_BINDINGS_TOKEN)
    _authorize(call, resource)
    offset = 0
    if token:
        if not token.isdigit():
            raise InvalidArgument("pageToken is invalid")
        offset = int(token)
    bindings = call.rt.access.list_bindings(resource)
    page = bindings[offset : offset + size]
    more = offset + size < len(bindings)
    return wire.compact(
        {
            "accessBindings": [_binding_json(b) for b in page],
            "nextPageToken": str(offset + size) if more else "",
        }
    )


async def _set(request: Request, call: Call, resource: Resource) -> dict[str, Any]:
    f = wire.Fields(await json_body(request), ("resourceId", "accessBindings"))
    raw = f.list_("accessBindings")
    bindings = [_binding(f"accessBindings[{i}]", b) for i, b in enumerate(raw)]
    _authorize(call, resource)
    call.audited = True
    return operation_json(call.rt.access.set_bindings(resource, bindings, call.context))


async def _update(request: Request, call: Call, resource: Resource) -> dict[str, Any]:
    f = wire.Fields(await json_body(request), ("resourceId", "accessBindingDeltas"))
    deltas = []
    for i, raw in enumerate(f.list_("accessBindingDeltas", required=True)):
        field = f"accessBindingDeltas[{i}]"
        if not isinstance(raw, dict):
            raise wire.FieldError(field, "must be an AccessBindingDelta object")
        d = wire.Fields(raw, ("action", "accessBinding"))
        action = d.string("action", required=True)
        if action not in ("ADD", "REMOVE"):
            raise wire.FieldError(f"{field}.action", "must be ADD or REMOVE")
        deltas.append((action, _binding(f"{field}.accessBinding", raw.get("accessBinding"))))
    _authorize(call, resource)
    call.audited = True
    return operation_json(call.rt.access.update_bindings(resource, deltas, call.context))


@routes.bind(
    methods.KEY_LIST_ACCESS_BINDINGS,
    "get",
    "/kms/v1/keys/{resourceId}:listAccessBindings",
    summary="List a key's bindings",
    query=_PAGING,
)
async def list_key_bindings(resourceId: str, request: Request) -> Response:
    """ListAccessBindings."""
    resource = Resource("key", _resource_id(resourceId))
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
    resource = Resource("key", _resource_id(resourceId))
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
    resource = Resource("key", _resource_id(resourceId))
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
    resource = Resource("folder", _folder_id(folderId))
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
    resource = Resource("folder", _folder_id(folderId))
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
    resource = Resource("folder", _folder_id(folderId))
    return await handle(
        request, methods.FOLDER_UPDATE_ACCESS_BINDINGS, lambda c: _update(request, c, resource)
    )
