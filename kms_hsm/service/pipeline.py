"""One API call from start to finish, for every transport: authenticate, run, audit.

A transport (REST in ``kms_hsm.api``, gRPC in ``kms_hsm.grpc``) turns its request into the
caller's facts (``Transport``: the bearer credential, request id and source address), names the
``Method`` (``kms_hsm.service.methods``) and hands over the work. ``run`` decides the rest
in one place: authentication, the audit event (denials included) with the canonical gRPC
code name as its outcome, and the fail-closed rule. Authorisation is asked for by the work
itself (``Call.authorize_key`` / ``authorize_folder``) because only the work knows which key
or folder a request touches; the permission is the method's.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from kms_hsm import metrics
from kms_hsm.audit.chain import AuditEvent
from kms_hsm.errors import Internal, KmsError
from kms_hsm.logs import log_call
from kms_hsm.service.access import Permission
from kms_hsm.service.auth import Principal
from kms_hsm.service.context import CallContext
from kms_hsm.service.methods import Method
from kms_hsm.service.runtime import Runtime

T = TypeVar("T")

# The caller of a public method until its work has checked the credential it carries.
ANONYMOUS = Principal("", "")


@dataclass(frozen=True, slots=True)
class Transport:
    """What the transport knows of the caller, before anything is checked."""

    authorization: str | None  # "Bearer <token>": HTTP header or gRPC metadata
    request_id: str  # the client's when it looked like an id, else one made here
    source: str  # client address
    # The client's request id when it was refused (escaped, bounded), else "".
    client_request_id: str = ""
    protocol: str = ""  # "rest" | "grpc": named in the audit event


@dataclass(slots=True)
class Call:
    """The state of one call; the work fills in what the audit event should name."""

    method: Method
    rt: Runtime
    transport: Transport
    principal: Principal
    key_id: str = ""
    version_id: str = ""
    # Set when the work's own transaction already appended the audit event.
    audited: bool = False

    @property
    def context(self) -> CallContext:
        """Who is calling, for services that write Operations and audit events."""
        return CallContext(
            self.principal.id,
            self.method.name,
            self.transport.request_id,
            self.transport.source,
            self.transport.protocol,
        )

    def authorize_key(
        self, key_id: str, permission: Permission | None = None, *, deleted_too: bool = False
    ) -> None:
        """Allow the method on ``key_id`` or raise NotFound / PermissionDenied."""
        self.key_id = self.key_id or key_id
        self.rt.access.authorize_key(
            self.principal.id,
            permission or self._permission(),
            key_id,
            deleted_too=deleted_too,
        )

    def authorize_folder(self, folder_id: str) -> None:
        """Allow the method in ``folder_id`` or raise PermissionDenied."""
        self.rt.access.authorize_folder(self.principal.id, self._permission(), folder_id)

    def _permission(self) -> Permission:
        if self.method.permission is None:
            raise Internal(log_detail=f"{self.method.name} is public: it has no permission")
        return self.method.permission


async def run(
    rt: Runtime,
    method: Method,
    transport: Transport,
    work: Callable[[Call], Awaitable[T]],
    *,
    key_id: str = "",
) -> T:
    """Run ``work`` as ``method`` for the caller of ``transport``; its result.

    Raises:
        KmsError: the call failed (the transport renders it by its ``code``); if even the
            audit event of the failure cannot be written, BackendUnavailable instead.
    """
    started = time.perf_counter()
    call: Call | None = None
    outcome = "INTERNAL"  # unless the call ends in one of the ways named below
    try:
        pinned = rt.watch.pin()
        try:
            principal = (
                ANONYMOUS
                if method.public
                else rt.auth.authenticate(transport.authorization, transport.source)
            )
            call = Call(method, rt, transport, principal, key_id=key_id)
            result = await work(call)
        except KmsError as exc:
            outcome = exc.code.name
            # Fail closed: if the denial cannot be recorded, the caller sees 503 instead.
            await rt.audit_batcher.record(_event(rt, method, transport, call, outcome, key_id))
            raise
        except asyncio.CancelledError:
            outcome = "CANCELLED"
            # The client went away or its deadline passed (gRPC cancels the handler): the
            # attempt is still on record, unless the work's own transaction recorded it.
            if call is None or not call.audited:
                event = _event(rt, method, transport, call, "CANCELLED", key_id)
                # Queued now; shielded so that the cancellation being delivered cannot
                # cancel the wait, and nobody is left to answer if the write fails.
                with contextlib.suppress(KmsError):
                    await asyncio.shield(rt.audit_batcher.record(event))
            raise
        finally:
            rt.watch.unpin(pinned)
        if not call.audited:
            # Fail closed: no event, no answer (BackendUnavailable -> 503, result discarded).
            await rt.audit_batcher.record(_event(rt, method, transport, call, "OK"))
        outcome = "OK"
        return result
    except KmsError as exc:  # the audit write of an outcome failed: what the caller sees
        outcome = exc.code.name
        raise
    finally:
        _finished(method, transport, call, key_id, outcome, time.perf_counter() - started)


def _finished(
    method: Method,
    transport: Transport,
    call: Call | None,
    key_id: str,
    outcome: str,
    seconds: float,
) -> None:
    """Count the call and write its log record (never its payload)."""
    metrics.request(method.name, transport.protocol, outcome, seconds)
    log_call(
        request_id=transport.request_id,
        principal=call.principal.id if call else "",
        method=method.name,
        transport=transport.protocol,
        key_id=_storable((call.key_id if call else "") or key_id),
        outcome=outcome,
        seconds=seconds,
    )


def _storable(value: str) -> str:
    return value[:64].replace("\x00", "\ufffd")


def _event(
    rt: Runtime,
    method: Method,
    transport: Transport,
    call: Call | None,
    outcome: str,
    key_id: str = "",
) -> AuditEvent:
    return AuditEvent(
        time=rt.keys.clock(),
        principal_id=call.principal.id if call else "",
        method=method.name,
        # Ids of refused requests come straight from the caller: keep them storable.
        key_id=_storable((call.key_id if call else "") or key_id),
        version_id=_storable(call.version_id if call else ""),
        outcome=outcome,
        request_id=transport.request_id,
        source=transport.source,
        client_request_id=transport.client_request_id,
        transport=transport.protocol,
    )
