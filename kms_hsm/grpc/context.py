"""The caller's facts as gRPC gives them: credential, request id, source address."""

from __future__ import annotations

import grpc

from kms_hsm.service import pipeline
from kms_hsm.service.request_ids import request_ids


def transport(context: grpc.aio.ServicerContext) -> pipeline.Transport:
    """The pipeline's ``Transport`` of a call (every servicer, IamTokenService's too)."""
    authorization: list[str] = []
    sent_id: bytes | None = None
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            authorization.append(value if isinstance(value, str) else value.decode("latin-1"))
        elif key == "x-request-id" and sent_id is None:
            sent_id = value.encode("utf-8") if isinstance(value, str) else value
    rid, client_rid = request_ids(sent_id)
    return pipeline.Transport(
        # Two of them would be read differently by different proxies: as REST, none counts.
        authorization[0] if len(authorization) == 1 else None,
        rid,
        peer_address(context.peer()),
        client_rid,
        "grpc",
    )


def peer_address(peer: str | None) -> str:
    """The client's address from ``context.peer()``: "ipv4:1.2.3.4:5678" -> "1.2.3.4"."""
    if not peer:
        return ""
    scheme, _, rest = peer.partition(":")
    if scheme == "ipv4":
        return rest.rpartition(":")[0]
    if scheme == "ipv6":
        host = rest.rpartition(":")[0]
        return host[1:-1] if host.startswith("[") and host.endswith("]") else host
    # unix sockets and anything new: what grpcio says, for the audit trail.
    return peer[:100]
