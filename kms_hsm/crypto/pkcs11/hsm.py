"""Every operation the service runs inside the HSM, with explicit mechanisms only.

Token objects made here:

* one AES-256 key per ``AES_256_HSM`` version, ``CKA_ID`` = the version id: persistent,
  private, sensitive, never extractable (so ``CKA_NEVER_EXTRACTABLE``), usable for
  encrypt/decrypt (AES-GCM) and wrap/unwrap (AES-KWP) and nothing else;
* the root key (``CKA_ID`` = ``ROOT_KEY_PREFIX`` + its id), with the same attributes, that
  encrypts software key material;
* small private data objects (``CKO_DATA``, by label) such as the audit chain's
  checkpoint (``write_data``): readable only after login, i.e. with the PIN.

Both are used through in-memory session copies where the token allows (``working_key``;
see ``KeyHandles`` in sessions.py), which is why they are ``CKA_MODIFIABLE``.

Data keys with spec ``AES_256_HSM`` on an HSM version are born by ``C_GenerateKey`` as
session objects and wrapped by ``C_WrapKey`` (CKM_AES_KEY_WRAP_PAD) under the version key.
SoftHSM2 offers no wrap mechanism that takes AAD (softhsm-facts.md Q4), so the aadContext
is bound by a second in-token call: an AES-GCM tag over ``aad || wrapped key`` under the
same version key (GMAC: GCM with an empty plaintext). Why this over the alternatives
measured in softhsm-facts.md:

* ``C_DeriveKey`` of a per-context KEK needs ``CKA_DERIVE`` on the version key, and SoftHSM2
  lets a PIN holder derive *non-sensitive* keys from it (an AES-ECB oracle on the version
  key); it is also the slowest path (~1.4k ops/s raw).
* KWP + AES-CMAC needs a second token object per version (twice the objects).
* KWP's own integrity check is 64 bits; the GCM tag gives 128 bits and covers the header,
  key id and context as well. Unwrapping happens only after the tag verifies.
"""

from __future__ import annotations

from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass
from pkcs11 import exceptions as p11
from pkcs11.mechanisms import GCMParams

from kms_hsm.crypto.pkcs11.sessions import SessionManager, TokenSession
from kms_hsm.crypto.token import READABLE_ATTRIBUTES
from kms_hsm.errors import InvalidArgument, KeyMaterialMissing

NONCE_BYTES = 12

_KEY_CAPABILITIES = (
    MechanismFlag.ENCRYPT | MechanismFlag.DECRYPT | MechanismFlag.WRAP | MechanismFlag.UNWRAP
)
_TOKEN_KEY_TEMPLATE = {
    Attribute.TOKEN: True,
    Attribute.PRIVATE: True,
    Attribute.SENSITIVE: True,
    Attribute.EXTRACTABLE: False,
    # Modifiable so that the token will make in-memory session copies of it (see
    # KeyHandles in sessions.py: twice as fast on SoftHSM2); a PIN holder still cannot
    # make it extractable, non-sensitive or public (the token refuses, tested).
    Attribute.MODIFIABLE: True,
    Attribute.SIGN: False,
    Attribute.VERIFY: False,
    Attribute.DERIVE: False,
}
# Data keys must leave the token (the caller gets the plaintext), so they are readable
# session objects that live only between C_GenerateKey/C_UnwrapKey and C_DestroyObject.
_DATA_KEY_TEMPLATE = {
    Attribute.TOKEN: False,
    Attribute.PRIVATE: True,
    Attribute.SENSITIVE: False,
    Attribute.EXTRACTABLE: True,
    Attribute.ENCRYPT: False,
    Attribute.DECRYPT: False,
    Attribute.WRAP: False,
    Attribute.UNWRAP: False,
    Attribute.SIGN: False,
    Attribute.VERIFY: False,
    Attribute.DERIVE: False,
}


def _data(label: str) -> dict[Attribute, object]:
    return {Attribute.CLASS: ObjectClass.DATA, Attribute.TOKEN: True, Attribute.LABEL: label}


def _check_nonce(nonce: bytes) -> None:
    if len(nonce) != NONCE_BYTES:
        raise InvalidArgument("nonce must be 12 bytes")


class HsmCrypto:
    """Key generation, AES-GCM and data-key wrapping in the token."""

    def __init__(self, sessions: SessionManager) -> None:
        self._sessions = sessions

    def generate_key(self, object_id: bytes, label: str | None = None) -> None:
        """Create a persistent, sensitive, never-extractable AES-256 key with ``CKA_ID``."""

        def op(ts: TokenSession) -> None:
            key = ts.session.generate_key(
                KeyType.AES,
                256,
                id=object_id,
                label=label or object_id.decode("ascii", "replace"),
                store=True,
                capabilities=_KEY_CAPABILITIES,
                template=_TOKEN_KEY_TEMPLATE,
            )
            # Its first use then needs no find, a scan of every object in the token.
            ts.remember(object_id, key)

        self._sessions.run(op, writes=True)

    def destroy_key(self, object_id: bytes) -> bool:
        """Destroy every token object with ``CKA_ID``; False when there was none.

        None found counts as a missing key, so that the session manager looks again with
        a fresh view of the store first (another process may have made the key).
        """

        def op(ts: TokenSession) -> bool:
            ts.forget(object_id)
            found = list(
                ts.session.get_objects(
                    {Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.ID: object_id}
                )
            )
            if not found:
                raise p11.NoSuchKey(f"no secret key with CKA_ID {object_id!r}")
            for obj in found:
                obj.destroy()
            return True

        try:
            return self._sessions.run(op, writes=True)
        except KeyMaterialMissing:
            return False

    def find_key_ids(self, label_prefix: str = "") -> list[bytes]:
        """The ``CKA_ID`` of every secret key whose ``CKA_LABEL`` starts with ``label_prefix``."""

        def op(ts: TokenSession) -> list[bytes]:
            ids = []
            token_keys = {Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.TOKEN: True}
            for obj in ts.session.get_objects(token_keys):
                if str(obj[Attribute.LABEL]).startswith(label_prefix):
                    ids.append(bytes(obj[Attribute.ID]))
            return ids

        return self._sessions.run(op)

    def key_attributes(self, object_id: bytes, names: tuple[str, ...] = ()) -> dict[str, object]:
        """Non-secret attributes of a token key by name (``READABLE_ATTRIBUTES``)."""
        unknown = set(names) - READABLE_ATTRIBUTES
        if unknown:
            raise InvalidArgument(f"attributes not readable: {sorted(unknown)}")

        def op(ts: TokenSession) -> dict[str, object]:
            key = ts.key(object_id)
            return {name: key[Attribute[name]] for name in names}

        return self._sessions.run(op)

    def encrypt(self, object_id: bytes, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
        """AES-GCM under the token key: returns ciphertext || 16-byte tag."""
        _check_nonce(nonce)
        params = GCMParams(nonce, aad, 128)

        def op(ts: TokenSession) -> bytes:
            out: bytes = ts.working_key(object_id).encrypt(
                plaintext, mechanism=Mechanism.AES_GCM, mechanism_param=params
            )
            return out

        return self._sessions.run(op)

    def decrypt(self, object_id: bytes, nonce: bytes, sealed: bytes, aad: bytes) -> bytes:
        """Open ciphertext || tag; any authentication failure is ``DecryptionFailed``."""
        _check_nonce(nonce)
        params = GCMParams(nonce, aad, 128)

        def op(ts: TokenSession) -> bytes:
            out: bytes = ts.working_key(object_id).decrypt(
                sealed, mechanism=Mechanism.AES_GCM, mechanism_param=params
            )
            return out

        return self._sessions.run(op, decrypting=True)

    def generate_wrapped_data_key(
        self, object_id: bytes, key_bytes: int, nonce: bytes, aad: bytes, *, want_plaintext: bool
    ) -> tuple[bytes, bytes, bytes]:
        """Born-in-token data key, wrapped and bound to ``aad`` (see the module docstring).

        Returns:
            (plaintext data key or b"" when not wanted, binding tag, wrapped key).
        """
        _check_nonce(nonce)
        if key_bytes not in (16, 24, 32):
            raise InvalidArgument("data key length must be 16, 24 or 32 bytes")

        def op(ts: TokenSession) -> tuple[bytes, bytes, bytes]:
            version_key = ts.working_key(object_id)
            data_key = ts.session.generate_key(
                KeyType.AES, key_bytes * 8, template=_DATA_KEY_TEMPLATE
            )
            try:
                wrapped = ts.direct.wrap_kwp(version_key, data_key, key_bytes)
                plaintext = ts.direct.key_value(data_key, key_bytes) if want_plaintext else b""
            finally:
                data_key.destroy()
            tag = version_key.encrypt(
                b"",
                mechanism=Mechanism.AES_GCM,
                mechanism_param=GCMParams(nonce, aad + wrapped, 128),
            )
            return plaintext, bytes(tag), bytes(wrapped)

        return self._sessions.run(op)

    def unwrap_data_key(
        self, object_id: bytes, nonce: bytes, tag: bytes, wrapped: bytes, aad: bytes
    ) -> bytes:
        """Verify the binding tag in the token, then unwrap and return the data key."""
        _check_nonce(nonce)

        def op(ts: TokenSession) -> bytes:
            version_key = ts.working_key(object_id)
            version_key.decrypt(
                tag,
                mechanism=Mechanism.AES_GCM,
                mechanism_param=GCMParams(nonce, aad + wrapped, 128),
            )
            data_key = version_key.unwrap_key(
                ObjectClass.SECRET_KEY,
                KeyType.AES,
                wrapped,
                mechanism=Mechanism.AES_KEY_WRAP_PAD,
                template=_DATA_KEY_TEMPLATE,
            )
            try:
                # KWP adds 8 bytes to keys of whole 8-byte blocks (ours: 16, 24, 32).
                return ts.direct.key_value(data_key, len(wrapped) - 8)
            finally:
                data_key.destroy()

        return self._sessions.run(op, decrypting=True)

    def read_data(self, label: str) -> list[bytes]:
        """The values of every private token data object labelled ``label``."""

        def op(ts: TokenSession) -> list[bytes]:
            return [bytes(obj[Attribute.VALUE]) for obj in ts.session.get_objects(_data(label))]

        return self._sessions.run(op)

    def write_data(self, label: str, value: bytes) -> None:
        """Make ``value`` the one private token data object labelled ``label``.

        A new object each time: SoftHSM2 refuses ``C_SetAttributeValue`` on a data
        object's ``CKA_VALUE`` (``CKR_ATTRIBUTE_READ_ONLY``, tried). It is made before the
        old ones go, so that a crash in between leaves two (readers check them all) rather
        than none. Measured on SoftHSM2: 4.5 ms a write, 0.13 ms a read.
        """

        def op(ts: TokenSession) -> None:
            old = list(ts.session.get_objects(_data(label)))
            ts.session.create_object(
                {
                    **_data(label),
                    Attribute.PRIVATE: True,
                    Attribute.MODIFIABLE: True,
                    Attribute.APPLICATION: "kms-hsm",
                    Attribute.VALUE: value,
                }
            )
            for obj in old:
                obj.destroy()

        self._sessions.run(op, writes=True)

    def random(self, n: int) -> bytes:
        """``n`` bytes from the token's RNG (C_GenerateRandom)."""

        def op(ts: TokenSession) -> bytes:
            return bytes(ts.session.generate_random(n * 8))

        return self._sessions.run(op)
