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
* Key pairs (asymmetric keys): a private key and a public key object sharing ``CKA_ID``.
  The private key is made by ``C_GenerateKeyPair`` in the token (so ``CKA_LOCAL``) and is
  persistent, private, sensitive, never extractable, with exactly one capability (sign, or
  decrypt); every private-key operation runs in the token. The public half may be read
  and cached anywhere.
* A key id the token does not hold fails with ``KeyMaterialMissing``; a token that is gone,
  hung or refusing fails with ``BackendUnavailable``; a bad argument with ``InvalidArgument``.
"""

from __future__ import annotations

from typing import Protocol

from kms_hsm.domain.asymmetric import PairSpec

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
        "COPYABLE",
        "SIGN_RECOVER",
        "ENCRYPT",
        "DECRYPT",
        "WRAP",
        "UNWRAP",
        "SIGN",
        "VERIFY",
        "DERIVE",
        "LOCAL",
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
        """Destroy every key object (secret, private, public) with ``CKA_ID``; False if none."""

    async def find_key_ids(self, label_prefix: str = "") -> list[bytes]:
        """``CKA_ID`` of every token key object (secret, private, public) with the label prefix."""

    async def key_attributes(
        self, object_id: bytes, names: tuple[str, ...] = ()
    ) -> dict[str, object]:
        """Non-secret attributes of the secret or private key with ``CKA_ID``.

        Names from ``READABLE_ATTRIBUTES``; KeyMaterialMissing when the token has neither.
        """

    async def generate_key_pair(self, object_id: bytes, label: str, spec: PairSpec) -> bytes:
        """Make a key pair in the token (see the contract above); its public key, DER SPKI.

        Slow on purpose-built hardware and software tokens alike (RSA-4096: seconds on
        SoftHSM2): the agent client runs it with the key-generation deadline
        ``KMS_HSM_KEYGEN_TIMEOUT``, apart from the calls of the data plane.
        """

    async def public_key(self, object_id: bytes) -> bytes:
        """The SubjectPublicKeyInfo (DER) of the public key with ``CKA_ID``, read from the token."""

    async def sign_digest(self, object_id: bytes, spec: PairSpec, digest: bytes) -> bytes:
        """Sign a digest of ``spec.hash`` with the private key, in the token.

        RSA: RSASSA-PSS, MGF1 with the same hash, salt length = digest length. EC: ECDSA,
        returned DER-encoded (X9.62 / RFC 3279) although the token answers r || s.
        A digest of the wrong length is ``InvalidArgument``.
        """

    async def decrypt_oaep(self, object_id: bytes, spec: PairSpec, ciphertext: bytes) -> bytes:
        """RSA-OAEP (label and MGF1 hash ``spec.hash``, empty label) with the private key.

        In the token with ``CKM_RSA_PKCS_OAEP`` when the token does OAEP with this hash;
        otherwise raw RSA (``CKM_RSA_X_509``) in the token and EME-OAEP decoded on the host
        in constant time. Every failure, whatever its cause, is the one ``DecryptionFailed``.
        """

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
