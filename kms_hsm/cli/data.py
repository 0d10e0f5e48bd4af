"""``kms-hsm keys …``, ``encrypt``, ``decrypt``, ``datakey``: a REST client on the command line.

Every command here talks to a running kms-hsm through ``kms_hsm.client.Client`` (no HTTP code
of its own). The bearer token comes from ``KMS_HSM_TOKEN`` or ``--token-file`` (mode 0600),
never from argv (``main`` refuses ``--token``). Errors are one line on stderr and an exit code
from ``EXIT_CODES``; plaintext, data keys and the token never reach stderr. User guide:
docs/cli.md.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import os
import re
import ssl
import sys
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from kms_hsm.cli.remote import (
    AuthMissing,
    UsageError,
    add_connection_options,
    atomic_file,
    read_token,
)
from kms_hsm.client import Client, DataKeyResult, SymmetricKey, SymmetricKeyVersion
from kms_hsm.errors import KmsError, StatusCode

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_AUTH = 3
EXIT_NOT_FOUND = 4
EXIT_UNAVAILABLE = 5
EXIT_INTERRUPTED = 130  # main() answers Ctrl-C so, as the shell does for SIGINT (128 + 2)

EXIT_CODES = f"""exit codes:
  {EXIT_OK}  success
  {EXIT_REFUSED}  the server refused the request (invalid argument, failed precondition, a
     ciphertext that does not decrypt, ...): its message on stderr
  {EXIT_USAGE}  usage: bad arguments, an unreadable input file, an unsafe token file
  {EXIT_AUTH}  authentication or permission: no token, token refused (401), role missing (403)
  {EXIT_NOT_FOUND}  not found: the key or version does not exist (or is not visible to you)
  {EXIT_UNAVAILABLE}  unavailable: the server could not be reached or answered 503 after retries,
     or the deadline (--timeout) passed
  {EXIT_INTERRUPTED}  interrupted (Ctrl-C)
"""

_BY_CODE: Mapping[StatusCode, int] = {
    StatusCode.UNAUTHENTICATED: EXIT_AUTH,
    StatusCode.PERMISSION_DENIED: EXIT_AUTH,
    StatusCode.NOT_FOUND: EXIT_NOT_FOUND,
    StatusCode.UNAVAILABLE: EXIT_UNAVAILABLE,
    StatusCode.DEADLINE_EXCEEDED: EXIT_UNAVAILABLE,
}

_DURATION = re.compile(r"(\d+)([dhms])")
_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
# AES_256_HSM: the data key is generated and wrapped in the token (README, walk-through).
_DATA_KEY_SPECS = ("AES_128", "AES_192", "AES_256", "AES_256_HSM")
_ALGORITHMS = ("AES_128", "AES_192", "AES_256", "AES_256_HSM")


# --- arguments ---------------------------------------------------------------------------


def _duration(text: str) -> timedelta:
    """``30d``, ``24h``, ``1h30m``, ``3600s`` (or plain seconds) -> ``timedelta``."""
    value = text.strip()
    if value.isdigit():
        return timedelta(seconds=int(value))
    if not value or _DURATION.sub("", value):
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 30d, 24h, 1h30m, 90s)")
    seconds = sum(int(n) * _UNITS[u] for n, u in _DURATION.findall(value))
    return timedelta(seconds=seconds)


def _label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"a label is key=value, not {text!r}")
    return key, value


def _common() -> argparse.ArgumentParser:
    """The options every client command takes (a parent parser)."""
    common = argparse.ArgumentParser(add_help=False)
    add_connection_options(common.add_argument_group("connection"), endpoint_help="REST base URL")
    common.add_argument(
        "--json", action="store_true", help="print JSON (the REST API's camelCase fields)"
    )
    return common


def _client(args: argparse.Namespace) -> Client:
    token = read_token(args)
    verify: bool | ssl.SSLContext = True
    if args.ca_file:
        try:
            verify = ssl.create_default_context(cafile=args.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise UsageError(f"--ca-file {args.ca_file}: {exc.strerror or exc}") from None
    try:
        return Client(args.endpoint, token=token, timeout=args.timeout, verify=verify)
    except ValueError as exc:
        # Not repeated: an endpoint may carry a password (refused, but not echoed either).
        raise UsageError(f"--endpoint: {exc}") from None


# --- output ------------------------------------------------------------------------------


def _time(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _seconds(value: timedelta | None) -> str | None:
    if value is None:
        return None
    total = value.total_seconds()
    return f"{int(total)}s" if total == int(total) else f"{total:.9f}".rstrip("0") + "s"


def _compact(d: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


# --json prints every field of a key or version, null when it has no value (the REST API's
# proto3 JSON leaves such fields out): scripts can rely on each name being there.


def version_json(v: SymmetricKeyVersion) -> dict[str, Any]:
    """A version with the REST API's field names."""
    return {
        "id": v.id,
        "keyId": v.key_id,
        "status": v.status,
        "algorithm": v.algorithm,
        "createdAt": _time(v.created_at),
        "primary": v.primary,
        "destroyAt": _time(v.destroy_at),
        "hostedByHsm": v.hosted_by_hsm,
    }


def key_json(k: SymmetricKey) -> dict[str, Any]:
    """A key with the REST API's field names."""
    return {
        "id": k.id,
        "folderId": k.folder_id,
        "createdAt": _time(k.created_at),
        "name": k.name,
        "description": k.description,
        "labels": dict(k.labels),
        "status": k.status,
        "defaultAlgorithm": k.default_algorithm,
        "primaryVersion": version_json(k.primary_version) if k.primary_version else None,
        "rotatedAt": _time(k.rotated_at),
        "rotationPeriod": _seconds(k.rotation_period),
        "deletionProtection": k.deletion_protection,
    }


def _print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, sort_keys=False) + "\n")


def _fields(rows: Sequence[tuple[str, Any]]) -> None:
    """``name: value`` lines, the values aligned."""
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        sys.stdout.write(f"{name + ':':<{width + 1}} {'' if value is None else value}\n")


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Columns aligned under their header; an empty cell for None."""
    cells = [[("" if c is None else str(c)) for c in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(header)]
    for row in [list(header), *cells]:
        sys.stdout.write("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        sys.stdout.write("\n")


def _labels_text(labels: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def _show_key(args: argparse.Namespace, key: SymmetricKey) -> None:
    if args.json:
        _print_json(key_json(key))
        return
    primary = key.primary_version
    _fields(
        [
            ("id", key.id),
            ("folder", key.folder_id),
            ("name", key.name),
            ("description", key.description),
            ("labels", _labels_text(key.labels)),
            ("status", key.status),
            ("algorithm", key.default_algorithm),
            ("primary version", primary.id if primary else None),
            ("rotation period", _seconds(key.rotation_period)),
            ("rotated at", _time(key.rotated_at)),
            ("deletion protection", "yes" if key.deletion_protection else "no"),
            ("created at", _time(key.created_at)),
        ]
    )


def _show_version(args: argparse.Namespace, version: SymmetricKeyVersion) -> None:
    if args.json:
        _print_json(version_json(version))
        return
    _fields(
        [
            ("id", version.id),
            ("key", version.key_id),
            ("status", version.status),
            ("algorithm", version.algorithm),
            ("primary", "yes" if version.primary else "no"),
            ("destroy at", _time(version.destroy_at)),
            ("created at", _time(version.created_at)),
        ]
    )


# --- key management ----------------------------------------------------------------------


def _keys_create(args: argparse.Namespace) -> int:
    with _client(args) as client:
        key = client.create_key(
            args.folder_id,
            name=args.name or "",
            description=args.description or "",
            labels=dict(args.label or []),
            default_algorithm=args.algorithm,
            rotation_period=args.rotation_period,
            deletion_protection=args.deletion_protection,
        )
    _show_key(args, key)
    return EXIT_OK


def _keys_get(args: argparse.Namespace) -> int:
    with _client(args) as client:
        key = client.get_key(args.key_id)
    _show_key(args, key)
    return EXIT_OK


def _keys_list(args: argparse.Namespace) -> int:
    with _client(args) as client:
        keys = list(client.iter_keys(args.folder_id))
    if args.json:
        _print_json({"keys": [key_json(k) for k in keys]})
        return EXIT_OK
    _table(
        ["ID", "NAME", "STATUS", "ALGORITHM", "PRIMARY VERSION", "CREATED AT"],
        [
            [
                k.id,
                k.name,
                k.status,
                k.default_algorithm,
                k.primary_version.id if k.primary_version else None,
                _time(k.created_at),
            ]
            for k in keys
        ],
    )
    return EXIT_OK


def _keys_update(args: argparse.Namespace) -> int:
    labels: dict[str, str] | None = None
    if args.clear_labels:
        labels = {}
    if args.label:
        labels = dict(args.label)
    fields: dict[str, Any] = {
        "name": args.name,
        "description": args.description,
        "labels": labels,
        "status": args.status,
        "default_algorithm": args.algorithm,
        "rotation_period": args.rotation_period,
        "deletion_protection": args.deletion_protection,
    }
    if all(v is None for v in fields.values()):
        raise UsageError("keys update: nothing to change (give --name, --status, --label, ...)")
    with _client(args) as client:
        key = client.update_key(args.key_id, **fields)
    _show_key(args, key)
    return EXIT_OK


def _keys_delete(args: argparse.Namespace) -> int:
    with _client(args) as client:
        key = client.delete_key(args.key_id)
    _show_key(args, key)
    return EXIT_OK


def _keys_rotate(args: argparse.Namespace) -> int:
    with _client(args) as client:
        version = client.rotate_key(args.key_id)
    _show_version(args, version)
    return EXIT_OK


def _keys_versions(args: argparse.Namespace) -> int:
    with _client(args) as client:
        versions = list(client.iter_versions(args.key_id))
    if args.json:
        _print_json({"keyVersions": [version_json(v) for v in versions]})
        return EXIT_OK
    _table(
        ["ID", "STATUS", "ALGORITHM", "PRIMARY", "CREATED AT", "DESTROY AT"],
        [
            [
                v.id,
                v.status,
                v.algorithm,
                "yes" if v.primary else "",
                _time(v.created_at),
                _time(v.destroy_at),
            ]
            for v in versions
        ],
    )
    return EXIT_OK


def _keys_set_primary(args: argparse.Namespace) -> int:
    with _client(args) as client:
        key = client.set_primary_version(args.key_id, args.version_id)
    _show_key(args, key)
    return EXIT_OK


def _keys_schedule_destroy(args: argparse.Namespace) -> int:
    with _client(args) as client:
        version = client.schedule_version_destruction(
            args.key_id, args.version_id, pending_period=args.pending_period
        )
    _show_version(args, version)
    return EXIT_OK


def _keys_cancel_destroy(args: argparse.Namespace) -> int:
    with _client(args) as client:
        version = client.cancel_version_destruction(args.key_id, args.version_id)
    _show_version(args, version)
    return EXIT_OK


# --- data: input, output -----------------------------------------------------------------


def _read_input(path: str, in_base64: bool) -> bytes:
    """The bytes of ``path`` (``-``: stdin), base64-decoded with ``in_base64``."""
    try:
        data = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not in_base64:
        return data
    try:
        return base64.b64decode(b"".join(data.split()), validate=True)
    except (binascii.Error, ValueError):
        raise UsageError(f"{'stdin' if path == '-' else path} is not valid base64") from None


def _aad(args: argparse.Namespace) -> bytes | None:
    if args.aad_base64 is not None:
        try:
            return base64.b64decode(args.aad_base64, validate=True)
        except (binascii.Error, ValueError):
            raise UsageError("--aad-base64 is not valid base64") from None
    if args.aad is not None:
        return str(args.aad).encode("utf-8")
    return None


def write_output(path: str, data: bytes, *, secret: bool) -> None:
    """Write ``data`` to ``path`` (``-``: stdout) all at once: a temporary file in the same
    directory renamed over ``path``, so a reader never sees half a file and a failure leaves
    none. ``secret`` (plaintext, data keys): mode 0600; else 0666 less the umask."""
    if path == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    try:
        with atomic_file(path, secret=secret) as out:
            out.write(data)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from None


def _encode(data: bytes, out_base64: bool) -> bytes:
    return base64.b64encode(data) + b"\n" if out_base64 else data


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _json_bytes(value: Mapping[str, Any]) -> bytes:
    return (json.dumps(value, indent=2) + "\n").encode("utf-8")


def _encrypt(args: argparse.Namespace) -> int:
    if args.output == "-" and not (args.out_base64 or args.json) and sys.stdout.isatty():
        # Raw ciphertext would garble the terminal and could not be copied back intact.
        raise UsageError(
            "refusing to write binary ciphertext to a terminal: "
            "give --out FILE, --out-base64 or --json, or pipe the output"
        )
    plaintext = _read_input(args.input, args.in_base64)
    aad = _aad(args)
    with _client(args) as client:
        result = client.encrypt(args.key_id, plaintext, aad_context=aad, version_id=args.version_id)
    if args.json:
        body = {
            "keyId": result.key_id,
            "versionId": result.version_id,
            "ciphertext": _b64(result.ciphertext),
        }
        write_output(args.output, _json_bytes(body), secret=False)
    else:
        write_output(args.output, _encode(result.ciphertext, args.out_base64), secret=False)
    return EXIT_OK


def _decrypt(args: argparse.Namespace) -> int:
    ciphertext = _read_input(args.input, args.in_base64)
    aad = _aad(args)
    with _client(args) as client:
        result = client.decrypt(args.key_id, ciphertext, aad_context=aad)
    if args.json:
        body = {
            "keyId": result.key_id,
            "versionId": result.version_id,
            "plaintext": _b64(result.plaintext),
        }
        write_output(args.output, _json_bytes(body), secret=True)
    else:
        write_output(args.output, _encode(result.plaintext, args.out_base64), secret=True)
    return EXIT_OK


def _datakey(args: argparse.Namespace) -> int:
    if args.no_plaintext and args.plaintext_out:
        raise UsageError("--plaintext-out and --no-plaintext exclude each other")
    aad = _aad(args)
    with _client(args) as client:
        result: DataKeyResult = client.generate_data_key(
            args.key_id,
            data_key_spec=args.spec,
            aad_context=aad,
            skip_plaintext=args.no_plaintext,
        )
    if args.ciphertext_out:
        write_output(args.ciphertext_out, result.data_key_ciphertext, secret=False)
    if args.plaintext_out and result.data_key_plaintext is not None:
        write_output(args.plaintext_out, result.data_key_plaintext, secret=True)
    body = {
        "keyId": result.key_id,
        "versionId": result.version_id,
        "dataKeyCiphertext": _b64(result.data_key_ciphertext),
        # Printed only when it is not written to --plaintext-out: one copy of a secret.
        "dataKeyPlaintext": (
            _b64(result.data_key_plaintext)
            if result.data_key_plaintext is not None and not args.plaintext_out
            else None
        ),
    }
    if args.json:
        _print_json(body)
    else:
        if args.ciphertext_out:
            cipher_text = f"written to {args.ciphertext_out}"
        else:
            cipher_text = str(body["dataKeyCiphertext"])
        if args.plaintext_out:
            plain_text = f"written to {args.plaintext_out}"
        else:
            plain_text = body["dataKeyPlaintext"] or "(not requested)"
        _fields(
            [
                ("key", body["keyId"]),
                ("version", body["versionId"]),
                ("ciphertext (base64)", cipher_text),
                ("plaintext (base64)", plain_text),
            ]
        )
    return EXIT_OK


# --- errors and registration -------------------------------------------------------------


def _fail(message: str, code: int) -> int:
    # One line: a server message with a newline in it must not look like two errors.
    sys.stderr.write("kms-hsm: " + " ".join(message.split()) + "\n")
    return code


def exit_code(error: KmsError) -> int:
    """The exit code of a server (or client-side) error, by its gRPC code."""
    return _BY_CODE.get(error.code, EXIT_REFUSED)


def _guarded(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """``handler`` with every failure turned into one stderr line and its exit code."""

    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except UsageError as exc:
            return _fail(str(exc), EXIT_USAGE)
        except AuthMissing as exc:
            return _fail(str(exc), EXIT_AUTH)
        except KmsError as exc:
            request_id = getattr(exc, "request_id", None)
            suffix = f" (request id {request_id})" if request_id else ""
            return _fail(exc.message + suffix, exit_code(exc))

    return run


def _parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    handler: Callable[[argparse.Namespace], int],
    help_text: str,
    common: argparse.ArgumentParser,
) -> argparse.ArgumentParser:
    p = sub.add_parser(
        name,
        help=help_text,
        description=help_text,
        parents=[common],
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(handler=_guarded(handler))
    return p


def _key_fields(p: argparse.ArgumentParser, *, update: bool) -> None:
    p.add_argument("--name", help="the key's name")
    p.add_argument("--description", help="free text")
    p.add_argument(
        "--label",
        action="append",
        type=_label,
        metavar="KEY=VALUE",
        help="a label (repeat for more)" + ("; replaces all labels" if update else ""),
    )
    p.add_argument(
        "--algorithm",
        choices=_ALGORITHMS,
        default=None if update else "AES_256",
        help="default algorithm of new versions" + ("" if update else " (default AES_256)"),
    )
    p.add_argument(
        "--rotation-period",
        type=_duration,
        metavar="DURATION",
        help="automatic rotation period: 30d, 24h, 1h30m, 3600s",
    )


def _data_io(p: argparse.ArgumentParser, what_in: str, what_out: str) -> None:
    p.add_argument("key_id", metavar="KEY_ID")
    p.add_argument(
        "--in", dest="input", default="-", metavar="FILE", help=f"{what_in} (default - : stdin)"
    )
    p.add_argument(
        "--out",
        dest="output",
        default="-",
        metavar="FILE",
        help=f"{what_out}, written atomically (default - : stdout)",
    )
    p.add_argument("--in-base64", action="store_true", help="the input is base64 text")
    p.add_argument("--out-base64", action="store_true", help="write base64 text (and a newline)")


def _aad_options(p: argparse.ArgumentParser) -> None:
    aad = p.add_mutually_exclusive_group()
    aad.add_argument("--aad", metavar="TEXT", help="additional authenticated data (UTF-8 text)")
    aad.add_argument("--aad-base64", metavar="B64", help="additional authenticated data, base64")


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``keys``, ``encrypt``, ``decrypt`` and ``datakey``."""
    common = _common()
    keys = sub.add_parser(
        "keys",
        help="symmetric keys over the REST API (create, list, rotate, ...)",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    ).add_subparsers(dest="keys_command", required=True, metavar="COMMAND")

    p = _parser(keys, "create", _keys_create, "create a symmetric key", common)
    p.add_argument(
        "--folder-id",
        default=os.environ.get("KMS_HSM_FOLDER_ID") or None,
        required=not os.environ.get("KMS_HSM_FOLDER_ID"),
        help="the folder (default $KMS_HSM_FOLDER_ID)",
    )
    _key_fields(p, update=False)
    p.add_argument("--deletion-protection", action="store_true", help="refuse deletes")

    p = _parser(keys, "get", _keys_get, "show a key", common)
    p.add_argument("key_id", metavar="KEY_ID")

    p = _parser(keys, "list", _keys_list, "list the keys of a folder (every page)", common)
    p.add_argument(
        "--folder-id",
        default=os.environ.get("KMS_HSM_FOLDER_ID") or None,
        required=not os.environ.get("KMS_HSM_FOLDER_ID"),
        help="the folder (default $KMS_HSM_FOLDER_ID)",
    )

    p = _parser(keys, "update", _keys_update, "change the fields given, only those", common)
    p.add_argument("key_id", metavar="KEY_ID")
    _key_fields(p, update=True)
    p.add_argument("--clear-labels", action="store_true", help="remove every label")
    p.add_argument("--status", choices=("ACTIVE", "INACTIVE"), help="enable or disable the key")
    protection = p.add_mutually_exclusive_group()
    protection.add_argument(
        "--deletion-protection", dest="deletion_protection", action="store_true", default=None
    )
    protection.add_argument(
        "--no-deletion-protection", dest="deletion_protection", action="store_false"
    )

    p = _parser(keys, "rotate", _keys_rotate, "make a new primary version", common)
    p.add_argument("key_id", metavar="KEY_ID")

    p = _parser(keys, "versions", _keys_versions, "list a key's versions", common)
    p.add_argument("key_id", metavar="KEY_ID")

    p = _parser(keys, "set-primary", _keys_set_primary, "make a version the primary", common)
    p.add_argument("key_id", metavar="KEY_ID")
    p.add_argument("version_id", metavar="VERSION_ID")

    p = _parser(
        keys,
        "schedule-destroy",
        _keys_schedule_destroy,
        "schedule a version's destruction",
        common,
    )
    p.add_argument("key_id", metavar="KEY_ID")
    p.add_argument("version_id", metavar="VERSION_ID")
    p.add_argument(
        "--pending-period",
        type=_duration,
        metavar="DURATION",
        help="time before destruction (server default when left out): 7d, 24h",
    )

    p = _parser(
        keys, "cancel-destroy", _keys_cancel_destroy, "cancel a scheduled destruction", common
    )
    p.add_argument("key_id", metavar="KEY_ID")
    p.add_argument("version_id", metavar="VERSION_ID")

    p = _parser(keys, "delete", _keys_delete, "delete a key (and all its versions)", common)
    p.add_argument("key_id", metavar="KEY_ID")

    p = _parser(sub, "encrypt", _encrypt, "encrypt data with a key", common)
    _data_io(p, "plaintext file", "ciphertext file")
    _aad_options(p)
    p.add_argument("--version-id", help="encrypt with this version instead of the primary")

    p = _parser(sub, "decrypt", _decrypt, "decrypt data encrypted with a key", common)
    _data_io(p, "ciphertext file", "plaintext file (mode 0600)")
    _aad_options(p)

    p = _parser(sub, "datakey", _datakey, "generate a data key (envelope encryption)", common)
    p.add_argument("key_id", metavar="KEY_ID")
    p.add_argument(
        "--spec", choices=_DATA_KEY_SPECS, default="AES_256", help="data key size (default AES_256)"
    )
    p.add_argument(
        "--no-plaintext", action="store_true", help="only the encrypted data key is returned"
    )
    p.add_argument("--ciphertext-out", metavar="FILE", help="write the encrypted data key (raw)")
    p.add_argument(
        "--plaintext-out", metavar="FILE", help="write the plaintext data key (raw, mode 0600)"
    )
    _aad_options(p)
