"""``yandex.cloud.iam.v1.IamTokenService``: Create, the SDKs' credential exchange.

The same exchange as REST ``POST /iam/v1/tokens`` (``kms_hsm.service.iam``), through the
pipeline as the public method ``IamToken.Create``. The other two RPCs (creating a token for
another account, revoking one) have no kms-hsm counterpart: IAM tokens are stateless and
are revoked through their source (``kms-hsm tokens|principals keys revoke``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeAlias

from google.protobuf import timestamp_pb2
from yandex.cloud.iam.v1 import iam_token_service_pb2, iam_token_service_pb2_grpc

from kms_hsm.errors import KmsError, StatusCode
from kms_hsm.grpc.errors import abort, abort_internal, abort_with
from kms_hsm.service import methods, pipeline
from kms_hsm.service.iam import IamTokenRequest, create_iam_token
from kms_hsm.service.pipeline import Call
from kms_hsm.service.runtime import Runtime

# grpc.aio.ServicerContext (grpcio has no type information).
Context: TypeAlias = Any


class IamTokenServicer(iam_token_service_pb2_grpc.IamTokenServiceServicer):
    """``yandex.cloud.iam.v1.IamTokenService``."""

    def __init__(self, runtime: Runtime, transport_of: Callable[[Any], pipeline.Transport]) -> None:
        self._rt = runtime
        self._transport_of = transport_of
        self._worker = str(os.getpid())

    async def Create(
        self, request: iam_token_service_pb2.CreateIamTokenRequest, context: Context
    ) -> iam_token_service_pb2.CreateIamTokenResponse:
        """A bearer token (``yandex_passport_oauth_token``) or a PS256 ``jwt`` for an IAM token."""
        method = methods.CREATE_IAM_TOKEN
        facts = self._transport_of(context)
        parsed = IamTokenRequest(request.yandex_passport_oauth_token, request.jwt)

        async def work(call: Call) -> tuple[str, datetime]:
            return await create_iam_token(call, parsed)

        try:
            token, expires_at = await pipeline.run(self._rt, method, facts, work)
        except KmsError as exc:
            await abort_with(context, exc, facts.request_id, method.grpc or method.name)
        except Exception:
            await abort_internal(context, facts.request_id, method.grpc or method.name)
        context.set_trailing_metadata(
            (("x-request-id", facts.request_id), ("x-kms-worker", self._worker))
        )
        expires = timestamp_pb2.Timestamp()
        expires.FromDatetime(expires_at)
        return iam_token_service_pb2.CreateIamTokenResponse(iam_token=token, expires_at=expires)

    async def CreateForServiceAccount(self, request: Any, context: Context) -> Any:
        """UNIMPLEMENTED: a principal gets IAM tokens only for itself."""
        await self._unimplemented(context)

    async def Revoke(self, request: Any, context: Context) -> Any:
        """UNIMPLEMENTED: revoke the source token or authorized key instead."""
        await self._unimplemented(context)

    async def _unimplemented(self, context: Context) -> None:
        await abort(
            context,
            int(StatusCode.UNIMPLEMENTED),
            "not implemented by kms-hsm",
            self._transport_of(context).request_id,
        )
