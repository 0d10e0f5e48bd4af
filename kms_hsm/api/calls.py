"""One API call from start to finish: authenticate, authorise, run, audit, answer.

Every route hands its work to ``handle``, so that authentication, the audit event (denials
included) and the fail-closed rule are decided in one place. Authorisation is asked for
by the work itself (``call.authorize_key`` / ``call.authorize_folder``) because only the
work knows which key or folder a request touches; the permission comes from the method's
entry in ``access.METHOD_PERMISSIONS``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import Request, Response

from kms_hsm.api import status, wire
from kms_hsm.api.deps import header, runtime
from kms_hsm.audit.log import AuditEvent
from kms_hsm.errors import KmsError
from kms_hsm.service.access import METHOD_PERMISSIONS, Permission
from kms_hsm.service.auth import Principal
from kms_hsm.service.context import CallContext
from kms_hsm.service.runtime import Runtime

T = TypeVar("T")

GRPC_CODE_NAMES = {
    3: "INVALID_ARGUMENT",
    5: "NOT_FOUND",
    6: "ALREADY_EXISTS",
    7: "PERMISSION_DENIED",
    8: "RESOURCE_EXHAUSTED",
    9: "FAILED_PRECONDITION",
    10: "ABORTED",
    13: "INTERNAL",
    14: "UNAVAILABLE",
    16: "UNAUTHENTICATED",
}


@dataclass
class Call:
    """The state of one call; the work fills in what the audit event should name."""

    request: Request
    method: str
    rt: Runtime
    principal: Principal
    key_id: str = ""
    version_id: str = ""
    # Set when the work's own transaction already appended the audit event.
    audited: bool = False

    @property
    def context(self) -> CallContext:
        """Who is calling, for services that write Operations and audit events."""
        return CallContext(
            self.principal.id, self.method, _request_id(self.request), _source(self.request)
        )

    def authorize_key(
        self, key_id: str, permission: Permission | None = None, *, deleted_too: bool = False
    ) -> None:
        """Allow the method on ``key_id`` or raise NotFound / PermissionDenied."""
        self.key_id = self.key_id or key_id
        self.rt.access.authorize_key(
            self.principal.id,
            permission or METHOD_PERMISSIONS[self.method],
            key_id,
            deleted_too=deleted_too,
        )

    async def run(self, work: Callable[[], T], *, needs_hsm: bool) -> T:
        """Run data-plane work: inline when it needs no HSM, else bridged to the HSM agent.

        PKCS#11 calls cannot be interrupted; in the agent process a hung token stalls
        only the agent: the caller gets 503 after the call timeout, the agent is replaced,
        and requests that need no token call go on being served. Work that needs no HSM
        (software keys whose material is cached) skips the bridge and its greenlet
        switches (~1 us a request with pooled greenlets; 8 % of software-key encrypts a
        second when every request started a new greenlet).
        """
        if not needs_hsm:
            return work()
        return await self.rt.offload(work)

    def authorize_folder(self, folder_id: str) -> None:
        """Allow the method in ``folder_id`` or raise PermissionDenied."""
        self.rt.access.authorize_folder(
            self.principal.id, METHOD_PERMISSIONS[self.method], folder_id
        )


Work = Callable[[Call], Awaitable[dict[str, Any]]]


def _source(request: Request) -> str:
    # From the scope, not ``request.client``: that builds a new Address on every access.
    client = request.scope.get("client")
    return str(client[0]) if client else ""


def _request_id(request: Request) -> str:
    # Set by the app's admission step (api/app.py) for every HTTP request.
    request_id: str = request.scope["state"]["request_id"]
    return request_id


async def handle(request: Request, method: str, work: Work, *, key_id: str = "") -> Response:
    """Run ``work`` as ``method`` and answer with its message as JSON (see ``run``)."""
    return json_response(await run(request, method, work, key_id=key_id))


def json_response(message: dict[str, Any]) -> Response:
    """A 200 answer carrying ``message``."""
    return Response(wire.dumps(message), media_type="application/json")


async def run(request: Request, method: str, work: Work, *, key_id: str = "") -> dict[str, Any]:
    """Run ``work`` as ``method``: authenticate, audit, and return the answer's message.

    Raises:
        KmsError: the request failed (rendered by the error handlers); if even the audit
            event of the failure cannot be written, BackendUnavailable instead.
    """
    rt = runtime(request)
    call: Call | None = None
    pinned = rt.watch.pin()
    try:
        principal = rt.auth.authenticate(header(request, "authorization"))
        call = Call(request, method, rt, principal, key_id=key_id)
        message = await work(call)
    except KmsError as exc:
        outcome = GRPC_CODE_NAMES.get(status.grpc_code(exc), "UNKNOWN")
        principal_id = call.principal.id if call else ""
        # Fail closed: if the denial cannot be recorded, the caller sees 503 instead.
        await rt.audit_batcher.record(
            _event(rt, request, method, call, principal_id, outcome, key_id)
        )
        raise
    finally:
        rt.watch.unpin(pinned)
    if not call.audited:
        # Fail closed: no event, no answer (BackendUnavailable -> 503, result discarded).
        await rt.audit_batcher.record(_event(rt, request, method, call, call.principal.id, "OK"))
    return message


def _storable(value: str) -> str:
    return value[:64].replace("\x00", "\ufffd")


def _event(
    rt: Runtime,
    request: Request,
    method: str,
    call: Call | None,
    principal_id: str,
    outcome: str,
    key_id: str = "",
) -> AuditEvent:
    return AuditEvent(
        time=rt.keys.clock(),
        principal_id=principal_id,
        method=method,
        # Ids of refused requests come straight from the caller: keep them storable.
        key_id=_storable((call.key_id if call else "") or key_id),
        version_id=_storable(call.version_id if call else ""),
        outcome=outcome,
        request_id=_request_id(request),
        source=_source(request),
    )
