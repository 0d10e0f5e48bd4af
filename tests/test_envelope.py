"""Envelope v1: golden vectors for parse/serialize, one KAT over both backends, bit flips."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given
from hypothesis import strategies as st
from pkcs11 import Attribute, KeyType, ObjectClass

from kms_hsm.crypto.pkcs11.hsm import HsmCrypto
from kms_hsm.domain import envelope as env
from kms_hsm.domain.model import Algorithm
from kms_hsm.errors import DecryptionFailed
from kms_hsm.service.keys import KeySpec
from kms_hsm.service.runtime import Runtime

VECTORS = json.loads((Path(__file__).parent / "vectors" / "envelope_v1.json").read_text())
VALID = VECTORS["valid"]
GCM = [v for v in VALID if v["format"] == 1]


@pytest.mark.parametrize("vector", VALID, ids=lambda v: v["version_id"])
def test_parse_and_serialize_golden(vector) -> None:
    data = bytes.fromhex(vector["envelope"])
    parsed = env.Envelope.parse(data)
    assert parsed.format == vector["format"]
    assert parsed.version_id == vector["version_id"]
    assert parsed.nonce == bytes.fromhex(vector["nonce"])
    assert parsed.serialize() == data
    if parsed.format is env.EnvelopeFormat.HSM_WRAPPED_KEY:
        assert parsed.tag == bytes.fromhex(vector["tag"])
        assert parsed.wrapped_key == bytes.fromhex(vector["wrapped_key"])


@pytest.mark.parametrize("vector", GCM, ids=lambda v: v["version_id"])
def test_gcm_vectors_are_what_the_software_backend_produces(vector) -> None:
    header = env.make_header(env.EnvelopeFormat.AES_GCM, vector["version_id"])
    aad = env.authenticated_data(header, vector["key_id"], bytes.fromhex(vector["aad_context"]))
    assert aad.hex() == vector["authenticated_data"]
    nonce = bytes.fromhex(vector["nonce"])
    sealed = AESGCM(bytes.fromhex(vector["key"])).encrypt(
        nonce, bytes.fromhex(vector["plaintext"]), aad
    )
    assert header + nonce + sealed == bytes.fromhex(vector["envelope"])


@pytest.mark.parametrize("vector", GCM, ids=lambda v: v["version_id"])
def test_gcm_vectors_are_what_the_token_produces(token_sessions, vector) -> None:
    """The same KAT through C_Encrypt/C_Decrypt, with the vector key imported as a token key
    (the service looks versions up among token objects only)."""
    object_id = b"kat-" + vector["version_id"].encode()

    def load(pooled):
        pooled.session.create_object(
            {
                Attribute.CLASS: ObjectClass.SECRET_KEY,
                Attribute.KEY_TYPE: KeyType.AES,
                Attribute.TOKEN: True,
                Attribute.ID: object_id,
                Attribute.VALUE: bytes.fromhex(vector["key"]),
                Attribute.ENCRYPT: True,
                Attribute.DECRYPT: True,
            }
        )

    token_sessions.run(load)
    hsm = HsmCrypto(token_sessions)
    try:
        data = bytes.fromhex(vector["envelope"])
        parsed = env.Envelope.parse(data)
        aad = bytes.fromhex(vector["authenticated_data"])
        sealed = hsm.encrypt(object_id, parsed.nonce, bytes.fromhex(vector["plaintext"]), aad)
        assert parsed.body == sealed
        assert hsm.decrypt(object_id, parsed.nonce, sealed, aad) == bytes.fromhex(
            vector["plaintext"]
        )
    finally:
        hsm.destroy_key(object_id)


@pytest.mark.parametrize("case", VECTORS["invalid"], ids=lambda c: c["name"])
def test_invalid_envelopes_fail_uniformly(case) -> None:
    with pytest.raises(DecryptionFailed) as info:
        env.Envelope.parse(bytes.fromhex(case["envelope"]))
    assert info.value.message == DecryptionFailed.default_message


@given(
    st.sampled_from(list(env.EnvelopeFormat)),
    st.text("0123456789abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=50),
    st.binary(min_size=12, max_size=12),
    st.binary(min_size=16, max_size=200),
)
def test_parse_serialize_round_trip(fmt, version_id, nonce, rest) -> None:
    if fmt is env.EnvelopeFormat.HSM_WRAPPED_KEY:
        rest = rest[:16] + bytes(24)
    data = env.make_header(fmt, version_id) + nonce + rest
    assert env.Envelope.parse(data).serialize() == data


@given(st.binary(max_size=120))
def test_parse_never_raises_anything_but_decryption_failed(data) -> None:
    with contextlib.suppress(DecryptionFailed):
        env.Envelope.parse(data)


def test_authenticated_data_none_means_empty() -> None:
    header = env.make_header(env.EnvelopeFormat.AES_GCM, "abc")
    assert env.authenticated_data(header, "k", None) == env.authenticated_data(header, "k", b"")


@pytest.mark.parametrize("algorithm", [Algorithm.AES_256, Algorithm.AES_256_HSM])
def test_every_single_bit_flip_is_rejected(runtime: Runtime, wait, algorithm: Algorithm) -> None:
    op = wait(
        runtime.keys.create(
            KeySpec("b1gflip", "flip", "", {}, algorithm, None, False), created_by="test"
        )
    )
    key_id = op.metadata["value"]["key_id"]
    ciphertexts = [wait(runtime.crypto.encrypt(key_id, "", b"sixteen byte msg", b"ctx")).ciphertext]
    ciphertexts.append(
        wait(
            runtime.crypto.generate_data_key(
                key_id, "", b"ctx", Algorithm.AES_256_HSM, skip_plaintext=True
            )
        ).ciphertext
    )
    for ciphertext in ciphertexts:
        assert wait(runtime.crypto.decrypt(key_id, ciphertext, b"ctx")).plaintext
        for bit in range(len(ciphertext) * 8):
            flipped = bytearray(ciphertext)
            flipped[bit // 8] ^= 1 << (bit % 8)
            with pytest.raises(DecryptionFailed):
                wait(runtime.crypto.decrypt(key_id, bytes(flipped), b"ctx"))
