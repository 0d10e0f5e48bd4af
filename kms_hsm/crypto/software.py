"""Software AES-GCM (``cryptography``) and the in-memory cache of unwrapped material.

Software versions (AES_128/192/256) keep their material in the database only encrypted
by the HSM root key. It is decrypted on first use and kept here, in process memory only,
for a bounded time; it is never logged, pickled or written anywhere in the clear.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kms_hsm import metrics
from kms_hsm.errors import DecryptionFailed, InvalidArgument

NONCE_BYTES = 12


class SoftwareKey:
    """One AES key in process memory; its repr never shows the material."""

    __slots__ = ("_aead",)

    def __init__(self, material: bytes) -> None:
        if len(material) not in (16, 24, 32):
            raise InvalidArgument("key material must be 16, 24 or 32 bytes")
        self._aead = AESGCM(material)

    def __repr__(self) -> str:
        return "SoftwareKey(<redacted>)"

    def __reduce__(self) -> str:
        raise TypeError("software keys cannot be pickled")

    def encrypt(self, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
        """AES-GCM seal: ciphertext || 16-byte tag."""
        if len(nonce) != NONCE_BYTES:
            raise InvalidArgument("nonce must be 12 bytes")
        return self._aead.encrypt(nonce, plaintext, aad)

    def decrypt(self, nonce: bytes, sealed: bytes, aad: bytes) -> bytes:
        """AES-GCM open; any failure is the one ``DecryptionFailed``."""
        if len(nonce) != NONCE_BYTES:
            raise DecryptionFailed(log_detail="nonce must be 12 bytes")
        try:
            return self._aead.decrypt(nonce, sealed, aad)
        except InvalidTag:
            raise DecryptionFailed(log_detail="software AES-GCM tag mismatch") from None


class MaterialCache:
    """A bounded LRU of ``SoftwareKey`` objects with a time-to-live, thread-safe."""

    def __init__(
        self,
        max_entries: int,
        ttl_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._max = max_entries
        self._ttl = ttl_seconds
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, SoftwareKey]] = OrderedDict()
        self._lock = threading.Lock()

    def lookup(self, version_id: str) -> SoftwareKey | None:
        """The cached, fresh key for ``version_id``, or None (using it needs an unwrap)."""
        now = self._clock()
        with self._lock:
            hit = self._entries.get(version_id)
            if hit is not None and hit[0] > now:
                self._entries.move_to_end(version_id)
                metrics.material_cache(hit=True)
                return hit[1]
        metrics.material_cache(hit=False)
        return None

    def put(self, version_id: str, material: bytes) -> SoftwareKey:
        """Cache freshly unwrapped material; the key to use."""
        key = SoftwareKey(material)
        if self._max > 0 and self._ttl > 0:
            with self._lock:
                self._entries[version_id] = (self._clock() + self._ttl, key)
                self._entries.move_to_end(version_id)
                while len(self._entries) > self._max:
                    self._entries.popitem(last=False)
        return key

    def evict(self, version_id: str) -> None:
        """Forget one version (destroyed or scheduled for destruction)."""
        with self._lock:
            self._entries.pop(version_id, None)

    def clear(self) -> None:
        """Forget everything."""
        with self._lock:
            self._entries.clear()
