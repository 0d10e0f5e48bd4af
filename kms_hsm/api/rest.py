"""The REST binding of each API method: its HTTP verb, path and query, once per method.

Route modules declare their handlers with ``Routes.bind(method, verb, path)``. FastAPI
serves the control plane's; the data plane's SymmetricCrypto verbs are answered by the
fast path in ``app.py`` before FastAPI sees the request, so they are bound with
``served=False`` and exist only there and in the OpenAPI document, which ``openapi.py``
renders from every binding and its method's message names.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fastapi import APIRouter
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException

from kms_hsm.service.methods import Method

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True, slots=True)
class Binding:
    """One method on one HTTP verb and path."""

    method: Method
    verb: str  # lower case, as OpenAPI has it
    path: str
    summary: str
    query: tuple[str, ...]
    endpoint: Callable[..., Any]
    served: bool  # by FastAPI; False: by the data plane's fast path


@dataclass
class Routes:
    """The bindings of one route module, and the FastAPI router that serves them."""

    tag: str
    bindings: list[Binding] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.router = APIRouter(tags=[self.tag])

    def bind(
        self,
        method: Method,
        verb: str,
        path: str,
        *,
        summary: str,
        query: tuple[str, ...] = (),
        served: bool = True,
    ) -> Callable[[F], F]:
        """Declare ``endpoint`` as ``method`` on ``verb path``."""

        def register(endpoint: F) -> F:
            self.bindings.append(Binding(method, verb, path, summary, query, endpoint, served))
            if served:
                self.router.add_api_route(path, endpoint, methods=[verb.upper()], summary=summary)
            return endpoint

        return register

    def documented_only(self) -> list[APIRoute]:
        """Routes FastAPI does not serve, for the OpenAPI document's paths."""
        return [
            APIRoute(
                b.path,
                b.endpoint,
                methods=[b.verb.upper()],
                summary=b.summary,
                tags=[self.tag],
                response_model=None,
            )
            for b in self.bindings
            if not b.served
        ]


# Methods that a catch-all route (``/kms/v1/keys/{keyId}``) also takes: without a route of
# their own on a verb path they would reach it with "abc:rotate" as the key id.
_CAUGHT_ALL = ("GET", "PATCH", "DELETE")


def verb_guard(bindings: Iterable[Binding]) -> APIRouter:
    """Routes that answer 405 for the methods a ``:verb`` path does not take.

    Included before the other routers, so that ``GET /kms/v1/keys/abc:rotate`` is the
    documented 405 (gRPC code 12), not a Get of a key named "abc:rotate".
    """
    allowed: dict[str, set[str]] = {}
    for b in bindings:
        if "}:" in b.path:
            allowed.setdefault(b.path, set()).add(b.verb.upper())
    router = APIRouter()
    for path, verbs in allowed.items():
        refused = [m for m in _CAUGHT_ALL if m not in verbs]
        router.add_api_route(
            path, _refusal(", ".join(sorted(verbs))), methods=refused, include_in_schema=False
        )
    return router


def _refusal(allow: str) -> Callable[[], Awaitable[None]]:
    async def not_allowed() -> None:
        raise HTTPException(405, headers={"Allow": allow})

    return not_allowed
