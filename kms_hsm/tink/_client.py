"""``KmsClient``: Tink's ``yc-kms://<keyId>`` key URIs, served by kms-hsm over REST or gRPC.

Each ``Aead`` it hands out makes exactly the calls of the official ``yc-kms`` Tink providers
(Java ``kms-provider-tink``, Go ``yckmstink``): ``encrypt(plaintext, associated_data)`` is
SymmetricCrypto Encrypt{key_id, plaintext, aad_context = associated_data} and ``decrypt`` is
Decrypt{key_id, ciphertext, aad_context}; never a version id. So ``KmsEnvelopeAead``
ciphertexts made here and by those providers decrypt each other.
"""

from __future__ import annotations

import random
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import grpc
import tink  # type: ignore[import-untyped]
from yandex.cloud.kms.v1 import symmetric_crypto_service_pb2 as crypto_pb2
from yandex.cloud.kms.v1 import symmetric_crypto_service_pb2_grpc as crypto_grpc

from kms_hsm.errors import KmsError, StatusCode

URI_PREFIX = "yc-kms://"
DEFAULT_TIMEOUT = 10.0
DEFAULT_RETRIES = 4
# Backoff of the gRPC retries: full jitter over an exponential ceiling (0.1, 0.2, 0.4 s...).
_BACKOFF_BASE = 0.1
_BACKOFF_CAP = 2.0
_RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE})
# gRPC waits 1 s (then longer) before it dials a failed server again, and fails calls at
# once meanwhile: shorter first waits let the retries above reach a server that is back.
# (Not grpc.min_reconnect_backoff_ms: it is also the connect timeout of each attempt.)
_CHANNEL_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
)


def key_uri(key_id: str) -> str:
    """The ``yc-kms://`` URI of a key id."""
    return URI_PREFIX + key_id


def key_id_of(uri: str) -> str:
    """The key id in a ``yc-kms://<keyId>`` URI; TinkError if it is not one."""
    if not uri.startswith(URI_PREFIX):
        raise tink.TinkError(f"key URI must start with {URI_PREFIX}")
    key_id = uri[len(URI_PREFIX) :]
    if not key_id or len(key_id) > 50 or not key_id.isascii() or not key_id.isalnum():
        raise tink.TinkError("key URI must be yc-kms://<keyId> with an alphanumeric key id")
    return key_id


class KmsCallError(tink.TinkError):  # type: ignore[misc]
    """A failed Encrypt or Decrypt: Tink's error type, with the status code of the failure so
    that a caller can tell a refused ciphertext (INVALID_ARGUMENT) from an outage."""

    def __init__(self, message: str, code: StatusCode) -> None:
        super().__init__(message)
        self.code = code


class _Transport(Protocol):
    def encrypt(self, key_id: str, plaintext: bytes, aad: bytes) -> bytes: ...

    def decrypt(self, key_id: str, ciphertext: bytes, aad: bytes) -> bytes: ...

    def close(self) -> None: ...


class _Aead(tink.aead.Aead):  # type: ignore[misc]
    """A remote AEAD: one key of kms-hsm, called through a transport."""

    def __init__(self, transport: _Transport, key_id: str) -> None:
        self._transport = transport
        self._key_id = key_id

    def encrypt(self, plaintext: bytes, associated_data: bytes) -> bytes:
        """SymmetricCrypto Encrypt{key_id, plaintext, aad_context = associated_data}."""
        return self._transport.encrypt(self._key_id, bytes(plaintext), bytes(associated_data))

    def decrypt(self, ciphertext: bytes, associated_data: bytes) -> bytes:
        """SymmetricCrypto Decrypt{key_id, ciphertext, aad_context = associated_data}."""
        return self._transport.decrypt(self._key_id, bytes(ciphertext), bytes(associated_data))


def _scrub(text: str, secret: str | None) -> str:
    # Belt and braces: no server of ours echoes a token, but a message that did must not
    # carry it into an application's logs.
    return text.replace(secret, "***") if secret else text


class _GrpcTransport:
    """SymmetricCryptoService over one TLS channel, the bearer token as metadata."""

    def __init__(
        self,
        endpoint: str,
        token: str | None,
        *,
        timeout: float,
        retries: int,
        root_certificates: bytes | None,
        plaintext: bool,
    ) -> None:
        self._endpoint = endpoint
        self._token = token
        self._timeout = timeout
        self._retries = retries
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        if plaintext:
            self._channel = grpc.insecure_channel(endpoint, options=_CHANNEL_OPTIONS)
        else:
            credentials = grpc.ssl_channel_credentials(root_certificates=root_certificates)
            self._channel = grpc.secure_channel(endpoint, credentials, options=_CHANNEL_OPTIONS)
        self._stub = crypto_grpc.SymmetricCryptoServiceStub(self._channel)

    def encrypt(self, key_id: str, plaintext: bytes, aad: bytes) -> bytes:
        request = crypto_pb2.SymmetricEncryptRequest(
            key_id=key_id, plaintext=plaintext, aad_context=aad
        )
        response = self._call("Encrypt", key_id, self._stub.Encrypt, request)
        return bytes(response.ciphertext)

    def decrypt(self, key_id: str, ciphertext: bytes, aad: bytes) -> bytes:
        request = crypto_pb2.SymmetricDecryptRequest(
            key_id=key_id, ciphertext=ciphertext, aad_context=aad
        )
        response = self._call("Decrypt", key_id, self._stub.Decrypt, request)
        return bytes(response.plaintext)

    def _call(self, name: str, key_id: str, method: Callable[..., Any], request: Any) -> Any:
        # The deadline covers the whole call, retries included, as the providers' does.
        deadline = time.monotonic() + self._timeout
        attempt = 0
        while True:
            remaining = deadline - time.monotonic()
            try:
                if remaining <= 0:
                    raise _DeadlinePassed
                return method(request, timeout=remaining, metadata=self._metadata)
            except _DeadlinePassed:
                code, details = grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded"
            except grpc.RpcError as exc:
                code = exc.code()
                details = exc.details() or ""
                if code in _RETRYABLE and attempt < self._retries:
                    ceiling = min(_BACKOFF_CAP, _BACKOFF_BASE * 2**attempt)
                    pause = random.uniform(0, ceiling)  # noqa: S311 (jitter, not a secret)
                    if time.monotonic() + pause < deadline:
                        attempt += 1
                        time.sleep(pause)
                        continue
            status = StatusCode[code.name] if code is not None else StatusCode.UNKNOWN
            if status is StatusCode.DEADLINE_EXCEEDED:
                details = f"no answer within the {self._timeout:g} s deadline"
            message = (
                f"yc-kms {name} with key {key_id} at {self._endpoint} failed: "
                f"{status.name}: {_scrub(details, self._token)}"
            )
            if attempt:
                message += f" (after {attempt + 1} attempts)"
            raise KmsCallError(message, status) from None

    def close(self) -> None:
        self._channel.close()


class _DeadlinePassed(Exception):
    pass


class _RestTransport:
    """kms-hsm's REST API through ``kms_hsm.client.Client`` (its retries and timeout)."""

    def __init__(
        self,
        endpoint: str,
        token: str | None,
        *,
        timeout: float,
        retries: int,
        verify: bool | str | ssl.SSLContext,
    ) -> None:
        from kms_hsm.client import Client

        self._endpoint = endpoint
        self._token = token
        self._client = Client(
            endpoint, token=token, timeout=timeout, retries=retries, verify=verify
        )

    def encrypt(self, key_id: str, plaintext: bytes, aad: bytes) -> bytes:
        try:
            result = self._client.encrypt(key_id, plaintext, aad_context=aad or None)
        except KmsError as exc:
            raise self._error("Encrypt", key_id, exc) from None
        return bytes(result.ciphertext)

    def decrypt(self, key_id: str, ciphertext: bytes, aad: bytes) -> bytes:
        try:
            result = self._client.decrypt(key_id, ciphertext, aad_context=aad or None)
        except KmsError as exc:
            raise self._error("Decrypt", key_id, exc) from None
        return bytes(result.plaintext)

    def _error(self, name: str, key_id: str, exc: KmsError) -> KmsCallError:
        message = (
            f"yc-kms {name} with key {key_id} at {self._endpoint} failed: "
            f"{exc.code.name}: {_scrub(exc.message, self._token)}"
        )
        return KmsCallError(message, exc.code)

    def close(self) -> None:
        self._client.close()


class KmsClient(tink.KmsClient):  # type: ignore[misc]
    """A ``tink.KmsClient`` for ``yc-kms://<keyId>`` URIs served by kms-hsm.

    ``endpoint`` is a REST base (``http://`` or ``https://``) or a gRPC ``host:port`` (TLS,
    trusting ``ca_file`` or the system roots; ``plaintext=True`` for a server without TLS).
    ``token`` is the bearer token (an IAM token or a kms-hsm token); it never appears in an
    error. ``key_uri`` binds the client to that one key; without it, every yc-kms URI is
    supported. Each call has a ``timeout`` deadline (10 s) and is retried on UNAVAILABLE
    (HTTP 503) up to ``retries`` times with jittered exponential backoff. Failures are
    ``tink.TinkError`` (a ``KmsCallError`` carrying the status code).
    """

    def __init__(
        self,
        endpoint: str,
        *,
        token: str | None = None,
        key_uri: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        ca_file: str | Path | None = None,
        plaintext: bool = False,
    ) -> None:
        if key_uri is not None:
            key_id_of(key_uri)
        self._key_uri = key_uri
        self._transport: _Transport
        if endpoint.startswith(("http://", "https://")):
            verify: bool | str = str(ca_file) if ca_file is not None else True
            self._transport = _RestTransport(
                endpoint.rstrip("/"), token, timeout=timeout, retries=retries, verify=verify
            )
        else:
            if "://" in endpoint or ":" not in endpoint:
                raise tink.TinkError("endpoint must be an http(s):// REST base or a gRPC host:port")
            roots = Path(ca_file).read_bytes() if ca_file is not None else None
            self._transport = _GrpcTransport(
                endpoint,
                token,
                timeout=timeout,
                retries=retries,
                root_certificates=roots,
                plaintext=plaintext,
            )

    def does_support(self, key_uri: str) -> bool:
        """True for the bound URI, or for any yc-kms URI when the client is not bound."""
        if self._key_uri is not None:
            return key_uri == self._key_uri
        try:
            key_id_of(key_uri)
        except tink.TinkError:
            return False
        return True

    def get_aead(self, key_uri: str) -> tink.aead.Aead:
        """The remote AEAD of the key the URI names."""
        if not self.does_support(key_uri):
            raise tink.TinkError(f"this client does not support key URI {key_uri}")
        return _Aead(self._transport, key_id_of(key_uri))

    def close(self) -> None:
        """Close the channel or HTTP connection pool."""
        self._transport.close()

    def __enter__(self) -> KmsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
