"""Envelope file encryption: Tink's streaming AEAD behind a header that carries its keyset,
encrypted by a kms-hsm key (``kms-hsm envelope``; the layout is in docs/envelope.md).

    offset  size  field
    0       7     magic b"KHSMENV"
    7       1     format version, 0x01
    8       2     N: length of the key URI, big-endian (1..1024)
    10      N     key URI, ASCII: yc-kms://<keyId>
    10+N    4     M: length of the encrypted keyset, big-endian (1..65536)
    14+N    M     Tink encrypted keyset (EncryptedKeyset protobuf, Tink's binary format)
    14+N+M  ...   Tink AES256_GCM_HKDF_1MB ciphertext stream

The keyset (one AesGcmHkdfStreaming key, fresh per file) is encrypted by one KMS Encrypt with
the bytes 0..10+N as associated data (aadContext), so it cannot be moved under another URI
or format; the stream is encrypted with the whole header (0..14+N+M) as associated data, so
any change of the header fails the stream. One KMS call per file in either direction.
"""

from __future__ import annotations

import contextlib
import io
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

import tink  # type: ignore[import-untyped]
from tink import aead, streaming_aead

from kms_hsm.errors import DecryptionFailed, KmsError, StatusCode
from kms_hsm.tink._client import KmsCallError, key_id_of

MAGIC = b"KHSMENV"
VERSION = 1
MAX_URI = 1024
MAX_KEYSET = 65536
CHUNK = 1 << 20
_STREAMING_KEY = "type.googleapis.com/google.crypto.tink.AesGcmHkdfStreamingKey"

Progress = Callable[[int], None]


class EnvelopeInvalid(DecryptionFailed):
    """Every way an envelope can fail to decrypt, told with one message (no oracle)."""

    default_message = (
        "not a valid kms-hsm envelope: it was modified, truncated or extended, "
        "or its key does not exist or this token may not use it"
    )


class EnvelopeKmsError(KmsError):
    """The KMS call of an envelope failed for a reason other than the ciphertext."""


@dataclass(frozen=True)
class Header:
    """What precedes the stream: the key URI and the encrypted keyset of the stream."""

    key_uri: str
    encrypted_keyset: bytes

    def keyset_associated_data(self) -> bytes:
        """Magic, version and key URI: the aadContext of the keyset's KMS Encrypt."""
        uri = self.key_uri.encode("ascii")
        return MAGIC + bytes([VERSION]) + struct.pack(">H", len(uri)) + uri

    def serialize(self) -> bytes:
        """The header bytes, also the associated data of the stream."""
        keyset = self.encrypted_keyset
        return self.keyset_associated_data() + struct.pack(">I", len(keyset)) + keyset

    @classmethod
    def read(cls, source: BinaryIO) -> Header:
        """Read exactly one header from ``source``; EnvelopeInvalid if it is not one."""
        prefix = _read_exact(source, len(MAGIC) + 3)
        if prefix[: len(MAGIC)] != MAGIC or prefix[len(MAGIC)] != VERSION:
            raise EnvelopeInvalid(log_detail="magic or version")
        (uri_len,) = struct.unpack(">H", prefix[-2:])
        if not 1 <= uri_len <= MAX_URI:
            raise EnvelopeInvalid(log_detail="key URI length")
        uri_bytes = _read_exact(source, uri_len)
        try:
            uri = uri_bytes.decode("ascii")
            key_id_of(uri)
        except (UnicodeDecodeError, tink.TinkError):
            raise EnvelopeInvalid(log_detail="key URI") from None
        (keyset_len,) = struct.unpack(">I", _read_exact(source, 4))
        if not 1 <= keyset_len <= MAX_KEYSET:
            raise EnvelopeInvalid(log_detail="keyset length")
        return cls(uri, _read_exact(source, keyset_len))


def _read_exact(source: BinaryIO, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = source.read(size - len(data))
        if not chunk:
            raise EnvelopeInvalid(log_detail="short header")
        data += chunk
    return bytes(data)


def _register() -> None:
    # Tink's registry is global; registering again is harmless.
    aead.register()
    streaming_aead.register()


class _Borrowed(io.RawIOBase):
    """A caller's stream lent to Tink, which closes what it wraps: closing this only
    flushes, so stdin/stdout stay open and a file is closed by its owner."""

    def __init__(self, stream: BinaryIO) -> None:
        super().__init__()
        self._stream = stream
        self._abandoned = False
        # What the caller's stream raised inside Tink (a signal, Ctrl-C, an I/O error): Tink
        # turns it into a TinkError, which must not read as a tampered file.
        self.failure: BaseException | None = None

    def abandon(self) -> None:
        """Drop every later write: what Tink writes when it closes is the final segment."""
        self._abandoned = True

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            data = self._stream.read(len(buffer))
        except BaseException as exc:
            self.failure = exc
            raise
        n = len(data)
        buffer[:n] = data
        return n

    def write(self, data: Any) -> int:
        if not self._abandoned:
            try:
                self._stream.write(data)
            except BaseException as exc:
                self.failure = exc
                raise
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._stream.flush()
        super().close()


class _EncryptOnce:
    """The KMS AEAD as Tink's keyset encryption sees it. Tink decrypts what it has just
    encrypted, as a self-check (``_keyset_handle._encrypt``): that would be a second KMS
    call per file, so the decrypt of exactly that ciphertext is answered from memory."""

    def __init__(self, remote: Any) -> None:
        self._remote = remote
        self._last: tuple[bytes, bytes, bytes] | None = None

    def encrypt(self, plaintext: bytes, associated_data: bytes) -> bytes:
        ciphertext = bytes(self._remote.encrypt(plaintext, associated_data))
        self._last = (ciphertext, bytes(associated_data), bytes(plaintext))
        return ciphertext

    def decrypt(self, ciphertext: bytes, associated_data: bytes) -> bytes:
        if self._last is not None and self._last[:2] == (ciphertext, associated_data):
            return self._last[2]
        return bytes(self._remote.decrypt(ciphertext, associated_data))


def _kms_failure(exc: Exception) -> KmsError:
    """What a failed KMS call becomes: a refused keyset is the one envelope error."""
    if isinstance(exc, KmsCallError):
        if exc.code is StatusCode.INVALID_ARGUMENT:
            return EnvelopeInvalid(log_detail=str(exc))
        if exc.code is StatusCode.NOT_FOUND:
            # A changed key URI names a key that does not exist, and the server answers
            # NOT_FOUND also for a key the caller may not see: one message for both.
            return EnvelopeInvalid(log_detail=str(exc))
        return EnvelopeKmsError(str(exc))
    # Tink's own checks of the decrypted keyset, or a keyset that does not parse.
    return EnvelopeInvalid(log_detail=type(exc).__name__)


def encrypt(
    source: BinaryIO,
    destination: BinaryIO,
    kms: Any,
    key_uri: str,
    progress: Progress | None = None,
) -> int:
    """Encrypt ``source`` into ``destination`` under a fresh keyset wrapped by ``key_uri``
    (``kms`` is a tink.KmsClient); returns the plaintext size. One KMS Encrypt."""
    _register()
    key_id_of(key_uri)
    handle = tink.new_keyset_handle(streaming_aead.streaming_aead_key_templates.AES256_GCM_HKDF_1MB)
    draft = Header(key_uri, b"")
    try:
        keyset = tink.proto_keyset_format.serialize_encrypted(
            handle, _EncryptOnce(kms.get_aead(key_uri)), draft.keyset_associated_data()
        )
    except KmsCallError as exc:
        raise EnvelopeKmsError(str(exc)) from None
    header = Header(key_uri, keyset).serialize()
    destination.write(header)
    primitive = handle.primitive(streaming_aead.StreamingAead)
    total = 0
    sink = _Borrowed(destination)
    stream = primitive.new_encrypting_stream(sink, header)
    try:
        while chunk := source.read(CHUNK):
            stream.write(chunk)
            total += len(chunk)
            if progress is not None:
                progress(total)
    except BaseException as exc:
        # Closing Tink's stream writes the segment marked last, which would make what is
        # already out (stdout, a caller's stream) a valid envelope of a cut-off input. Without
        # it the output stays a truncated stream, which decrypt refuses.
        sink.abandon()
        with contextlib.suppress(Exception):
            stream.close()
        if sink.failure is not None and exc is not sink.failure:
            raise sink.failure from None
        raise
    stream.close()
    destination.flush()
    return total


def decrypt(
    source: BinaryIO,
    destination: BinaryIO,
    kms: Any,
    progress: Progress | None = None,
) -> int:
    """Decrypt an envelope from ``source`` into ``destination``; returns the plaintext size.

    One KMS Decrypt. Plaintext is written as segments verify, so ``destination`` may hold a
    prefix of it when EnvelopeInvalid is raised: the caller discards it (the CLI writes a
    temporary file and renames it only on success).
    """
    _register()
    header = Header.read(source)
    try:
        remote = kms.get_aead(header.key_uri)
        handle = tink.proto_keyset_format.parse_encrypted(
            header.encrypted_keyset, remote, header.keyset_associated_data()
        )
    except (tink.TinkError, ValueError) as exc:
        raise _kms_failure(exc) from None
    types = {info.type_url for info in handle.keyset_info().key_info}
    if types != {_STREAMING_KEY}:
        raise EnvelopeInvalid(log_detail="keyset type")
    primitive = handle.primitive(streaming_aead.StreamingAead)
    total = 0
    borrowed = _Borrowed(source)
    try:
        with primitive.new_decrypting_stream(borrowed, header.serialize()) as stream:
            while chunk := stream.read(CHUNK):
                destination.write(chunk)
                total += len(chunk)
                if progress is not None:
                    progress(total)
    except tink.TinkError:
        if borrowed.failure is not None:
            raise borrowed.failure from None
        raise EnvelopeInvalid(log_detail="stream") from None
    destination.flush()
    return total
