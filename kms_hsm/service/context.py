"""Who is calling and through which request: what audit events and Operations record."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CallContext:
    """The caller of one API method."""

    principal_id: str
    method: str = ""
    request_id: str = ""
    source: str = ""
    transport: str = ""  # "rest" | "grpc": the API the request came by; "" for internal calls


def as_context(by: str | CallContext, method: str) -> CallContext:
    """A context for ``by`` (a bare principal id is an internal call, e.g. the scheduler)."""
    if isinstance(by, CallContext):
        if by.method:
            return by
        return CallContext(by.principal_id, method, by.request_id, by.source, by.transport)
    return CallContext(by, method, "", "internal")
