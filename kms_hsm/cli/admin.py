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
import os
import sys
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from kms_hsm.audit.chain import Checkpoint
from kms_hsm.audit.checkpoints import file_checkpoints, worth_checking
from kms_hsm.audit.store import AuditLog
from kms_hsm.config import Settings, write_secret_file
from kms_hsm.errors import InvalidArgument, NotFound
from kms_hsm.service.access import AccessService, Binding, Resource
from kms_hsm.service.auth import AuthService
from kms_hsm.service.context import CallContext
from kms_hsm.service.runtime import Runtime
from kms_hsm.store.engine import Database, make_engine, upgrade_schema


def _database() -> Database:
    engine = make_engine(Settings().effective_database_url())
    upgrade_schema(engine)
    return Database(engine)


@contextlib.contextmanager
def _with_token(*, checkpoint: bool = True) -> Iterator[tuple[Runtime, asyncio.Runner]]:
    """The services with the token reached, as ``serve`` has them, on a loop of their own.

    Every change the CLI makes is audited, and the audit chain's key is unwrapped by the
    token: so a change needs the PIN as well as the database (``KMS_HSM_PIN_FILE``...).
    After a change the head is checkpointed in the token (and the audit log file), so that
    the change cannot be cut off the end unnoticed even if no server runs.
    """
    # The agent's start-up lines would only be noise on a command's stderr.
    settings = Settings()
    if "KMS_HSM_LOG_LEVEL" not in os.environ:
        settings = settings.model_copy(update={"log_level": "WARNING"})
    runtime = Runtime.start(settings)
    try:
        upgrade_schema(runtime.engine)
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


def tokens_revoke(args: argparse.Namespace) -> int:
    """Revoke one token by its id."""
    with _with_token() as (rt, _):
        rt.auth.revoke_token(args.token_id, by=_caller("Token.Revoke"))
    print(f"revoked {args.token_id}")
    return 0


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
    for k in AuthService(_database()).list_authorized_keys(args.principal_id):
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
    for b in AccessService(_database()).list_bindings(_resource(args)):
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
    since = datetime.fromisoformat(args.since.replace("Z", "+00:00")) if args.since else None
    log = AuditLog(_database())
    if args.output:
        with open(args.output, "w", encoding="utf-8") as out:
            count = log.export(out, since)
        print(f"{count} events written to {args.output}", file=sys.stderr)
    else:
        log.export(sys.stdout, since)
    return 0


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
    p.add_argument("--since", help="RFC 3339 time, e.g. 2026-01-01T00:00:00Z")
    p.add_argument("--output")
    p.set_defaults(handler=audit_export)


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
