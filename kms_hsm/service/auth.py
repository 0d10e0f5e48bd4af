"""Principals and bearer tokens: issue, authenticate.

A token is ``kmsh1_`` + 43 base64url characters (256 random bits). Only its SHA-256 is
stored; the token itself is shown once, when it is issued.

Failed authentication is limited per source address: beyond ``auth_failure_limit``
failures in ``auth_failure_window`` seconds a failing token is answered ResourceExhausted
(429) with the seconds to wait. Every token is still looked up (one read by its hash), so
a valid token always works, even from an address shared with an attacker (NAT, proxy, an
IPv6 /64) and after a state change has emptied the cache of known tokens. Unknown,
revoked and expired tokens get the same answer: a budget per principal would answer 429
for a revoked token where an unknown one gets 401, telling that the token once existed,
and it guards nothing a 256-bit token needs. Missing or malformed credentials are not
counted: they cost nothing and guess nothing. The budgets are per process (per worker).

IAM tokens (``kmsh1i_``, ``kms_hsm.domain.iam_token``) are accepted as bearers too: their
MAC and expiry are checked here, and their source (the bearer token or authorized key they
were exchanged for) must still be live, so revoking the source or the principal revokes
them. Every way they fail is the same 401, counted like a bad bearer token.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import NoReturn

from sqlalchemy import select
from sqlalchemy.orm import Session

from kms_hsm.audit.chain import AuditEvent
from kms_hsm.audit.store import AuditLog
from kms_hsm.domain.iam_token import IAM_TOKEN_PREFIX, BadIamToken, IamTokenClaims
from kms_hsm.domain.ids import PRINCIPAL_PREFIX, new_id
from kms_hsm.errors import BackendUnavailable, NotFound, ResourceExhausted, Unauthenticated
from kms_hsm.service.cache import StateCache
from kms_hsm.service.context import CallContext, as_context
from kms_hsm.service.keys import Clock, utc_now
from kms_hsm.service.limits import FailureWindow, source_key
from kms_hsm.store import repository
from kms_hsm.store.engine import Database
from kms_hsm.store.state import StateWatch, bump_state
from kms_hsm.store.tables import AuthorizedKeyRow, PrincipalRow, TokenRow

TOKEN_PREFIX = "kmsh1_"  # noqa: S105 - a format marker, not a secret
_MAX_TOKEN_CHARS = 300
# The service secret that MACs IAM tokens (same in every worker and replica).
IAM_KEY_NAME = "iam-token-v1"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling."""

    id: str
    name: str


def new_token() -> str:
    """A fresh bearer token: 256 random bits."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    """SHA-256 hex of a token string; what the database keeps."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """A token's public facts."""

    id: str
    created_at: datetime
    expires_at: datetime | None
    revoked: bool


@dataclass(frozen=True, slots=True)
class AuthorizedKeyInfo:
    """An authorized key's public facts."""

    id: str
    principal_id: str
    algorithm: str
    created_at: datetime
    revoked: bool


@dataclass(frozen=True, slots=True)
class PrincipalInfo:
    """A principal and its tokens, for `kms-hsm principals list`."""

    id: str
    name: str
    revoked: bool
    tokens: list[TokenInfo]


class AuthService:
    """Issues tokens and turns a presented token into a ``Principal``."""

    def __init__(
        self,
        db: Database,
        clock: Clock = utc_now,
        watch: StateWatch | None = None,
        audit: AuditLog | None = None,
        *,
        failure_limit: int = 20,
        failure_window: float = 60.0,
    ) -> None:
        self._db = db
        self._clock = clock
        self._audit = audit
        self._known: StateCache[tuple[Principal, datetime | None]] = StateCache(watch)
        self._failed_sources = FailureWindow(failure_limit, failure_window)
        self._iam_key: bytes | None = None

    def set_iam_key(self, key: bytes) -> None:
        """The MAC key of IAM tokens (a service secret, loaded at start-up)."""
        self._iam_key = key

    def iam_key(self) -> bytes:
        """The MAC key of IAM tokens; BackendUnavailable until it is loaded."""
        if self._iam_key is None:
            raise BackendUnavailable(log_detail="IAM token key not loaded yet")
        return self._iam_key

    @property
    def clock(self) -> Clock:
        """The clock the service judges expiry by."""
        return self._clock

    def has_principals(self) -> bool:
        """True once any principal exists."""
        with self._db.read() as session:
            return session.scalars(select(PrincipalRow.id).limit(1)).first() is not None

    def _audited(self, session: Session, by: CallContext | None, method: str, subject: str) -> None:
        """The change's audit event, in its transaction (``subject``: what it changed).

        A change without a caller (an in-process call) is recorded as ``system:internal``.
        """
        if self._audit is None:
            return
        by = as_context(by or "system:internal", method)
        self._audit.append(
            session,
            AuditEvent(
                time=self._clock(),
                principal_id=by.principal_id,
                method=by.method,
                key_id=subject,
                version_id="",
                outcome="OK",
                request_id=by.request_id,
                source=by.source,
                transport=by.transport,
            ),
        )

    def create_principal(self, name: str, by: CallContext | None = None) -> Principal:
        """A new principal with no tokens."""
        principal = Principal(new_id(PRINCIPAL_PREFIX), name)
        with self._db.write() as session:
            session.add(PrincipalRow(id=principal.id, name=name, created_at=self._clock()))
            self._audited(session, by, "Principal.Create", principal.id)
        return principal

    def issue_token(
        self,
        principal_id: str,
        expires_at: datetime | None = None,
        by: CallContext | None = None,
    ) -> tuple[str, str]:
        """A new bearer token for ``principal_id``: (token, token id). Shown once, stored hashed."""
        token = new_token()
        token_id = new_id("tok")
        with self._db.write() as session:
            principal = session.get(PrincipalRow, principal_id)
            if principal is None or principal.disabled_at is not None:
                raise NotFound(f"principal {principal_id} not found or revoked")
            session.add(
                TokenRow(
                    id=token_id,
                    principal_id=principal_id,
                    token_sha256=token_hash(token),
                    created_at=self._clock(),
                    expires_at=expires_at,
                )
            )
            self._audited(session, by, "Token.Create", token_id)
        return token, token_id

    def revoke_token(self, token_id: str, by: CallContext | None = None) -> None:
        """Revoke one token; effective on the next request."""
        with self._db.write() as session:
            row = session.get(TokenRow, token_id)
            if row is None:
                raise NotFound(f"token {token_id} not found")
            row.revoked_at = row.revoked_at or self._clock()
            bump_state(session)
            self._audited(session, by, "Token.Revoke", token_id)

    def revoke_principal(self, principal_id: str, by: CallContext | None = None) -> None:
        """Disable a principal and revoke all its tokens."""
        now = self._clock()
        with self._db.write() as session:
            principal = session.get(PrincipalRow, principal_id)
            if principal is None:
                raise NotFound(f"principal {principal_id} not found")
            principal.disabled_at = principal.disabled_at or now
            bump_state(session)
            for row in session.scalars(
                select(TokenRow).where(TokenRow.principal_id == principal_id)
            ):
                row.revoked_at = row.revoked_at or now
            self._audited(session, by, "Principal.Revoke", principal_id)

    def list_principals(self) -> list[PrincipalInfo]:
        """Every principal with its token ids (never the tokens)."""
        with self._db.read() as session:
            principals = session.scalars(select(PrincipalRow).order_by(PrincipalRow.created_at))
            tokens = session.scalars(select(TokenRow).order_by(TokenRow.created_at)).all()
            return [
                PrincipalInfo(
                    p.id,
                    p.name,
                    p.disabled_at is not None,
                    [
                        TokenInfo(t.id, t.created_at, t.expires_at, t.revoked_at is not None)
                        for t in tokens
                        if t.principal_id == p.id
                    ],
                )
                for p in principals
            ]

    def authenticate(self, authorization: str | None, source: str = "") -> Principal:
        """The principal behind an ``Authorization: Bearer`` header value sent from ``source``.

        Raises:
            Unauthenticated: missing, malformed, unknown, revoked or expired token.
            ResourceExhausted: too many failures from ``source`` or for the token's
                principal lately; ``retry_after`` says when to try again.
        """
        if not authorization:
            raise Unauthenticated()
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or len(token) > _MAX_TOKEN_CHARS:
            raise Unauthenticated("malformed Authorization header: use Bearer <token>")
        if token.startswith(IAM_TOKEN_PREFIX):
            return self._authenticate_iam(token, source)
        digest = token_hash(token)
        principal, expires_at = self._known.get(digest, lambda: self._load_token(digest, source))
        if expires_at is not None and expires_at <= self._clock():
            self._refuse(source)
        return principal

    def _authenticate_iam(self, token: str, source: str) -> Principal:
        try:
            claims = IamTokenClaims.parse(token, self.iam_key())
        except BadIamToken:
            self._refuse(source)
        if claims.expires_at <= self._clock().timestamp():
            self._refuse(source)
        kind, source_id = claims.source_kind, claims.source_id
        return self.live_source(kind, source_id, claims.principal_id, source)[0]

    def live_source(
        self, kind: str, source_id: str, principal_id: str, source: str = ""
    ) -> tuple[Principal, datetime | None]:
        """The principal and expiry of a credential that is still live, else a counted 401.

        ``kind`` is ``token`` (a bearer token's id) or ``key`` (an authorized key's id); it
        must belong to ``principal_id``. Cached until the next state change.
        """
        principal, expires_at = self._known.get(
            ("iam", kind, source_id, principal_id),
            lambda: self._load_source(kind, source_id, principal_id, source),
        )
        if expires_at is not None and expires_at <= self._clock():
            self._refuse(source)
        return principal, expires_at

    def _load_source(
        self, kind: str, source_id: str, principal_id: str, source: str
    ) -> tuple[Principal, datetime | None]:
        with self._db.read() as session:
            row: TokenRow | AuthorizedKeyRow | None = (
                session.get(TokenRow, source_id)
                if kind == "token"
                else session.get(AuthorizedKeyRow, source_id)
            )
            if row is None or row.revoked_at is not None or row.principal_id != principal_id:
                self._refuse(source)
            principal = session.get(PrincipalRow, principal_id)
            if principal is None or principal.disabled_at is not None:
                self._refuse(source)
            expires_at = row.expires_at if isinstance(row, TokenRow) else None
            return Principal(principal.id, principal.name), expires_at

    def token_source(self, token: str, source: str = "") -> tuple[Principal, str, datetime | None]:
        """A bearer token's principal, id and expiry; a counted 401 if it is not live.

        Only ``kmsh1_`` bearer tokens qualify: an IAM token exchanged for another would let
        a client extend its lifetime forever.
        """
        if not token.startswith(TOKEN_PREFIX) or len(token) > _MAX_TOKEN_CHARS:
            self._refuse(source)
        digest = token_hash(token)
        with self._db.read() as session:
            row = repository.find_token(session, digest)
            if row is None or not hmac.compare_digest(row.token_sha256, digest):
                self._refuse(source)
            token_id, principal_id = row.id, row.principal_id
        principal, expires_at = self.live_source("token", token_id, principal_id, source)
        return principal, token_id, expires_at

    def authorized_key(self, key_id: str, source: str = "") -> tuple[Principal, str]:
        """A live authorized key's principal and public key PEM; a counted 401 otherwise."""
        with self._db.read() as session:
            row = session.get(AuthorizedKeyRow, key_id) if len(key_id) <= 50 else None
            if row is None:
                self._refuse(source)
            principal_id, public_key = row.principal_id, row.public_key
        return self.live_source("key", key_id, principal_id, source)[0], public_key

    def refuse(self, source: str) -> NoReturn:
        """A counted authentication failure from ``source``: 401, or 429 over the budget."""
        self._refuse(source)

    def issue_iam_token(self, claims: IamTokenClaims) -> str:
        """The IAM token string for ``claims``."""
        return claims.serialize(self.iam_key())

    # ------------------------------------------------------------ authorized keys

    def create_authorized_key(
        self, principal_id: str, public_key_pem: str, by: CallContext | None = None
    ) -> AuthorizedKeyInfo:
        """Store the public half of a new RSA-2048 authorized key of ``principal_id``."""
        key_id = new_id("ajk")
        now = self._clock()
        with self._db.write() as session:
            principal = session.get(PrincipalRow, principal_id)
            if principal is None or principal.disabled_at is not None:
                raise NotFound(f"principal {principal_id} not found or revoked")
            session.add(
                AuthorizedKeyRow(
                    id=key_id,
                    principal_id=principal_id,
                    algorithm="RSA_2048",
                    public_key=public_key_pem,
                    created_at=now,
                )
            )
            self._audited(session, by, "AuthorizedKey.Create", key_id)
        return AuthorizedKeyInfo(key_id, principal_id, "RSA_2048", now, False)

    def list_authorized_keys(self, principal_id: str) -> list[AuthorizedKeyInfo]:
        """A principal's authorized keys, oldest first (never any private half: none is kept)."""
        with self._db.read() as session:
            rows = session.scalars(
                select(AuthorizedKeyRow)
                .where(AuthorizedKeyRow.principal_id == principal_id)
                .order_by(AuthorizedKeyRow.created_at)
            )
            return [
                AuthorizedKeyInfo(
                    r.id, r.principal_id, r.algorithm, r.created_at, r.revoked_at is not None
                )
                for r in rows
            ]

    def revoke_authorized_key(self, key_id: str, by: CallContext | None = None) -> None:
        """Revoke an authorized key, and with it every IAM token exchanged for it."""
        with self._db.write() as session:
            row = session.get(AuthorizedKeyRow, key_id)
            if row is None:
                raise NotFound(f"authorized key {key_id} not found")
            row.revoked_at = row.revoked_at or self._clock()
            bump_state(session)
            self._audited(session, by, "AuthorizedKey.Revoke", key_id)

    def _load_token(self, digest: str, source: str) -> tuple[Principal, datetime | None]:
        # Looked up even over the budget: refusing unseen tokens outright locked out every
        # valid client behind the attacker's address after each cache flush.
        with self._db.read() as session:
            row = repository.find_token(session, digest)
            # The lookup is by hash; the compare is constant-time anyway.
            if row is None or not hmac.compare_digest(row.token_sha256, digest):
                self._refuse(source)
            if row.revoked_at is not None:
                self._refuse(source)
            principal = session.get(PrincipalRow, row.principal_id)
            if principal is None or principal.disabled_at is not None:
                self._refuse(source)
            return Principal(principal.id, principal.name), row.expires_at

    def _refuse(self, source: str) -> NoReturn:
        """Count a failed token and refuse it: 401, or 429 once the source's budget is spent."""
        key = source_key(source)
        wait = self._failed_sources.retry_after(key)
        if wait is not None:
            # Refusals over the budget are not counted: the window lets go on time.
            raise _too_many(wait)
        self._failed_sources.record(key)
        raise Unauthenticated("token is invalid or has expired")


def _too_many(retry_after: int) -> ResourceExhausted:
    return ResourceExhausted(
        f"too many failed authentications; retry after {retry_after}s",
        retry_after=retry_after,
    )
