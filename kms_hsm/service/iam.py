"""IamTokenService.Create: a bearer token or a PS256 JWT in, a short-lived IAM token out.

Transport-neutral: REST (``POST /iam/v1/tokens``) and gRPC both run ``create_iam_token``
through ``pipeline.run`` with ``methods.CREATE_IAM_TOKEN`` (a public method: the credential
is in the request, not in an Authorization header). Every refusal is the same 401, counted
toward the caller's failure budget; neither the credential nor the IAM token is logged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import jwt

from kms_hsm.domain.iam_token import IamTokenClaims
from kms_hsm.errors import InvalidArgument
from kms_hsm.service.auth import Principal

if TYPE_CHECKING:
    from kms_hsm.service.pipeline import Call

# The Yandex audience, and what the Python SDK sends for SDK(endpoint=X): iam.X.
_AUDIENCE = re.compile(r"https://iam\.[A-Za-z0-9.\-\[\]:]{1,255}/iam/v1/tokens")
_MAX_JWT_LIFETIME = 3600
_SKEW = 60
_MAX_JWT_CHARS = 8192


@dataclass(frozen=True, slots=True)
class IamTokenRequest:
    """The oneof of CreateIamTokenRequest: exactly one of the two is set."""

    yandex_passport_oauth_token: str = ""
    jwt: str = ""


async def create_iam_token(call: Call, request: IamTokenRequest) -> tuple[str, datetime]:
    """Check the credential in ``request``; (IAM token, its expiry). Sets ``call.principal``."""
    if bool(request.yandex_passport_oauth_token) == bool(request.jwt):
        raise InvalidArgument("exactly one of yandexPassportOauthToken and jwt must be set")
    auth = call.rt.auth
    source = call.transport.source
    now = auth.clock()
    ttl = int(call.rt.settings.iam_token_ttl)
    expires = int(now.timestamp()) + ttl
    principal: Principal
    if request.yandex_passport_oauth_token:
        principal, token_id, token_expires = auth.token_source(
            request.yandex_passport_oauth_token.strip(), source
        )
        if token_expires is not None:
            expires = min(expires, int(token_expires.timestamp()))
        claims = IamTokenClaims(principal.id, "token", token_id, expires)
    else:
        principal, key_id = _verify_jwt(call, request.jwt, int(now.timestamp()))
        claims = IamTokenClaims(principal.id, "key", key_id, expires)
    call.principal = principal
    return auth.issue_iam_token(claims), datetime.fromtimestamp(expires, UTC)


def _verify_jwt(call: Call, token: str, now: int) -> tuple[Principal, str]:
    """The principal of a valid PS256 JWT signed by a live authorized key, else a 401."""
    auth = call.rt.auth
    source = call.transport.source
    try:
        if len(token) > _MAX_JWT_CHARS:
            raise jwt.InvalidTokenError
        header = jwt.get_unverified_header(token)
        kid = header.get("kid")
        if header.get("alg") != "PS256" or not isinstance(kid, str) or not kid:
            raise jwt.InvalidTokenError
    except jwt.InvalidTokenError:
        auth.refuse(source)
    principal, public_key = auth.authorized_key(kid, source)
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            public_key,
            algorithms=["PS256"],
            options={"require": ["iss", "aud", "iat", "exp"], "verify_aud": False},
            leeway=_SKEW,
        )
    except jwt.InvalidTokenError:
        auth.refuse(source)
    aud = claims["aud"]
    audiences = [aud] if isinstance(aud, str) else aud
    iat, exp = claims["iat"], claims["exp"]
    if (
        claims["iss"] != principal.id
        or not isinstance(audiences, list)
        or not any(isinstance(a, str) and _AUDIENCE.fullmatch(a) for a in audiences)
        or not isinstance(iat, int | float)
        or not isinstance(exp, int | float)
        or exp <= now
        or iat > now + _SKEW
        or exp - iat > _MAX_JWT_LIFETIME + _SKEW
    ):
        auth.refuse(source)
    return principal, kid
