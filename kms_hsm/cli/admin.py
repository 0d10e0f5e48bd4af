"""Administration commands: principals, tokens, access bindings, the audit trail.

They work on the database named by the environment (like ``serve``), never over HTTP.
Tokens are printed once, on standard output (or into a 0600 file), never in a log.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timedelta
from pathlib import Path

from kms_hsm.audit.store import AuditLog
from kms_hsm.config import Settings, write_secret_file
from kms_hsm.service.access import AccessService, Binding, Resource
from kms_hsm.service.auth import AuthService
from kms_hsm.store.engine import Database, make_engine, upgrade_schema


def _database() -> Database:
    engine = make_engine(Settings().effective_database_url())
    upgrade_schema(engine)
    return Database(engine)


def principals_create(args: argparse.Namespace) -> int:
    """Create a service account; prints its id."""
    principal = AuthService(_database()).create_principal(args.name)
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
    AuthService(_database()).revoke_principal(args.principal_id)
    print(f"revoked {args.principal_id}")
    return 0


def tokens_create(args: argparse.Namespace) -> int:
    """Issue a token; shown once."""
    expires = None
    if args.expires_in is not None:
        expires = datetime.now().astimezone() + timedelta(seconds=args.expires_in)
    token, token_id = AuthService(_database()).issue_token(args.principal_id, expires)
    if args.output:
        write_secret_file(Path(args.output), token)
        print(f"token {token_id} written to {args.output} (mode 0600)")
    else:
        print(f"# token id {token_id}; shown once", file=sys.stderr)
        print(token)
    return 0


def tokens_revoke(args: argparse.Namespace) -> int:
    """Revoke one token by its id."""
    AuthService(_database()).revoke_token(args.token_id)
    print(f"revoked {args.token_id}")
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
    AccessService(_database(), AuditLog(_database())).update_bindings(
        _resource(args), [(action, binding)], "cli"
    )
    print(f"{action.lower()}ed {args.role} for {args.subject_type}:{args.subject}")
    return 0


def bindings_list(args: argparse.Namespace) -> int:
    """The bindings on one resource."""
    for b in AccessService(_database()).list_bindings(_resource(args)):
        print(f"{b.role_id}\t{b.subject_type}:{b.subject_id}")
    return 0


def audit_verify(args: argparse.Namespace) -> int:
    """Exit 0 when the chain is intact, 1 naming the first broken event."""
    result = AuditLog(_database()).verify()
    if result.ok:
        print(f"audit chain intact: {result.events} events")
        return 0
    print(f"audit chain BROKEN at event {result.first_broken_seq}: {result.reason}")
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
    audit.add_parser("verify", help="check the hash chain").set_defaults(handler=audit_verify)
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


def _positive_seconds(value: str) -> int:
    """A whole number of seconds above zero (0 or less would mean a token never expiring)."""
    try:
        seconds = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number of seconds: {value!r}") from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError("must be at least 1 second")
    return seconds
