"""The one-call C_WrapKey and C_GetAttributeValue give what python-pkcs11's pairs give,
and fall back to python-pkcs11 (and its exceptions) on any other answer. Real token."""

from __future__ import annotations

import pytest
from pkcs11 import Attribute, KeyType, Mechanism
from pkcs11 import exceptions as p11

READABLE = {
    Attribute.TOKEN: False,
    Attribute.SENSITIVE: False,
    Attribute.EXTRACTABLE: True,
}


def test_one_call_wrap_and_value_match_python_pkcs11(token_sessions) -> None:
    def compare(pooled):
        kek = pooled.session.generate_key(
            KeyType.AES, 256, template={Attribute.TOKEN: False, Attribute.WRAP: True}
        )
        try:
            for key_bytes in (16, 24, 32):
                data_key = pooled.session.generate_key(
                    KeyType.AES, key_bytes * 8, template=READABLE
                )
                try:
                    # KWP is deterministic: both ways give the same bytes.
                    assert pooled.direct.wrap_kwp(kek, data_key, key_bytes) == bytes(
                        kek.wrap_key(data_key, mechanism=Mechanism.AES_KEY_WRAP_PAD)
                    )
                    value = pooled.direct.key_value(data_key, key_bytes)
                    assert value == bytes(data_key[Attribute.VALUE])
                    assert len(value) == key_bytes
                    # A wrong expected length falls back to python-pkcs11's answer.
                    assert pooled.direct.key_value(data_key, key_bytes + 8) == value
                    assert pooled.direct.key_value(data_key, key_bytes - 8) == value
                finally:
                    data_key.destroy()
        finally:
            kek.destroy()

    token_sessions.run(compare)


def test_refusals_raise_python_pkcs11_exceptions(token_sessions) -> None:
    def refuse(pooled):
        kek = pooled.session.generate_key(
            KeyType.AES, 256, template={Attribute.TOKEN: False, Attribute.WRAP: True}
        )
        secret = pooled.session.generate_key(
            KeyType.AES,
            256,
            template={
                Attribute.TOKEN: False,
                Attribute.SENSITIVE: True,
                Attribute.EXTRACTABLE: False,
            },
        )
        try:
            with pytest.raises(p11.KeyUnextractable):
                pooled.direct.wrap_kwp(kek, secret, 32)
            with pytest.raises(p11.AttributeSensitive):
                pooled.direct.key_value(secret, 32)
        finally:
            kek.destroy()
            secret.destroy()

    token_sessions.run(refuse)


def test_one_call_id_matches_python_pkcs11_short_and_long(token_sessions) -> None:
    def compare(pooled):
        out = []
        for object_id in (b"v", b"abj2gbqf2thej34m2l6b", bytes(range(256)) + b"longer than 256"):
            key = pooled.session.generate_key(
                KeyType.AES, 128, id=object_id, template={Attribute.TOKEN: False}
            )
            try:
                out.append((pooled.direct.object_id(key), bytes(key[Attribute.ID]), object_id))
            finally:
                key.destroy()
        return out

    for direct, python, made in token_sessions.run(compare):
        assert direct == python == made
