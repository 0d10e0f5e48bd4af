"""``kms-hsm hsm …``: questions asked of the token itself (needs the PIN, like ``serve``).

``hsm attest KEY_ID [--json]``: custody of one key of any family, read from the token's
own attributes (kms_hsm.service.attest). Exit status 0 when everything is held as required,
3 when an object is missing, a flag is not as required or the public key differs from the
stored one, 1 for an unknown key (one line on stderr).
"""

from __future__ import annotations

import argparse
import asyncio
import json

from kms_hsm.cli.admin import command_settings, open_database
from kms_hsm.crypto.agent import AgentToken
from kms_hsm.service.attest import REQUIRED, KeyAttestation, attest_key
from kms_hsm.service.runtime import Runtime

EXIT_NOT_AS_REQUIRED = 3


def attest(args: argparse.Namespace) -> int:
    """Print a key's custody attestation (table, or ``--json``)."""
    settings = command_settings()
    open_database(settings).dispose()  # never created or migrated here: one line instead
    runtime = Runtime.start(settings)
    try:
        token = AgentToken(runtime.agents)
        result = asyncio.run(attest_key(runtime.keyring.database, token, args.key_id))
    finally:
        runtime.close()
    if args.json:
        print(json.dumps(result.as_json(), indent=2))
    else:
        print(render(result))
    return 0 if result.ok else EXIT_NOT_AS_REQUIRED


def _flag(value: bool | None) -> str:
    return "-" if value is None else str(value).lower()


def render(result: KeyAttestation) -> str:
    """The human-readable table."""
    lines = [f"key {result.key_id}: {result.family.service}, {result.algorithm}"]
    # The six flags first, then whatever else an object is required to be.
    names = list(dict.fromkeys([*REQUIRED, *(n for o in result.objects for n in o.required)]))
    headers = ["OBJECT (CKA_ID)", "ROLE", *(f"CKA_{n}" for n in names), "CUSTODY"]
    rows = [
        [
            o.object_id,
            o.role,
            *(_flag(o.attributes.get(n)) for n in names),
            "ok" if o.ok else ("MISSING" if not o.present else "NOT AS REQUIRED"),
        ]
        for o in result.objects
    ]

    # Requirements are per object: the line shows them when every object agrees.
    def _required(name: str) -> str:
        wanted = {o.required.get(name) for o in result.objects}
        return _flag(wanted.pop()) if len(wanted) == 1 else "*"

    required = ["", "required", *(_required(n) for n in names), ""]
    widths = [max(len(r[i]) for r in [headers, required, *rows]) for i in range(len(headers))]
    for row in [headers, required, *rows]:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        lines.append("  ".join(cells).rstrip())
    if not result.objects:
        lines.append("(no token object belongs to this key)")
    if result.public_key_matches is not None:
        token_sha, stored_sha = result.public_key_sha256, result.stored_public_key_sha256
        lines.append(f"public key SHA-256, from the token: {token_sha or '-'}")
        lines.append(f"public key SHA-256, stored:         {stored_sha or '-'}")
        lines.append(
            "public key: matches the stored one"
            if result.public_key_matches
            else "public key: DOES NOT MATCH the stored one"
        )
    lines.extend(f"note: {note}" for note in result.notes)
    lines.append("custody: as required" if result.ok else "custody: NOT AS REQUIRED")
    return "\n".join(lines)


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``hsm`` and its subcommands on the top-level parser."""
    hsm = sub.add_parser("hsm", help="ask the token itself (needs the PIN)").add_subparsers(
        dest="hsm_command", required=True
    )
    p = hsm.add_parser(
        "attest",
        help="custody of a key's token objects, read from the token (exit 3 if not as required)",
    )
    p.add_argument("key_id")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=attest)
