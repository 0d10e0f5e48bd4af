"""``POST /iam/v1/tokens``: IamTokenService.Create over REST."""

from __future__ import annotations

from typing import Any

from fastapi import Request, Response

from kms_hsm.api import wire
from kms_hsm.api.calls import handle
from kms_hsm.api.deps import json_body
from kms_hsm.api.rest import Routes
from kms_hsm.service import methods
from kms_hsm.service.iam import IamTokenRequest, create_iam_token
from kms_hsm.service.pipeline import Call

routes = Routes("IamToken")

_MAX_CREDENTIAL = 8192


async def _create(request: Request, call: Call) -> dict[str, Any]:
    f = wire.Fields(await json_body(request), ("yandexPassportOauthToken", "jwt"))
    parsed = IamTokenRequest(
        f.string("yandexPassportOauthToken", max_len=_MAX_CREDENTIAL),
        f.string("jwt", max_len=_MAX_CREDENTIAL),
    )
    token, expires_at = await create_iam_token(call, parsed)
    return {"iamToken": token, "expiresAt": wire.timestamp(expires_at)}


@routes.bind(methods.CREATE_IAM_TOKEN, "post", "/iam/v1/tokens", summary="Create an IAM token")
async def create_token(request: Request) -> Response:
    """IamTokenService.Create: a bearer token or a signed JWT for a short-lived IAM token."""
    return await handle(request, methods.CREATE_IAM_TOKEN, lambda c: _create(request, c))
