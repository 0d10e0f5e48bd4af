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


def as_context(by: str | CallContext, method: str) -> CallContext:
    """A context for ``by`` (a bare principal id is an internal call, e.g. the scheduler)."""
    if isinstance(by, CallContext):
        return by if by.method else CallContext(by.principal_id, method, by.request_id, by.source)
    return CallContext(by, method, "", "internal")
