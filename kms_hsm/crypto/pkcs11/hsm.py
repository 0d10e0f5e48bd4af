"""Every operation the service runs inside the HSM, with explicit mechanisms only.

Token objects made here:

* one AES-256 key per ``AES_256_HSM`` version, ``CKA_ID`` = the version id: persistent,
  private, sensitive, never extractable (so ``CKA_NEVER_EXTRACTABLE``), usable for
  encrypt/decrypt (AES-GCM) and wrap/unwrap (AES-KWP) and nothing else;
* the root key (``CKA_ID`` = ``ROOT_KEY_PREFIX`` + its id), with the same attributes, that
  encrypts software key material;
* small private data objects (``CKO_DATA``, by label) such as the audit chain's
  checkpoint (``write_data``): readable only after login, i.e. with the PIN;
* one key pair per asymmetric key (``CKA_ID`` = the key id), made by C_GenerateKeyPair:
  the private key private, sensitive, never extractable, able to sign *or* decrypt and
  nothing else; the public key public, able to verify or encrypt. Signing and RSA
  decryption run in the token; for RSA-OAEP see ``decrypt_oaep`` (SoftHSM2 2.6 does
  OAEP with SHA-1 only, so the token does raw RSA and the host decodes EME-OAEP).

The AES keys (not the pairs) are used through in-memory session copies where the token
allows (``working_key``; see ``KeyHandles`` in sessions.py), which is why they are
``CKA_MODIFIABLE``.

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

import logging
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from pkcs11 import MGF, Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass
from pkcs11 import exceptions as p11
from pkcs11.mechanisms import GCMParams

from kms_hsm.crypto import oaep
from kms_hsm.crypto.pkcs11.errors import is_refusal
from kms_hsm.crypto.pkcs11.sessions import SessionManager, TokenSession
from kms_hsm.crypto.token import READABLE_ATTRIBUTES
from kms_hsm.domain.asymmetric import PairSpec
from kms_hsm.errors import DecryptionFailed, InvalidArgument, KeyMaterialMissing

log = logging.getLogger(__name__)

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


# Key pairs: exactly one capability per half, everything else explicitly off, so that a
# token default can never add UNWRAP or DERIVE to a private key.
_PRIVATE_OFF = {
    Attribute.DECRYPT: False,
    Attribute.UNWRAP: False,
    Attribute.SIGN: False,
    Attribute.SIGN_RECOVER: False,
    Attribute.DERIVE: False,
}
_PUBLIC_OFF = {
    Attribute.ENCRYPT: False,
    Attribute.WRAP: False,
    Attribute.VERIFY: False,
    Attribute.VERIFY_RECOVER: False,
}
# What each usage switches on: (private key's attribute, public key's attribute).
_USAGE = {
    "sign": (Attribute.SIGN, Attribute.VERIFY),
    "decrypt": (Attribute.DECRYPT, Attribute.ENCRYPT),
}
# DER of the named curves' OBJECT IDENTIFIERs (CKA_EC_PARAMS, RFC 5480 namedCurve).
_CURVE_PARAMS = {
    "secp256r1": bytes.fromhex("06082a8648ce3d030107"),
    "secp384r1": bytes.fromhex("06052b81040022"),
    "secp521r1": bytes.fromhex("06052b81040023"),
    "secp256k1": bytes.fromhex("06052b8104000a"),
}
_CURVES: dict[str, ec.EllipticCurve] = {
    "secp256r1": ec.SECP256R1(),
    "secp384r1": ec.SECP384R1(),
    "secp521r1": ec.SECP521R1(),
    "secp256k1": ec.SECP256K1(),
}
_CURVE_BY_PARAMS = {der: _CURVES[name] for name, der in _CURVE_PARAMS.items()}
_HASH_MECHANISM = {
    "sha256": Mechanism.SHA256,
    "sha384": Mechanism.SHA384,
    "sha512": Mechanism.SHA512,
}
_MGF = {"sha256": MGF.SHA256, "sha384": MGF.SHA384, "sha512": MGF.SHA512}
_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}
# The one log detail of every OAEP failure, whatever the cause (no padding oracle).
_OAEP_FAILED = "OAEP decryption failed"
_PROBE = b"kms-hsm oaep probe"


def _der_octet_string(value: bytes) -> bytes:
    """The content of a DER OCTET STRING (how SoftHSM2 answers CKA_EC_POINT); raw if not one."""
    if len(value) < 2 or value[0] != 0x04:
        return value
    length, offset = value[1], 2
    if length & 0x80:
        count = length & 0x7F
        length, offset = int.from_bytes(value[2 : 2 + count], "big"), 2 + count
    if offset + length != len(value):
        return value  # an uncompressed point begins with 0x04 too: not wrapped after all
    return value[offset:]


def _spki(public_key: Any) -> bytes:
    """DER SubjectPublicKeyInfo of a token public key object, built by ``cryptography``."""
    key_type = public_key[Attribute.KEY_TYPE]
    if key_type == KeyType.RSA:
        numbers = rsa.RSAPublicNumbers(
            int.from_bytes(public_key[Attribute.PUBLIC_EXPONENT], "big"),
            int.from_bytes(public_key[Attribute.MODULUS], "big"),
        )
        built: Any = numbers.public_key()
    elif key_type == KeyType.EC:
        curve = _CURVE_BY_PARAMS.get(bytes(public_key[Attribute.EC_PARAMS]))
        if curve is None:
            raise InvalidArgument("the token key's curve is not supported")
        point = _der_octet_string(bytes(public_key[Attribute.EC_POINT]))
        built = ec.EllipticCurvePublicKey.from_encoded_point(curve, point)
    else:
        raise InvalidArgument("the token key's type is not supported")
    der: bytes = built.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return der


def _check_spec(spec: PairSpec, usage: str) -> None:
    if spec.usage != usage:
        raise InvalidArgument(f"this key pair is not for {usage}")


def _data(label: str) -> dict[Attribute, object]:
    return {Attribute.CLASS: ObjectClass.DATA, Attribute.TOKEN: True, Attribute.LABEL: label}


_KEY_CLASSES = (ObjectClass.SECRET_KEY, ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY)


def _check_nonce(nonce: bytes) -> None:
    if len(nonce) != NONCE_BYTES:
        raise InvalidArgument("nonce must be 12 bytes")


class HsmCrypto:
    """Key generation, AES-GCM and data-key wrapping in the token."""

    def __init__(self, sessions: SessionManager) -> None:
        self._sessions = sessions
        # OAEP path per hash, decided once by a probe (see decrypt_oaep): True = in the token.
        self._oaep_in_token: dict[str, bool] = {}

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
            # One scan by id, then keep the key objects: a secret key (and its session
            # copies), or a pair's private and public key.
            found = [
                obj
                for obj in ts.session.get_objects({Attribute.ID: object_id})
                if obj[Attribute.CLASS] in _KEY_CLASSES
            ]
            if not found:
                raise p11.NoSuchKey(f"no key with CKA_ID {object_id!r}")
            for obj in found:
                obj.destroy()
            return True

        try:
            return self._sessions.run(op, writes=True)
        except KeyMaterialMissing:
            return False

    def find_key_ids(self, label_prefix: str = "") -> list[bytes]:
        """``CKA_ID`` of every token secret or private key whose label starts with the prefix."""

        def op(ts: TokenSession) -> list[bytes]:
            ids = []
            for object_class in (ObjectClass.SECRET_KEY, ObjectClass.PRIVATE_KEY):
                token_keys = {Attribute.CLASS: object_class, Attribute.TOKEN: True}
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
            try:
                key = ts.key(object_id)
            except p11.NoSuchKey:
                key = ts.private_key(object_id)  # a key pair's; NoSuchKey if neither
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

    # ----------------------------------------------------------------- key pairs

    def generate_key_pair(self, object_id: bytes, label: str, spec: PairSpec) -> bytes:
        """C_GenerateKeyPair in the token; returns the public key as DER SubjectPublicKeyInfo.

        Private key: token, private, sensitive, not extractable, one capability (sign or
        decrypt) and nothing else. Public key: token, public, verify or encrypt. Both
        carry ``CKA_ID`` = ``object_id`` and ``CKA_LABEL`` = ``label``.
        """
        private_on, public_on = _USAGE[spec.usage]
        common = {Attribute.TOKEN: True, Attribute.ID: object_id, Attribute.LABEL: label}
        private_template = {
            **common,
            **_PRIVATE_OFF,
            Attribute.CLASS: ObjectClass.PRIVATE_KEY,
            Attribute.PRIVATE: True,
            Attribute.SENSITIVE: True,
            Attribute.EXTRACTABLE: False,
            private_on: True,
        }
        public_template = {
            **common,
            **_PUBLIC_OFF,
            Attribute.CLASS: ObjectClass.PUBLIC_KEY,
            Attribute.PRIVATE: False,
            public_on: True,
        }
        if spec.key_type == "RSA":
            key_type, mechanism = KeyType.RSA, Mechanism.RSA_PKCS_KEY_PAIR_GEN
            public_template[Attribute.MODULUS_BITS] = spec.rsa_bits
            public_template[Attribute.PUBLIC_EXPONENT] = b"\x01\x00\x01"
        elif spec.key_type == "EC" and spec.curve in _CURVE_PARAMS:
            key_type, mechanism = KeyType.EC, Mechanism.EC_KEY_PAIR_GEN
            public_template[Attribute.EC_PARAMS] = _CURVE_PARAMS[spec.curve]
        else:
            raise InvalidArgument(f"unsupported key pair: {spec.key_type} {spec.curve}")

        def op(ts: TokenSession) -> bytes:
            public, private = ts.session.generate_keypair(
                key_type,
                spec.rsa_bits or None,
                mechanism=mechanism,
                public_template=public_template,
                private_template=private_template,
            )
            ts.remember_private(object_id, private)
            return _spki(public)

        return self._sessions.run(op, writes=True)

    def public_key(self, object_id: bytes) -> bytes:
        """The DER SubjectPublicKeyInfo of the token public key with ``CKA_ID``."""

        def op(ts: TokenSession) -> bytes:
            found = list(
                ts.session.get_objects(
                    {
                        Attribute.CLASS: ObjectClass.PUBLIC_KEY,
                        Attribute.TOKEN: True,
                        Attribute.ID: object_id,
                    }
                )
            )
            if not found:
                raise p11.NoSuchKey(f"no public key with CKA_ID {object_id!r}")
            return _spki(found[0])

        return self._sessions.run(op)

    def sign_digest(self, object_id: bytes, spec: PairSpec, digest: bytes) -> bytes:
        """Sign a digest in the token: RSASSA-PSS (MGF1 same hash, sLen = hLen) or ECDSA (DER)."""
        _check_spec(spec, "sign")
        if len(digest) != spec.digest_size:
            raise InvalidArgument(f"hash must be {spec.digest_size} bytes for {spec.hash}")
        if spec.key_type == "RSA":
            mechanism = Mechanism.RSA_PKCS_PSS
            param: Any = (_HASH_MECHANISM[spec.hash], _MGF[spec.hash], spec.digest_size)
        else:
            mechanism, param = Mechanism.ECDSA, None

        def op(ts: TokenSession) -> bytes:
            signature = bytes(
                ts.private_key(object_id).sign(digest, mechanism=mechanism, mechanism_param=param)
            )
            if spec.key_type == "RSA":
                return signature
            half = len(signature) // 2  # the token answers r || s, each the order's length
            r = int.from_bytes(signature[:half], "big")
            s = int.from_bytes(signature[half:], "big")
            return encode_dss_signature(r, s)

        return self._sessions.run(op)

    def decrypt_oaep(self, object_id: bytes, spec: PairSpec, ciphertext: bytes) -> bytes:
        """RSA-OAEP (``spec.hash`` for label hash and MGF1, empty label) with the token's key.

        The path is decided once per process and hash by a probe of our own (never from a
        client's ciphertext, so which path answered tells a client nothing): when the
        token's mechanism list offers ``CKM_RSA_PKCS_OAEP``, a value we encrypt with the
        key's public half is decrypted by the token with OAEP; if the token refuses the
        parameters (SoftHSM2 2.6: ``CKR_ARGUMENTS_BAD`` for SHA-256), or the answer is
        wrong, this process decrypts with raw RSA (``CKM_RSA_X_509``) in the token and
        decodes EME-OAEP on the host (``kms_hsm.crypto.oaep``, constant time).

        Every failure for the ciphertext's sake, on either path, is the same
        ``DecryptionFailed`` with the same log detail. A token that is down is still
        ``BackendUnavailable``: that answer does not depend on the ciphertext.
        """
        _check_spec(spec, "decrypt")
        if spec.key_type != "RSA":
            raise InvalidArgument("OAEP needs an RSA key")
        in_token = self._oaep_in_token.get(spec.hash)
        if in_token is None:
            in_token = self._oaep_in_token[spec.hash] = self._probe_oaep(object_id, spec)
        k = spec.modulus_bytes
        if len(ciphertext) != k:
            raise DecryptionFailed(log_detail=_OAEP_FAILED)
        if in_token:
            param = (_HASH_MECHANISM[spec.hash], _MGF[spec.hash], None)

            def op(ts: TokenSession) -> bytes:
                key = ts.private_key(object_id)
                try:
                    return bytes(
                        key.decrypt(
                            ciphertext, mechanism=Mechanism.RSA_PKCS_OAEP, mechanism_param=param
                        )
                    )
                except p11.PKCS11Error as exc:
                    if is_refusal(exc):
                        raise DecryptionFailed(log_detail=_OAEP_FAILED) from None
                    raise

            return self._sessions.run(op, decrypting=True)

        def raw(ts: TokenSession) -> bytes:
            key = ts.private_key(object_id)
            try:
                # c >= n is refused by the token; the modulus is public, so that is no oracle.
                out = bytes(key.decrypt(ciphertext, mechanism=Mechanism.RSA_X_509))
            except p11.PKCS11Error as exc:
                if is_refusal(exc):
                    raise DecryptionFailed(log_detail=_OAEP_FAILED) from None
                raise
            # Raw RSA may drop leading zero bytes; the decoding needs exactly k of them.
            return out.rjust(k, b"\x00")

        try:
            em = self._sessions.run(raw, decrypting=True)
        except DecryptionFailed:
            raise DecryptionFailed(log_detail=_OAEP_FAILED) from None
        try:
            return oaep.decode(em, k, spec.hash)
        except oaep.OaepDecodingError:
            raise DecryptionFailed(log_detail=_OAEP_FAILED) from None

    def _probe_oaep(self, object_id: bytes, spec: PairSpec) -> bool:
        """True if the token does OAEP with ``spec.hash`` itself (see decrypt_oaep); logs why."""
        hash_algorithm = _HASHES[spec.hash]()
        param = (_HASH_MECHANISM[spec.hash], _MGF[spec.hash], None)

        def op(ts: TokenSession) -> tuple[bool, str]:
            if Mechanism.RSA_PKCS_OAEP not in ts.session.token.slot.get_mechanisms():
                return False, "the token does not list CKM_RSA_PKCS_OAEP"
            key = ts.private_key(object_id)
            public = rsa.RSAPublicNumbers(
                int.from_bytes(key[Attribute.PUBLIC_EXPONENT], "big"),
                int.from_bytes(key[Attribute.MODULUS], "big"),
            ).public_key()
            probe = public.encrypt(
                _PROBE,
                padding.OAEP(padding.MGF1(hash_algorithm), hash_algorithm, None),
            )
            try:
                answer = bytes(
                    key.decrypt(probe, mechanism=Mechanism.RSA_PKCS_OAEP, mechanism_param=param)
                )
            except p11.PKCS11Error as exc:
                if not is_refusal(exc):
                    raise
                return (
                    False,
                    f"the token refused CKM_RSA_PKCS_OAEP with {spec.hash} ({type(exc).__name__})",
                )
            if answer != _PROBE:
                return False, f"the token's CKM_RSA_PKCS_OAEP with {spec.hash} answered wrongly"
            return True, f"the token does CKM_RSA_PKCS_OAEP with {spec.hash}"

        in_token, why = self._sessions.run(op)
        if in_token:
            log.info("RSA-OAEP (%s) runs in the token: %s", spec.hash, why)
        else:
            log.info(
                "RSA-OAEP (%s): raw RSA (CKM_RSA_X_509) in the token, EME-OAEP decoded on the "
                "host in constant time: %s",
                spec.hash,
                why,
            )
        return in_token
