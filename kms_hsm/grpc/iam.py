"""``yandex.cloud.iam.v1.IamTokenService``: Create, the SDKs' credential exchange.

The same exchange as REST ``POST /iam/v1/tokens`` (``kms_hsm.service.iam``), through the
pipeline as the public method ``IamToken.Create``. The other two RPCs (creating a token for
another account, revoking one) have no kms-hsm counterpart: IAM tokens are stateless and
are revoked through their source (``kms-hsm tokens|principals keys revoke``).
"""

from __future__ import annotations

from typing import Any, TypeAlias

from google.protobuf import timestamp_pb2
from yandex.cloud.iam.v1 import iam_token_service_pb2, iam_token_service_pb2_grpc

from kms_hsm.errors import StatusCode
from kms_hsm.grpc.context import transport
from kms_hsm.grpc.errors import abort
from kms_hsm.grpc.servicers import Calls
from kms_hsm.service import methods
from kms_hsm.service.iam import IamTokenRequest, create_iam_token
from kms_hsm.service.pipeline import Call

# grpc.aio.ServicerContext (grpcio has no type information).
Context: TypeAlias = Any


class IamTokenServicer(iam_token_service_pb2_grpc.IamTokenServiceServicer, Calls):
    """``yandex.cloud.iam.v1.IamTokenService``."""

    async def Create(
        self, request: iam_token_service_pb2.CreateIamTokenRequest, context: Context
    ) -> iam_token_service_pb2.CreateIamTokenResponse:
        """A bearer token (``yandex_passport_oauth_token``) or a PS256 ``jwt`` for an IAM token."""
        parsed = IamTokenRequest(request.yandex_passport_oauth_token, request.jwt)

        async def work(call: Call) -> iam_token_service_pb2.CreateIamTokenResponse:
            token, expires_at = await create_iam_token(call, parsed)
            expires = timestamp_pb2.Timestamp()
            expires.FromDatetime(expires_at)
            return iam_token_service_pb2.CreateIamTokenResponse(iam_token=token, expires_at=expires)

        return await self.run(context, methods.CREATE_IAM_TOKEN, work)

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
            transport(context).request_id,
        )
