"""What every client command of the CLI shares (``keys``, ``encrypt``… and ``envelope``): the
connection options, the bearer token (environment or a 0600 file, never argv) and files
written whole or not at all."""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from kms_hsm.config import read_secret_file
from kms_hsm.errors import KmsError

DEFAULT_ENDPOINT = "http://127.0.0.1:8080"


class UsageError(Exception):
    """A mistake on the command line or in a local file: exit code 2."""


class AuthMissing(Exception):
    """No token was given: nothing is sent."""


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


def add_connection_options(
    group: argparse.ArgumentParser | argparse._ArgumentGroup, *, endpoint_help: str
) -> None:
    """``--endpoint``, ``--ca-file``, ``--token-file`` and ``--timeout``, with their defaults."""
    group.add_argument(
        "--endpoint",
        default=os.environ.get("KMS_HSM_ENDPOINT") or DEFAULT_ENDPOINT,
        help=f"{endpoint_help} (default $KMS_HSM_ENDPOINT, else {DEFAULT_ENDPOINT})",
    )
    group.add_argument(
        "--ca-file",
        default=os.environ.get("KMS_HSM_CA_FILE") or None,
        help="PEM CA bundle that signed the server's certificate (default $KMS_HSM_CA_FILE)",
    )
    group.add_argument(
        "--token-file",
        help="file (mode 0600) holding the bearer token (else $KMS_HSM_TOKEN)",
    )
    group.add_argument(
        "--timeout",
        type=_positive,
        default=10.0,
        help="seconds for the whole call, retries included (default 10)",
    )


def read_token(args: argparse.Namespace) -> str:
    """The bearer token: ``--token-file`` (mode 0600) when given, else ``KMS_HSM_TOKEN``."""
    if args.token_file:
        try:
            return read_secret_file(Path(args.token_file), "token file")
        except KmsError as exc:
            raise UsageError(exc.message) from None
        except OSError as exc:
            raise UsageError(f"token file {args.token_file}: {exc.strerror or exc}") from None
    token = os.environ.get("KMS_HSM_TOKEN", "").strip()
    if not token:
        raise AuthMissing("no token: set KMS_HSM_TOKEN or give --token-file (mode 0600)")
    return token


@contextlib.contextmanager
def atomic_file(path: str, *, secret: bool = True) -> Iterator[BinaryIO]:
    """A temporary file beside ``path``, renamed onto it only when the block succeeds.

    A reader never sees half a file and a failure leaves none (an existing ``path`` is left
    as it was; SIGTERM and SIGHUP count as failures, main() turns them into exceptions; a
    SIGKILL leaves the hidden ``.NAME.*.partial`` file). mkstemp creates the file 0600, so a
    secret is never readable by others, not even briefly; ``secret=False`` gives 0666 less
    the umask at the end. A symlink is followed; a device or a FIFO is written to directly.
    """
    target = Path(os.path.realpath(path))  # a symlink is written through, not replaced
    if target.exists() and not target.is_file():
        # A device or a FIFO (/dev/null to check a file, a pipe) is written to as it is:
        # renaming a file over it would replace it (as root, /dev/null itself).
        try:
            with open(target, "wb") as stream:
                yield stream
        except OSError as exc:
            raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from None
        return
    try:
        fd, temporary = tempfile.mkstemp(
            dir=target.parent, prefix=f".{target.name}.", suffix=".partial"
        )
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        if not secret:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(temporary, 0o666 & ~umask)
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
