"""The ciphertext envelope: the one byte format that Decrypt accepts.

Layout, version 1 (all integers big-endian)::

    offset  size  field
    0       1     format: 0x01 = AES-GCM body, 0x02 = HSM-wrapped data key body
    1       1     L, length of the version id (1..50)
    2       L     version id, ASCII [0-9a-z]
    --- AES-GCM body (format 0x01) ---
    2+L     12    GCM nonce (random, chosen by the service, never by a caller)
    14+L    n     ciphertext (n = plaintext length)
    14+L+n  16    GCM tag
    --- HSM-wrapped data key body (format 0x02) ---
    2+L     12    GCM nonce of the binding tag
    14+L    16    binding tag: AES-GCM tag (empty plaintext) over aad || wrapped key
    30+L    w     wrapped key: CKM_AES_KEY_WRAP_PAD output (w = 24, 32 or 40)

The header (bytes 0 .. 2+L) is never trusted alone: every body authenticates
``authenticated_data(header, key_id, aad_context)``, so a flipped header bit, another key
id or another aadContext all fail authentication. A new layout gets a new format byte;
formats are never guessed from lengths.
"""

from __future__ import annotations

import enum
import re
import struct
from dataclasses import dataclass

from kms_hsm.errors import DecryptionFailed, InvalidArgument

NONCE_BYTES = 12
TAG_BYTES = 16
MAX_VERSION_ID_CHARS = 50
_VERSION_ID = re.compile(rb"[0-9a-z]{1,50}\Z")
# KWP output for 16, 24 and 32 byte keys.
_WRAPPED_KEY_LENGTHS = frozenset({24, 32, 40})


class EnvelopeFormat(enum.IntEnum):
    """First byte of every envelope."""

    AES_GCM = 0x01
    HSM_WRAPPED_KEY = 0x02


@dataclass(frozen=True, slots=True)
class Envelope:
    """A parsed ciphertext; ``body`` is the format-specific rest after the nonce."""

    format: EnvelopeFormat
    version_id: str
    nonce: bytes
    body: bytes

    def header(self) -> bytes:
        """Bytes 0 .. 2+L: format, version id length, version id."""
        return make_header(self.format, self.version_id)

    def serialize(self) -> bytes:
        """The envelope as bytes, exactly as ``parse`` reads it."""
        return self.header() + self.nonce + self.body

    @property
    def tag(self) -> bytes:
        """The 16-byte GCM tag (for both formats)."""
        if self.format is EnvelopeFormat.AES_GCM:
            return self.body[-TAG_BYTES:]
        return self.body[:TAG_BYTES]

    @property
    def gcm_ciphertext_and_tag(self) -> bytes:
        """For AES_GCM envelopes: ciphertext || tag, the form both GCM backends take."""
        return self.body

    @property
    def wrapped_key(self) -> bytes:
        """For HSM_WRAPPED_KEY envelopes: the KWP blob."""
        return self.body[TAG_BYTES:]

    @classmethod
    def parse(cls, data: bytes) -> Envelope:
        """Parse an envelope, checking every length before slicing.

        Raises:
            DecryptionFailed: for anything that is not a well-formed envelope. The reason
                goes to ``log_detail`` only, so a caller learns nothing about which check failed.
        """
        if len(data) < 2:
            raise DecryptionFailed(log_detail="envelope shorter than its fixed header")
        try:
            fmt = EnvelopeFormat(data[0])
        except ValueError:
            raise DecryptionFailed(log_detail=f"unknown envelope format 0x{data[0]:02x}") from None
        id_len = data[1]
        header_len = 2 + id_len
        raw_id = data[2:header_len]
        if len(raw_id) != id_len or not _VERSION_ID.match(raw_id):
            raise DecryptionFailed(log_detail="malformed version id in envelope header")
        rest = data[header_len:]
        if fmt is EnvelopeFormat.AES_GCM:
            if len(rest) < NONCE_BYTES + TAG_BYTES:
                raise DecryptionFailed(log_detail="GCM envelope body too short")
        elif len(rest) - NONCE_BYTES - TAG_BYTES not in _WRAPPED_KEY_LENGTHS:
            raise DecryptionFailed(log_detail="wrapped-key envelope body has a bad length")
        return cls(fmt, raw_id.decode("ascii"), rest[:NONCE_BYTES], rest[NONCE_BYTES:])


def make_header(fmt: EnvelopeFormat, version_id: str) -> bytes:
    """Serialize the header for ``version_id``; refuses ids that ``parse`` would refuse."""
    raw = version_id.encode("ascii", "strict") if version_id.isascii() else b""
    if not _VERSION_ID.match(raw):
        raise InvalidArgument("version id must be 1..50 characters of [0-9a-z]")
    return bytes((fmt, len(raw))) + raw


def authenticated_data(header: bytes, key_id: str, aad_context: bytes | None) -> bytes:
    """The AAD every body authenticates: header, length-prefixed key id, caller context.

    ``aad_context=None`` means the same as ``b""``. The key id is length-prefixed so that
    no (key id, context) pair can collide with another.
    """
    raw_key = key_id.encode("utf-8")
    return header + struct.pack(">I", len(raw_key)) + raw_key + (aad_context or b"")
