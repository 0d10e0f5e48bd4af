"""Administration commands: principals, tokens, access bindings, the audit trail.

They work on the database named by the environment (like ``serve``), never over HTTP.
Tokens are printed once, on standard output (or into a 0600 file), never in a log.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import json
import logging
import os
import re
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import Engine
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from kms_hsm.audit.chain import Checkpoint
from kms_hsm.audit.checkpoints import file_checkpoints, worth_checking
from kms_hsm.audit.store import AuditLog
from kms_hsm.config import Settings, write_secret_file
from kms_hsm.errors import BackendUnavailable, FailedPrecondition, InvalidArgument, NotFound
from kms_hsm.logs import configure_logging
from kms_hsm.service.access import AccessService, Binding, Resource
from kms_hsm.service.auth import AuthService
from kms_hsm.service.context import CallContext
from kms_hsm.service.runtime import Runtime
from kms_hsm.store.engine import (
    Database,
    SchemaState,
    make_engine,
    read_schema_state,
    redacted_url,
    schema_state,
    sqlite_file,
    upgrade_schema,
)

# Seconds a command waits for the token (unless KMS_HSM_HSM_STARTUP_TIMEOUT says): serve
# waits longer for a token still being set up, a person at a prompt should not.
CLI_HSM_WAIT = 5.0
# Seconds to wait for a PostgreSQL server before saying it cannot be reached.
CLI_DB_CONNECT_TIMEOUT = 5


def command_settings() -> Settings:
    """Settings for an admin command: the agent's start-up lines off, a short token wait."""
    settings = Settings()
    update: dict[str, Any] = {}
    if "KMS_HSM_LOG_LEVEL" in os.environ:
        configure_logging(settings.log_level)
    else:
        # A command says what went wrong in one line of its own: the agent's retries and
        # the service's log lines would only be noise on its stderr (and Python would
        # print the service's warnings without a handler of ours).
        update["log_level"] = "ERROR"
        logging.getLogger("kms_hsm").addHandler(logging.NullHandler())
    if "KMS_HSM_HSM_STARTUP_TIMEOUT" not in os.environ:
        update["hsm_startup_timeout"] = min(settings.hsm_startup_timeout, CLI_HSM_WAIT)
    return settings.model_copy(update=update)


def _where(settings: Settings) -> str:
    """Which setting named the database, for messages."""
    if settings.database_url:
        return "KMS_HSM_DATABASE_URL"
    if "KMS_HSM_DATA_DIR" in os.environ:
        return f"KMS_HSM_DATA_DIR={os.environ['KMS_HSM_DATA_DIR']}"
    return f"KMS_HSM_DATA_DIR unset: default {settings.data_dir} in {Path.cwd()}"


def open_database(settings: Settings) -> Engine:
    """An engine on the existing database, its schema this version's; never creates one.

    Only ``serve`` (or ``db upgrade``, for a schema behind) creates or migrates: an admin
    command pointed at the wrong place must say so, not leave an empty database there.
    """
    url = settings.effective_database_url()
    shown = redacted_url(url)
    state = _existing_schema(settings)
    _refuse_other_schemas(state, shown, settings)
    return make_engine(url, connect_timeout=CLI_DB_CONNECT_TIMEOUT)


def _existing_schema(settings: Settings) -> SchemaState:
    """The schema state of the configured database; one line if there is none to read."""
    url = settings.effective_database_url()
    shown = redacted_url(url)
    path = sqlite_file(url)
    if path is not None and not path.is_file():
        raise FailedPrecondition(
            f"no database at {path.resolve()} ({_where(settings)}); `kms-hsm serve` creates it"
        )
    try:
        return read_schema_state(url, connect_timeout=CLI_DB_CONNECT_TIMEOUT)
    except (ArgumentError, ImportError) as exc:  # no such dialect or driver
        raise InvalidArgument(f"cannot use the database URL {shown}: {_first_line(exc)}") from None
    except SQLAlchemyError as exc:
        raise BackendUnavailable(f"cannot read the database {shown}: {_first_line(exc)}") from None


def _refuse_other_schemas(state: SchemaState, shown: str, settings: Settings) -> None:
    """One line for a database without this version's schema; nothing when it has it."""
    if state.revision is None:
        raise FailedPrecondition(
            f"the database {shown} holds no kms-hsm schema ({_where(settings)}); "
            "`kms-hsm serve` creates it"
        )
    if not state.known:
        raise FailedPrecondition(
            f"the database {shown} is at schema revision {state.revision}, which this "
            f"kms-hsm does not know (its newest is {state.head}): a newer kms-hsm wrote it"
        )
    if not state.current:
        raise FailedPrecondition(
            f"the database {shown} is at schema revision {state.revision}, this kms-hsm "
            f"needs {state.head}: run `kms-hsm db upgrade` (or `kms-hsm serve`, which "
            "migrates at start)"
        )


def _first_line(exc: BaseException) -> str:
    """A driver error's own first line (SQLAlchemy adds SQL and a link after it)."""
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _database() -> Database:
    return Database(open_database(command_settings()))


def _initialised(engine: Engine) -> bool:
    """Whether a ``serve`` settled the root key: until then opening the services would make
    one (and the service secrets), which no admin command may do, unaudited, on its own."""
    from sqlalchemy import func, select

    from kms_hsm.store.tables import RootKeyRow

    with engine.connect() as connection:
        return bool(connection.scalar(select(func.count()).select_from(RootKeyRow)))


NOT_INITIALISED = (
    "the database has no root key yet: a first `kms-hsm serve` did not finish; start it once "
    "(with the token reachable) before using admin commands"
)


@contextlib.contextmanager
def _with_token(*, checkpoint: bool = True) -> Iterator[tuple[Runtime, asyncio.Runner]]:
    """The services with the token reached, as ``serve`` has them, on a loop of their own.

    Every change the CLI makes is audited, and the audit chain's key is unwrapped by the
    token: so a change needs the PIN as well as the database (``KMS_HSM_PIN_FILE``...).
    After a change the head is checkpointed in the token (and the audit log file), so that
    the change cannot be cut off the end unnoticed even if no server runs.
    """
    settings = command_settings()
    engine = open_database(settings)  # exists, reachable, schema current: or one line
    try:
        if not _initialised(engine):
            raise FailedPrecondition(NOT_INITIALISED)
    finally:
        engine.dispose()
    runtime = Runtime.start(settings)
    try:
        with asyncio.Runner() as runner:
            runner.run(runtime.open())
            yield runtime, runner
            if checkpoint:
                runner.run(runtime.audit_checkpoints.write_once())
    finally:
        runtime.close()  # stops the agent too


def _caller(method: str) -> CallContext:
    """Who the CLI's events name: the operating-system user who ran it."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid{os.getuid()}"
    return CallContext(f"cli:{user}", method, str(uuid.uuid4()), "cli")


def principals_create(args: argparse.Namespace) -> int:
    """Create a service account; prints its id."""
    with _with_token() as (rt, _):
        principal = rt.auth.create_principal(args.name, by=_caller("Principal.Create"))
    print(principal.id)
    return 0


def principals_list(args: argparse.Namespace) -> int:
    """One line per principal with its token ids."""
    for p in AuthService(_database()).list_principals():
        state = "revoked" if p.revoked else "active"
        tokens = ",".join(t.id + ("(revoked)" if t.revoked else "") for t in p.tokens) or "-"
        print(f"{p.id}\t{p.name}\t{state}\ttokens={tokens}")
    return 0


def principals_revoke(args: argparse.Namespace) -> int:
    """Disable a principal and revoke all its tokens."""
    with _with_token() as (rt, _):
        rt.auth.revoke_principal(args.principal_id, by=_caller("Principal.Revoke"))
    print(f"revoked {args.principal_id}")
    return 0


def tokens_create(args: argparse.Namespace) -> int:
    """Issue a token; shown once."""
    expires = None
    if args.expires_in is not None:
        expires = datetime.now().astimezone() + timedelta(seconds=args.expires_in)
    if args.output:
        # Checked before the token is issued: one that could not be written would be lost.
        _check_writable(Path(args.output))
    with _with_token() as (rt, _):
        token, token_id = rt.auth.issue_token(
            args.principal_id, expires, by=_caller("Token.Create")
        )
    if args.output:
        write_secret_file(Path(args.output), token)
        print(f"token {token_id} written to {args.output} (mode 0600)")
    else:
        print(f"# token id {token_id}; shown once", file=sys.stderr)
        print(token)
    return 0


def _check_writable(path: Path) -> None:
    """Refuse an output file that cannot be written, in one line, before any change."""
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise InvalidArgument(f"{path} is a directory")
    target = path if path.exists() else parent
    if not target.exists():
        raise InvalidArgument(f"cannot write {path}: no directory {parent}")
    if not os.access(target, os.W_OK):
        raise InvalidArgument(f"cannot write {path}: permission denied")


def tokens_revoke(args: argparse.Namespace) -> int:
    """Revoke one token by its id."""
    with _with_token() as (rt, _):
        rt.auth.revoke_token(args.token_id, by=_caller("Token.Revoke"))
    print(f"revoked {args.token_id}")
    return 0


def tokens_list(args: argparse.Namespace) -> int:
    """Every token's id, principal, times and state; never the token itself."""
    now = datetime.now(UTC)
    rows: list[dict[str, Any]] = []
    principals = AuthService(_database()).list_principals()
    if args.principal and args.principal not in {p.id for p in principals}:
        raise NotFound(f"principal {args.principal} not found")
    for p in principals:
        if args.principal and p.id != args.principal:
            continue
        for t in p.tokens:
            if t.revoked:
                state = "revoked"
            elif t.expires_at is not None and t.expires_at <= now:
                state = "expired"
            else:
                state = "active"
            rows.append(
                {
                    "id": t.id,
                    "principalId": p.id,
                    "principalName": p.name,
                    "createdAt": _rfc3339(t.created_at),
                    "expiresAt": _rfc3339(t.expires_at) if t.expires_at else None,
                    "state": state,
                }
            )
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table = [
        [
            r["id"],
            f"{r['principalId']} ({r['principalName']})",
            r["createdAt"],
            r["expiresAt"] or "never",
            r["state"],
        ]
        for r in rows
    ]
    print(_table(["TOKEN ID", "PRINCIPAL", "CREATED", "EXPIRES", "STATE"], table))
    return 0


def _rfc3339(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _table(headers: list[str], rows: list[list[str]]) -> str:
    """Columns padded to their widest cell."""
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in [headers, *rows]
    )


def keys_create(args: argparse.Namespace) -> int:
    """Make an RSA-2048 authorized key; the public half is stored, the key file written once.

    The file is the JSON ``yc iam key create`` writes, so ``yandexcloud.SDK(
    service_account_key=json.load(open(FILE)))`` uses it as is. It is created 0600 and
    exclusively (an existing file is never overwritten) before anything is stored.
    """
    path = Path(args.output)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        print(f"kms-hsm: {path} exists; not overwriting a key file", file=sys.stderr)
        return 2
    try:
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        public_pem = (
            private.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode("ascii")
        )
        with _with_token() as (rt, _):
            info = rt.auth.create_authorized_key(
                args.principal_id, public_pem, by=_caller("AuthorizedKey.Create")
            )
        private_pem = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode("ascii")
        document = {
            "id": info.id,
            "service_account_id": info.principal_id,
            "created_at": info.created_at.isoformat().replace("+00:00", "Z"),
            "key_algorithm": info.algorithm,
            "public_key": public_pem,
            # yc writes this line before the PEM; the SDK (pyjwt, cryptography) skips it.
            "private_key": f"PLEASE DO NOT REMOVE THIS LINE! Yandex.Cloud SA Key ID {info.id}\n"
            + private_pem,
        }
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            fd = -1
            json.dump(document, out, indent=2)
            out.write("\n")
    except BaseException:
        if fd >= 0:
            os.close(fd)
        path.unlink(missing_ok=True)
        raise
    print(f"authorized key {info.id} of {info.principal_id} written to {path} (mode 0600)")
    return 0


def keys_list(args: argparse.Namespace) -> int:
    """One line per authorized key of a principal: id, created, state."""
    auth = AuthService(_database())
    if args.principal_id not in {p.id for p in auth.list_principals()}:
        raise NotFound(f"principal {args.principal_id} not found")
    for k in auth.list_authorized_keys(args.principal_id):
        state = "revoked" if k.revoked else "active"
        print(f"{k.id}\t{k.algorithm}\t{k.created_at.isoformat()}\t{state}")
    return 0


def keys_revoke(args: argparse.Namespace) -> int:
    """Revoke an authorized key (and every IAM token exchanged for it)."""
    with _with_token() as (rt, _):
        rt.auth.revoke_authorized_key(args.key_id, by=_caller("AuthorizedKey.Revoke"))
    print(f"revoked {args.key_id}")
    return 0


def _resource(args: argparse.Namespace) -> Resource:
    if args.folder:
        return Resource("folder", args.folder)
    if args.key:
        return Resource("key", args.key)
    return Resource("instance", "*")


def bindings_change(args: argparse.Namespace) -> int:
    """Add or remove one binding."""
    binding = Binding(args.role, args.subject_type, args.subject)
    action = "ADD" if args.bindings_command == "add" else "REMOVE"
    with _with_token() as (rt, _):
        if action == "ADD" and args.subject_type == "serviceAccount":
            known = {p.id: p for p in rt.auth.list_principals()}
            if args.subject not in known:
                raise InvalidArgument(
                    f"no principal {args.subject}: create it first (kms-hsm principals create)"
                )
            if known[args.subject].revoked:
                raise InvalidArgument(f"principal {args.subject} is revoked")
        resource = _resource(args)
        if action == "REMOVE" and binding not in rt.access.list_bindings(resource):
            # The API's UpdateAccessBindings takes a missing one as done; an operator who
            # typed a role or subject wrong must hear that nothing was removed.
            raise NotFound(
                f"no binding {args.role} for {args.subject_type}:{args.subject} on "
                f"{resource.type} {resource.id}: nothing removed"
            )
        rt.access.update_bindings(resource, [(action, binding)], _caller(""))
    done = "added" if action == "ADD" else "removed"
    print(f"{done} {args.role} for {args.subject_type}:{args.subject}")
    return 0


def bindings_list(args: argparse.Namespace) -> int:
    """The bindings on one resource."""
    db = _database()
    resource = _resource(args)
    if resource.type == "key":
        # Folders are only names, but a key is a thing: a mistyped id must not read as
        # "no bindings".
        from kms_hsm.store.tables import KeyRow

        with db.read() as session:
            row = session.get(KeyRow, resource.id)
        if row is None or row.deleted_at is not None:
            raise NotFound(f"key {resource.id} not found")
    for b in AccessService(db).list_bindings(resource):
        print(f"{b.role_id}\t{b.subject_type}:{b.subject_id}")
    return 0


def audit_verify(args: argparse.Namespace) -> int:
    """Exit 0 when the chain is intact, 1 naming the first broken event.

    Needs the token: the chain key that checks v2 links is unwrapped by it, and the
    checkpoint it holds must be in the chain. ``--checkpoints FILE`` (repeatable):
    the JSON-lines audit files, whose checkpoints must all be in the chain too.
    """
    for path in args.checkpoints or ():
        if not Path(path).is_file():
            print(f"kms-hsm: no checkpoint file {path}", file=sys.stderr)
            return 2
    with _with_token(checkpoint=False) as (rt, runner):
        key = rt.audit.chain_key
        checkpoints: list[tuple[str, Checkpoint]] = []
        for path in args.checkpoints or ():
            try:
                found = file_checkpoints(Path(path))
                checkpoints += [(path, c) for c in worth_checking(found, key)] if key else []
            except (OSError, ValueError) as exc:
                print(f"kms-hsm: cannot read checkpoints: {exc}", file=sys.stderr)
                return 2
        in_token = runner.run(rt.audit_checkpoints.in_token())
        checkpoints += [("the token", c) for c in in_token]
        result = rt.audit.verify(checkpoints)
    if result.mac_from is None:
        print("no event is MAC'd yet: every event is a v1 SHA-256 link (no token key)")
    elif result.mac_from > 1:
        print(
            f"events 1-{result.mac_from - 1} are v1 (SHA-256 links, no key); "
            f"events from {result.mac_from} on are MAC'd by the token's chain key"
        )
    else:
        print("every event is MAC'd by the token's chain key")
    if not in_token:
        print(
            "warning: the token holds no checkpoint of this chain yet, so events cut off "
            "the end could not be seen"
        )
    for note in result.notes:
        print(note)
    if result.ok:
        print(f"audit chain intact: {result.events} events")
        return 0
    where = f" at event {result.first_broken_seq}" if result.first_broken_seq else ""
    print(f"audit chain BROKEN{where}: {result.reason}")
    return 1


def audit_export(args: argparse.Namespace) -> int:
    """Events as JSON lines, from ``--since`` on."""
    log = AuditLog(_database())
    if args.output:
        with open(args.output, "w", encoding="utf-8") as out:
            count = log.export(out, args.since)
        print(f"{count} events written to {args.output}", file=sys.stderr)
    else:
        log.export(sys.stdout, args.since)
    return 0


_AGE = re.compile(r"([0-9]{1,5})([smhdw])", re.ASCII)
_AGE_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400}
SINCE_FORMS = (
    "an ISO 8601 date or time (2026-01-31, 2026-01-31T12:00:00Z, 2026-01-31 12:00+03:00; "
    "UTC unless an offset is given) or an age (90s, 30m, 24h, 7d, 2w)"
)


def since_time(value: str, now: datetime | None = None) -> datetime:
    """``--since``: an ISO 8601 date or time (UTC unless it has an offset), or an age."""
    text = value.strip()
    age = _AGE.fullmatch(text)
    if age is not None:
        seconds = int(age[1]) * _AGE_SECONDS[age[2]]
        return (now or datetime.now(UTC)) - timedelta(seconds=seconds)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a time: {value!r}; give {SINCE_FORMS}") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def db_upgrade(args: argparse.Namespace) -> int:
    """Migrate an existing database's schema to this version's (``serve`` does it too)."""
    settings = command_settings()
    url = settings.effective_database_url()
    shown = redacted_url(url)
    before = _existing_schema(settings)
    if before.revision is None or not before.known:
        # Creating a schema is serve's: it also makes the first admin and its token.
        _refuse_other_schemas(before, shown, settings)
    if before.current:
        print(f"schema already at revision {before.head}: nothing to do")
        return 0
    engine = make_engine(url, connect_timeout=CLI_DB_CONNECT_TIMEOUT)
    try:
        upgrade_schema(engine)
        print(f"schema upgraded from revision {before.revision} to {schema_state(engine).revision}")
    finally:
        engine.dispose()
    return 0


EXIT_NOT_READY = 3


def status(args: argparse.Namespace) -> int:
    """What a new user wants to know: where things are and whether they answer.

    Exit 0 when the database is there with this version's schema and the token answers a
    real round-trip under the root key; 3 when either is not so (the output says which).
    Whether a server is running is reported but does not change the exit status.
    """
    settings = command_settings()
    report: dict[str, Any] = {
        "version": _version(),
        "dataDir": {
            "path": str(settings.data_dir.resolve()),
            "exists": settings.data_dir.is_dir(),
            "setting": _where(settings) if not settings.database_url else None,
        },
    }
    url = settings.effective_database_url()
    database: dict[str, Any] = {"url": redacted_url(url), "ok": False}
    report["database"] = database
    token: dict[str, Any] = {
        "label": settings.token_label,
        "library": settings.pkcs11_library,
        "embedded": settings.embedded_token,
        "reachable": False,
        "checked": False,
    }
    report["token"] = token
    try:
        engine = open_database(settings)
    except (BackendUnavailable, FailedPrecondition, InvalidArgument) as exc:
        database["problem"] = exc.message
        # The root key it would round-trip under is named in the database.
        token.update(checked=False, problem="not checked: it needs the database")
    else:
        try:
            database.update(ok=True, schema=schema_state(engine).revision)
            report.update(_contents(Database(engine)))
        finally:
            engine.dispose()
        token.update(checked=True, **_token_check(settings))
    report["server"] = _server(settings)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(_render_status(report))
    return 0 if database["ok"] and token["reachable"] else EXIT_NOT_READY


def _version() -> str:
    import importlib.metadata

    return importlib.metadata.version("kms-hsm")


def _contents(db: Database) -> dict[str, Any]:
    """Keys by family and state, principals, tokens, the audit head: counts, no secrets."""
    from sqlalchemy import func, select

    from kms_hsm.domain.asymmetric import KeyFamily
    from kms_hsm.domain.model import KeyStatus, VersionStatus
    from kms_hsm.store.tables import (
        AuditEventRow,
        KeyRow,
        KeyVersionRow,
        PrincipalRow,
        TokenRow,
    )

    keys: dict[str, dict[str, int]] = {}
    versions: dict[str, int] = {}
    now = datetime.now(UTC)
    with db.read() as session:
        grouped = session.execute(
            select(
                KeyRow.family, KeyRow.status, KeyRow.deleted_at.is_(None), func.count()
            ).group_by(KeyRow.family, KeyRow.status, KeyRow.deleted_at.is_(None))
        ).all()
        for family, key_status, live, count in grouped:
            name = (
                KeyFamily(family).service if family in KeyFamily._value2member_map_ else str(family)
            )
            state = (
                KeyStatus(key_status).name
                if key_status in KeyStatus._value2member_map_
                else str(key_status)
            )
            by_state = keys.setdefault(name, {})
            label = state if live else "DELETED"
            by_state[label] = by_state.get(label, 0) + int(count)
        for version_status, count in session.execute(
            select(KeyVersionRow.status, func.count()).group_by(KeyVersionRow.status)
        ).all():
            label = (
                VersionStatus(version_status).name
                if version_status in VersionStatus._value2member_map_
                else str(version_status)
            )
            versions[label] = int(count)
        principals = session.scalar(select(func.count()).select_from(PrincipalRow)) or 0
        live_tokens = (
            session.scalar(
                select(func.count())
                .select_from(TokenRow)
                .where(TokenRow.revoked_at.is_(None))
                .where((TokenRow.expires_at.is_(None)) | (TokenRow.expires_at > now))
            )
            or 0
        )
        last_time = session.scalar(select(func.max(AuditEventRow.time)))
    head = AuditLog(db).head()
    return {
        "keys": keys,
        "symmetricKeyVersions": versions,
        "principals": int(principals),
        "activeTokens": int(live_tokens),
        "audit": {
            "events": head.seq,
            "headHash": head.hash,
            "lastEventAt": _rfc3339(last_time) if last_time else None,
        },
    }


def _token_check(settings: Settings) -> dict[str, Any]:
    """Log in with the configured PIN and do one AES-GCM round-trip under the root key."""
    from kms_hsm.errors import KmsError

    engine = open_database(settings)
    try:
        if not _initialised(engine):
            return {"reachable": False, "problem": NOT_INITIALISED}
    finally:
        engine.dispose()

    try:
        runtime = Runtime.start(settings)
    except KmsError as exc:  # no PIN file, a PIN file others can read...
        return {"reachable": False, "problem": exc.message}
    try:
        with asyncio.Runner() as runner:
            runner.run(runtime.open())
            runner.run(runtime.check_hsm())
    except KmsError as exc:
        return {"reachable": False, "problem": exc.message}
    finally:
        runtime.close()
    return {"reachable": True}


def _server(settings: Settings) -> dict[str, Any]:
    """The listening configuration, and whether something answers /healthz there now."""
    import httpx

    tls = settings.tls_cert is not None
    scheme = "https" if tls else "http"
    # A wildcard address is reached on loopback from here.
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(settings.host, settings.host)
    shown_host = f"[{host}]" if ":" in host else host
    url = f"{scheme}://{shown_host}:{settings.port}"
    server: dict[str, Any] = {
        "url": f"{scheme}://{settings.host}:{settings.port}",
        "workers": settings.workers,
        "tls": tls,
        "mutualTls": settings.tls_client_ca is not None,
        "grpcPort": settings.grpc_serving_port,
    }
    metrics_port = getattr(settings, "metrics_port", None)
    if metrics_port is not None:
        server["metricsPort"] = metrics_port
    try:
        # Only a liveness probe: nothing is sent that a server must authenticate.
        answer = httpx.get(f"{url}/healthz", timeout=2.0, verify=False)  # noqa: S501
        server["answering"] = answer.status_code == 200
    except httpx.HTTPError as exc:
        server["answering"] = False
        server["problem"] = type(exc).__name__
    return server


def _render_status(report: dict[str, Any]) -> str:
    data_dir = report["dataDir"]
    database = report["database"]
    token = report["token"]
    server = report["server"]
    lines = [f"kms-hsm {report['version']}"]
    where = f" ({data_dir['setting']})" if data_dir["setting"] else ""
    lines.append(
        f"data directory  {data_dir['path']}{where}"
        + (
            ""
            if data_dir["exists"]
            else (": not a directory" if Path(data_dir["path"]).exists() else ": does not exist")
        )
    )
    if database["ok"]:
        lines.append(f"database        {database['url']}: ok, schema revision {database['schema']}")
    else:
        lines.append(f"database        {database['problem']}")
    kind = "embedded SoftHSM2 " if token["embedded"] else ""
    if token["reachable"]:
        state = "reachable (login and an AES-GCM round-trip)"
    elif token["checked"]:
        state = f"NOT reachable: {token['problem']}"
    else:
        state = token["problem"]
    lines.append(f"token           {kind}{token['label']!r} via {token['library']}: {state}")
    if "keys" in report:
        families = [
            f"{family} " + ", ".join(f"{n} {s.lower()}" for s, n in sorted(states.items()))
            for family, states in sorted(report["keys"].items())
        ]
        lines.append("keys            " + ("; ".join(families) or "none"))
        versions = report["symmetricKeyVersions"]
        if versions:
            lines.append(
                "key versions    "
                + ", ".join(f"{n} {s.lower()}" for s, n in sorted(versions.items()))
            )
        lines.append(
            f"principals      {report['principals']}, with {report['activeTokens']} active tokens"
        )
        audit = report["audit"]
        last = f", last at {audit['lastEventAt']}" if audit["lastEventAt"] else ""
        lines.append(
            f"audit           {audit['events']} events, head {audit['headHash'][:16]}…{last}"
        )
    grpc = "off" if server["grpcPort"] is None else f"port {server['grpcPort']}"
    tls = "mutual TLS" if server["mutualTls"] else ("TLS" if server["tls"] else "no TLS")
    metrics = f", metrics port {server['metricsPort']}" if "metricsPort" in server else ""
    answering = "answering" if server["answering"] else "not answering"
    lines.append(
        f"server          {server['url']} ({tls}, {server['workers']} worker(s), "
        f"gRPC {grpc}{metrics}): {answering}"
    )
    return "\n".join(lines)


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the admin command groups on the top-level parser."""
    principals = sub.add_parser("principals", help="service accounts").add_subparsers(
        dest="principals_command", required=True
    )
    p = principals.add_parser("create", help="create a principal; prints its id")
    p.add_argument("name")
    p.set_defaults(handler=principals_create)
    principals.add_parser("list", help="list principals").set_defaults(handler=principals_list)
    p = principals.add_parser("revoke", help="disable a principal and all its tokens")
    p.add_argument("principal_id")
    p.set_defaults(handler=principals_revoke)
    keys = principals.add_parser(
        "keys", help="authorized keys (service-account key files for the SDKs' JWT exchange)"
    ).add_subparsers(dest="keys_command", required=True)
    p = keys.add_parser("create", help="make a key; writes the key file (mode 0600)")
    p.add_argument("principal_id")
    p.add_argument("--output", required=True, help="the key file to create (never overwritten)")
    p.set_defaults(handler=keys_create)
    p = keys.add_parser("list", help="a principal's authorized keys")
    p.add_argument("principal_id")
    p.set_defaults(handler=keys_list)
    p = keys.add_parser("revoke", help="revoke an authorized key by id")
    p.add_argument("key_id")
    p.set_defaults(handler=keys_revoke)

    tokens = sub.add_parser("tokens", help="bearer tokens").add_subparsers(
        dest="tokens_command", required=True
    )
    p = tokens.add_parser("create", help="issue a token (printed once)")
    p.add_argument("principal_id")
    p.add_argument(
        "--expires-in", type=_positive_seconds, help="seconds until it expires (default: never)"
    )
    p.add_argument("--output", help="write the token to this file (mode 0600) instead")
    p.set_defaults(handler=tokens_create)
    p = tokens.add_parser("revoke", help="revoke a token by id")
    p.add_argument("token_id")
    p.set_defaults(handler=tokens_revoke)
    p = tokens.add_parser(
        "list", help="token ids, principal, created, expires, state (never the tokens)"
    )
    p.add_argument("--principal", metavar="PRINCIPAL_ID", help="only this principal's tokens")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=tokens_list)

    bindings = sub.add_parser("bindings", help="access bindings").add_subparsers(
        dest="bindings_command", required=True
    )
    for name, handler in (("add", bindings_change), ("remove", bindings_change)):
        p = bindings.add_parser(name, help=f"{name} a role binding")
        # Where is never implied: a grant on every folder must be asked for (--instance).
        _resource_args(p, required=True)
        p.add_argument("--role", required=True)
        p.add_argument("--subject", required=True, help="principal id (or allAuthenticatedUsers)")
        p.add_argument("--subject-type", default="serviceAccount")
        p.set_defaults(handler=handler)
    p = bindings.add_parser("list", help="list the bindings on a resource")
    _resource_args(p)
    p.set_defaults(handler=bindings_list)

    audit = sub.add_parser("audit", help="the audit trail").add_subparsers(
        dest="audit_command", required=True
    )
    p = audit.add_parser("verify", help="check the chain (needs the token: PIN)")
    p.add_argument(
        "--checkpoints",
        action="append",
        metavar="FILE",
        help="a JSON-lines audit log (KMS_HSM_AUDIT_LOG_FILE) whose checkpoints the chain "
        "must contain: catches an older database restored (repeatable)",
    )
    p.set_defaults(handler=audit_verify)
    p = audit.add_parser("export", help="write events as JSON lines")
    p.add_argument("--since", type=since_time, help=f"events from this time on: {SINCE_FORMS}")
    p.add_argument("--output", help="write to this file instead of standard output")
    p.set_defaults(handler=audit_export)

    db = sub.add_parser("db", help="the metadata database").add_subparsers(
        dest="db_command", required=True
    )
    p = db.add_parser(
        "upgrade",
        help="migrate an existing database to this version's schema (serve does it at start)",
    )
    p.set_defaults(handler=db_upgrade)

    p = sub.add_parser(
        "status",
        help="data directory, database, token, keys, audit head, server "
        "(exit 3 when the database or the token is not ready)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=status)


def _resource_args(p: argparse.ArgumentParser, *, required: bool = False) -> None:
    where = p.add_mutually_exclusive_group(required=required)
    where.add_argument("--folder")
    where.add_argument("--key")
    where.add_argument(
        "--instance",
        action="store_true",
        help="every folder" + ("" if required else " (the default)"),
    )


# A token's lifetime is bounded: far larger values overflow the date arithmetic.
_MAX_EXPIRES_IN = 10 * 365 * 86400


def _positive_seconds(value: str) -> int:
    """Whole seconds from 1 to ten years, in ASCII digits (0 or less would never expire)."""
    # int() also takes "1_000", "+5", " 5" and other scripts' digits ("١٢").
    if not (value.isascii() and value.isdigit()) or len(value) > 10:
        raise argparse.ArgumentTypeError(f"not a whole number of seconds (ASCII digits): {value!r}")
    seconds = int(value)
    if not 1 <= seconds <= _MAX_EXPIRES_IN:
        raise argparse.ArgumentTypeError(f"must be 1 to {_MAX_EXPIRES_IN} seconds (ten years)")
    return seconds
