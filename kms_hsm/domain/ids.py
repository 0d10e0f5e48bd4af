"""Resource identifiers in the Yandex shape: 20 lowercase alphanumerics."""

from __future__ import annotations

import secrets

_ALPHABET = "0123456789abcdefghijklmnopqrstuv"  # 32 symbols: 5 bits each, no modulo bias

KEY_PREFIX = "abj"
OPERATION_PREFIX = "abo"
PRINCIPAL_PREFIX = "aje"


def new_id(prefix: str) -> str:
    """A fresh id: a 3-letter prefix and 17 random symbols (85 bits)."""
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(17))
