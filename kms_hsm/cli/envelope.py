"""``kms-hsm envelope encrypt|decrypt``: files of any size under a kms-hsm key (Tink's
streaming AEAD, its keyset encrypted by the KMS key in the file's header; docs/envelope.md).

The token comes from ``KMS_HSM_TOKEN`` or ``--token-file`` (mode 0600), never from argv.
A file output is written to a temporary file beside it and renamed only on success, so no
partial plaintext is ever left under the output's name.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from kms_hsm.cli.remote import (
    AuthMissing,
    UsageError,
    add_connection_options,
    atomic_file,
    read_token,
)
from kms_hsm.errors import InvalidArgument

_MIB = 1 << 20


def add_commands(sub: Any) -> None:
    """Register ``envelope encrypt`` and ``envelope decrypt``."""
    envelope = sub.add_parser("envelope", help="encrypt or decrypt files with a KMS key")
    commands = envelope.add_subparsers(dest="envelope_command", required=True)
    encrypt = commands.add_parser(
        "encrypt", help="encrypt IN into OUT under a fresh data key wrapped by --key"
    )
    encrypt.add_argument("--key", required=True, metavar="KEY_ID", help="symmetric key id")
    decrypt = commands.add_parser("decrypt", help="decrypt an envelope IN into OUT")
    # The header names the key; without --key any key this token may use is accepted, so
    # whoever may encrypt under some such key can hand you a file that decrypts.
    decrypt.add_argument(
        "--key", metavar="KEY_ID", help="accept only files under this key (refuse any other)"
    )
    for parser, handler in ((encrypt, _encrypt), (decrypt, _decrypt)):
        parser.add_argument("input", metavar="IN", help="input file, or - for stdin")
        parser.add_argument("output", metavar="OUT", help="output file, or - for stdout")
        add_connection_options(
            parser, endpoint_help="REST base http(s)://host:port or gRPC host:port"
        )
        parser.set_defaults(handler=handler)


def _token(args: argparse.Namespace) -> str:
    # One exit status for every failure here (docs/envelope.md), usage or missing token alike.
    try:
        return read_token(args)
    except (UsageError, AuthMissing) as exc:
        raise InvalidArgument(str(exc)) from None


def _quiet_grpc() -> None:
    """Before grpc is imported: its core would log each failed TLS handshake on stderr,
    where the CLI's one error line already says what failed."""
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")


def _client(args: argparse.Namespace) -> Any:
    import tink  # type: ignore[import-untyped]

    from kms_hsm.tink import KmsClient, key_id_of, key_uri

    if args.ca_file is not None and not Path(args.ca_file).is_file():
        raise InvalidArgument(f"--ca-file {args.ca_file} is not a readable file")
    bound = None
    if args.key is not None:
        bound = key_uri(args.key)
        try:
            key_id_of(bound)
        except Exception:
            raise InvalidArgument(f"--key {args.key!r} is not a key id") from None
    try:
        # Bound to --key: a file under another key is refused with the one envelope message.
        return KmsClient(
            args.endpoint,
            token=_token(args),
            timeout=args.timeout,
            ca_file=args.ca_file,
            key_uri=bound,
        )
    except (tink.TinkError, ValueError) as exc:
        # Not repeated: an endpoint may carry a password.
        raise InvalidArgument(f"--endpoint: {exc}") from None


@contextlib.contextmanager
def _input(name: str) -> Iterator[tuple[BinaryIO, int | None]]:
    """The input stream and its size when it is a regular file (for the progress line)."""
    if name == "-":
        yield sys.stdin.buffer, None
        return
    try:
        stream = open(name, "rb")  # noqa: SIM115 (closed below)
    except OSError as exc:
        raise InvalidArgument(f"cannot read {name}: {exc.strerror}") from None
    with stream:
        size = os.fstat(stream.fileno()).st_size
        yield stream, size


@contextlib.contextmanager
def _output(name: str) -> Iterator[BinaryIO]:
    """stdout, or a 0600 temporary file beside ``name`` renamed onto it only on success."""
    if name == "-":
        yield sys.stdout.buffer
        return
    try:
        with atomic_file(name) as stream:
            yield stream
    except UsageError as exc:
        raise InvalidArgument(str(exc)) from None


def _progress(verb: str, size: int | None) -> Callable[[int], None] | None:
    """A progress line on stderr, only when stderr is a terminal."""
    if not sys.stderr.isatty():
        return None
    started = time.monotonic()
    last = [0.0]

    def show(done: int) -> None:
        now = time.monotonic()
        if now - last[0] < 0.2 and done != size:
            return
        last[0] = now
        rate = done / _MIB / max(now - started, 1e-6)
        if size:
            line = f"{verb} {done / _MIB:,.1f} / {size / _MIB:,.1f} MiB ({100 * done // size}%)"
        else:
            line = f"{verb} {done / _MIB:,.1f} MiB"
        sys.stderr.write(f"\r{line}, {rate:,.1f} MiB/s ")
        sys.stderr.flush()

    return show


def _finish(progress: Callable[[int], None] | None) -> None:
    if progress is not None:
        sys.stderr.write("\n")


def _run(args: argparse.Namespace, work: Callable[..., int], verb: str) -> int:
    client = _client(args)
    try:
        with _input(args.input) as (source, size):
            progress = _progress(verb, size)
            try:
                with _output(args.output) as destination:
                    work(source, destination, client, progress)
            except OSError as exc:
                # A closed pipe, a full disk: one line, like every other CLI error.
                if isinstance(exc, BrokenPipeError):
                    # Else Python's flush of stdout at exit prints a traceback of its own.
                    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                raise InvalidArgument(f"input/output error: {exc.strerror or exc}") from None
            finally:
                _finish(progress)
    finally:
        client.close()
    return 0


def _encrypt(args: argparse.Namespace) -> int:
    _quiet_grpc()
    from kms_hsm.tink import envelope, key_uri

    uri = key_uri(args.key)  # checked by _client before anything is read

    def work(source: BinaryIO, destination: BinaryIO, client: Any, progress: Any) -> int:
        return envelope.encrypt(source, destination, client, uri, progress)

    return _run(args, work, "encrypted")


def _decrypt(args: argparse.Namespace) -> int:
    _quiet_grpc()
    from kms_hsm.tink import envelope

    def work(source: BinaryIO, destination: BinaryIO, client: Any, progress: Any) -> int:
        return envelope.decrypt(source, destination, client, progress)

    return _run(args, work, "decrypted")
