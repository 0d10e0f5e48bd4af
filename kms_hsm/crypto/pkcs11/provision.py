"""Initialise a token through PKCS#11 itself (C_InitToken, C_InitPIN).

``softhsm2-util --init-token`` takes its PINs on the command line (readable in /proc)
or from a terminal; this module takes them from 0600 files instead, so that
``softhsm/init-token.sh`` (used by the embedded default, docker-compose and the tests)
never puts a PIN in argv. Run as ``python -m kms_hsm.crypto.pkcs11.provision``.
"""

from __future__ import annotations

import argparse
import ctypes
import sys
from pathlib import Path

from pkcs11 import TokenFlag

from kms_hsm.config import read_secret_file
from kms_hsm.crypto.pkcs11 import library


class ProvisionError(Exception):
    """The token could not be initialised."""


def token_exists(lib: object, label: str) -> bool:
    """True when an initialised token with ``label`` is present."""
    for slot in lib.get_slots(token_present=True):  # type: ignore[attr-defined]
        token = slot.get_token()
        if token.flags & TokenFlag.TOKEN_INITIALIZED and token.label == label:
            return True
    return False


def init_token(module_path: str, label: str, so_pin: str, user_pin: str) -> bool:
    """Initialise a free slot as token ``label`` with the given PINs.

    Returns False (and changes nothing) when the token exists already.
    """
    if len(label.encode("utf-8")) > 32:
        raise ProvisionError("token label must be at most 32 bytes")
    lib = library.load(module_path)
    try:
        if token_exists(lib, label):
            return False
        free = [
            slot
            for slot in lib.get_slots(token_present=True)
            if not slot.get_token().flags & TokenFlag.TOKEN_INITIALIZED
        ]
        if not free:
            raise ProvisionError("no free slot to initialise a token in")
        so = so_pin.encode("utf-8")
        padded_label = label.encode("utf-8").ljust(32, b" ")
        module = ctypes.CDLL(module_path)
        module.C_InitToken.argtypes = [
            ctypes.c_ulong,
            ctypes.c_char_p,
            ctypes.c_ulong,
            ctypes.c_char_p,
        ]
        rv = module.C_InitToken(free[0].slot_id, so, len(so), padded_label)
        if rv != 0:
            raise ProvisionError(f"C_InitToken returned 0x{rv:x}")
    finally:
        library.finalize_module(module_path)
    # SoftHSM2 moves a freshly initialised token to a new slot id: reload to see it.
    lib = library.load(module_path)
    try:
        token = lib.get_token(token_label=label)
        session = token.open(rw=True, so_pin=so_pin)
        try:
            session.init_pin(user_pin)
        finally:
            session.close()
    finally:
        library.finalize_module(module_path)
    return True


def main(argv: list[str] | None = None) -> int:
    """CLI entry: PINs come from files that must be 0600, never from arguments."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--module", required=True)
    parser.add_argument("--label", required=True)
    parser.add_argument("--so-pin-file", required=True, type=Path)
    parser.add_argument("--user-pin-file", required=True, type=Path)
    args = parser.parse_args(argv)
    try:
        created = init_token(
            args.module,
            args.label,
            read_secret_file(args.so_pin_file, "SO PIN file"),
            read_secret_file(args.user_pin_file, "user PIN file"),
        )
    except Exception as exc:
        print(f"init-token: {exc}", file=sys.stderr)
        return 1
    print(f"token '{args.label}' " + ("initialised" if created else "already present"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
