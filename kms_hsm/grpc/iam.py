"""Placeholder of ``IamTokenService`` until its implementation lands (issue 16)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from yandex.cloud.iam.v1 import iam_token_service_pb2_grpc

from kms_hsm.service.pipeline import Transport
from kms_hsm.service.runtime import Runtime


class IamTokenServicer(iam_token_service_pb2_grpc.IamTokenServiceServicer):
    """``yandex.cloud.iam.v1.IamTokenService``: every method UNIMPLEMENTED for now."""

    def __init__(self, runtime: Runtime, context_reader: Callable[[Any], Transport]) -> None:
        self.runtime = runtime
        self.context_reader = context_reader

    async def _unimplemented(self, context: Any) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not implemented")

    async def Create(self, request: Any, context: Any) -> Any:
        """UNIMPLEMENTED."""
        return await self._unimplemented(context)

    async def CreateForServiceAccount(self, request: Any, context: Any) -> Any:
        """UNIMPLEMENTED."""
        return await self._unimplemented(context)

    async def Revoke(self, request: Any, context: Any) -> Any:
        """UNIMPLEMENTED."""
        return await self._unimplemented(context)
