"""The token boundary: everything the service asks of an HSM, as awaitable calls.

This is the one place where kms-hsm leaves the process for the token. In a serving worker
the implementation is the HSM agent's client (``kms_hsm.crypto.agent.AgentToken``): each
call is a message to a child process that alone loads the PKCS#11 module, and each has the
deadline ``KMS_HSM_CALL_TIMEOUT``, after which it fails with ``BackendUnavailable`` (503,
gRPC 14) and the agent, stuck in the token, is replaced. Nothing here may be called inside
a database write transaction: make material first, then commit.

The contract every implementation keeps (the HSM's side, pinned by the tests against a real
SoftHSM2 token):

* Object ids are ``CKA_ID`` values. Version keys and the root key are AES-256, persistent,
  private, sensitive and never extractable: their value never crosses this boundary.
* AES-GCM takes a 12-byte nonce chosen by the caller and a 128-bit tag; ``decrypt`` and
  ``unwrap_data_key`` fail with ``DecryptionFailed`` for every authentication failure, one
  answer whatever went wrong.
* A key id the token does not hold fails with ``KeyMaterialMissing``; a token that is gone,
  hung or refusing fails with ``BackendUnavailable``; a bad argument with ``InvalidArgument``.
"""

from __future__ import annotations

from typing import Protocol

# CKA_ID of the root key: this prefix, then its id.
ROOT_KEY_PREFIX = b"kms-hsm:root:"

# Attribute names a caller may read with ``key_attributes`` (PKCS#11 ``CKA_*`` without the
# prefix): flags and identity, never the value.
READABLE_ATTRIBUTES = frozenset(
    {
        "TOKEN",
        "PRIVATE",
        "SENSITIVE",
        "ALWAYS_SENSITIVE",
        "EXTRACTABLE",
        "NEVER_EXTRACTABLE",
        "MODIFIABLE",
        "ENCRYPT",
        "DECRYPT",
        "WRAP",
        "UNWRAP",
        "SIGN",
        "VERIFY",
        "DERIVE",
        "ID",
        "LABEL",
        "VALUE_LEN",
    }
)


class Token(Protocol):
    """An HSM as the service uses it."""

    async def generate_key(self, object_id: bytes, label: str | None = None) -> None:
        """Create a persistent, sensitive, never-extractable AES-256 key with ``CKA_ID``."""

    async def destroy_key(self, object_id: bytes) -> bool:
        """Destroy every secret key with ``CKA_ID``; False when there was none."""

    async def find_key_ids(self, label_prefix: str = "") -> list[bytes]:
        """The ``CKA_ID`` of every token secret key whose label starts with the prefix."""

    async def key_attributes(
        self, object_id: bytes, names: tuple[str, ...] = ()
    ) -> dict[str, object]:
        """Non-secret attributes of a key (``READABLE_ATTRIBUTES``); KeyMaterialMissing if none."""

    async def encrypt(self, object_id: bytes, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
        """AES-GCM under the token key: ciphertext || 16-byte tag."""

    async def decrypt(self, object_id: bytes, nonce: bytes, sealed: bytes, aad: bytes) -> bytes:
        """Open ciphertext || tag; any authentication failure is ``DecryptionFailed``."""

    async def generate_wrapped_data_key(
        self, object_id: bytes, key_bytes: int, nonce: bytes, aad: bytes, *, want_plaintext: bool
    ) -> tuple[bytes, bytes, bytes]:
        """A data key born in the token, wrapped (KWP) and bound to ``aad`` by a GCM tag.

        Returns (plaintext data key or b"" when not wanted, binding tag, wrapped key).
        """

    async def unwrap_data_key(
        self, object_id: bytes, nonce: bytes, tag: bytes, wrapped: bytes, aad: bytes
    ) -> bytes:
        """Verify the binding tag in the token, then unwrap; the data key's value."""

    async def random(self, n: int) -> bytes:
        """``n`` bytes from the token's RNG."""

    async def read_data(self, label: str) -> list[bytes]:
        """The values of the private token data objects labelled ``label`` (PIN needed)."""

    async def write_data(self, label: str, value: bytes) -> None:
        """Replace the private token data object labelled ``label`` with ``value``."""
