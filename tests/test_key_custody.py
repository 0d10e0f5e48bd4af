"""Where key material lives: HSM versions never leave the token; software material is
stored only wrapped. Checked from the token's own attributes and the raw SQLite bytes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pkcs11 import Attribute, KeyType, Mechanism
from pkcs11 import exceptions as p11
from sqlalchemy import select

from kms_hsm.crypto.pkcs11.hsm import HsmCrypto
from kms_hsm.crypto.pkcs11.sessions import KeyHandles
from kms_hsm.crypto.token import ROOT_KEY_PREFIX
from kms_hsm.domain.model import Algorithm
from kms_hsm.service.keys import KeySpec
from kms_hsm.service.runtime import Runtime
from kms_hsm.store.tables import KeyVersionRow, RootKeyRow

CUSTODY = ("SENSITIVE", "ALWAYS_SENSITIVE", "NEVER_EXTRACTABLE", "PRIVATE", "EXTRACTABLE", "TOKEN")


def _create(runtime: Runtime, wait, algorithm: Algorithm) -> tuple[str, str]:
    op = wait(
        runtime.keys.create(
            KeySpec("b1gcustody", "c", "", {}, algorithm, None, False), created_by="test"
        )
    )
    value = op.metadata["value"]
    return value["key_id"], value["primary_version_id"]


def _assert_never_leaves(token_sessions, object_id: bytes) -> None:
    attrs = HsmCrypto(token_sessions).key_attributes(object_id, CUSTODY)
    assert attrs["SENSITIVE"] is True
    assert attrs["ALWAYS_SENSITIVE"] is True
    assert attrs["NEVER_EXTRACTABLE"] is True
    assert attrs["PRIVATE"] is True
    assert attrs["EXTRACTABLE"] is False
    assert attrs["TOKEN"] is True

    def try_to_export(pooled):
        target = pooled.key(object_id)
        with pytest.raises(p11.AttributeSensitive):
            target[Attribute.VALUE]
        wrapper = pooled.session.generate_key(
            KeyType.AES, 256, template={Attribute.TOKEN: False, Attribute.WRAP: True}
        )
        try:
            for mechanism in (Mechanism.AES_KEY_WRAP, Mechanism.AES_KEY_WRAP_PAD):
                with pytest.raises(p11.PKCS11Error):
                    wrapper.wrap_key(target, mechanism=mechanism)
        finally:
            wrapper.destroy()

    token_sessions.run(try_to_export)


def test_every_hsm_version_is_a_never_extractable_token_object(
    runtime: Runtime, wait, token_sessions
) -> None:
    for _ in range(3):
        _, version_id = _create(runtime, wait, Algorithm.AES_256_HSM)
        _assert_never_leaves(token_sessions, version_id.encode())


def test_the_root_key_never_leaves_the_token(runtime: Runtime, wait, token_sessions) -> None:
    with runtime.keyring._db.read() as session:
        root = session.get(RootKeyRow, "root")
    assert root is not None
    _assert_never_leaves(token_sessions, ROOT_KEY_PREFIX + root.key_id.encode())


def test_sqlite_holds_no_software_material_in_the_clear(
    runtime: Runtime, wait, token_sessions, settings
) -> None:
    materials = []
    for algorithm in (Algorithm.AES_128, Algorithm.AES_192, Algorithm.AES_256):
        key_id, version_id = _create(runtime, wait, algorithm)
        wait(runtime.crypto.encrypt(key_id, "", b"warm the cache", None))
        with runtime.keyring._db.read() as session:
            row = session.scalars(select(KeyVersionRow).where(KeyVersionRow.id == version_id)).one()
        stored = row.wrapped_material
        assert stored is not None and len(stored) == 12 + algorithm.key_bytes + 16
        # Unwrap exactly as the service does, to learn the real material.
        raw = _material_bytes(token_sessions, key_id, row)
        assert len(raw) == algorithm.key_bytes
        materials.append(raw)
    db_path = Path(settings.effective_database_url().removeprefix("sqlite:///"))
    blobs = b"".join(p.read_bytes() for p in db_path.parent.glob(db_path.name + "*"))
    assert blobs
    for raw in materials:
        assert raw not in blobs
        assert raw.hex().encode() not in blobs


def _material_bytes(token_sessions, key_id: str, row: KeyVersionRow) -> bytes:
    from kms_hsm.service.keyring import _material_aad

    blob = row.wrapped_material
    assert blob is not None and row.root_key_id is not None
    return HsmCrypto(token_sessions).decrypt(
        ROOT_KEY_PREFIX + row.root_key_id.encode(),
        blob[:12],
        blob[12:],
        _material_aad(key_id, row.id),
    )


def test_key_handles_list_once_then_find_new_keys(runtime: Runtime, wait, token_sessions) -> None:
    """The first miss lists every token key; a key made after that is found on its own,
    and a destroyed one is reported missing, not served from a stale handle."""
    _key, first = _create(runtime, wait, Algorithm.AES_256_HSM)

    def lookups(pooled):
        handles = KeyHandles()
        listed = handles.get(first.encode(), pooled.session)
        later = _create_in_token(pooled)
        found = handles.get(later, pooled.session)
        found_id = bytes(found[Attribute.ID])
        with pytest.raises(p11.NoSuchKey):
            handles.get(b"no-such-version", pooled.session)
        found.destroy()
        handles.forget(later)
        with pytest.raises(p11.NoSuchKey):
            handles.get(later, pooled.session)
        return bytes(listed[Attribute.ID]), found_id == later

    listed_id, later_found = token_sessions.run(lookups)
    assert listed_id == first.encode()
    assert later_found


def _create_in_token(pooled, object_id: bytes = b"custody-later-key") -> bytes:
    """A token key made directly, after the handles were listed."""
    pooled.session.generate_key(
        KeyType.AES, 256, id=object_id, store=True, template={Attribute.TOKEN: True}
    )
    return object_id


def test_a_version_key_cannot_be_made_weaker(runtime: Runtime, wait, token_sessions) -> None:
    """Version keys are CKA_MODIFIABLE (so that they can be copied into session memory),
    yet the token refuses every change or copy that would let the key out."""
    _, version_id = _create(runtime, wait, Algorithm.AES_256_HSM)

    def weaken(pooled):
        key = pooled.key(version_id.encode())
        for attribute, value in (
            (Attribute.EXTRACTABLE, True),
            (Attribute.SENSITIVE, False),
            (Attribute.PRIVATE, False),
        ):
            with pytest.raises(p11.PKCS11Error):
                key[attribute] = value
        for template in (
            {Attribute.TOKEN: True, Attribute.PRIVATE: False},
            {Attribute.TOKEN: False, Attribute.PRIVATE: False},
            {Attribute.TOKEN: False, Attribute.EXTRACTABLE: True},
            {Attribute.TOKEN: False, Attribute.SENSITIVE: False},
        ):
            with pytest.raises(p11.PKCS11Error):
                key.copy(template)

    token_sessions.run(weaken)
    _assert_never_leaves(token_sessions, version_id.encode())


def test_the_working_key_is_a_session_copy_that_never_leaves(
    runtime: Runtime, wait, token_sessions
) -> None:
    _, version_id = _create(runtime, wait, Algorithm.AES_256_HSM)
    object_id = version_id.encode()
    hsm = HsmCrypto(token_sessions)
    sealed = hsm.encrypt(object_id, bytes(12), b"same key", b"aad")

    def inspect(pooled):
        working = pooled.working_key(object_id)
        token_key = pooled.key(object_id)
        attrs = {a: working[Attribute[a]] for a in CUSTODY}
        with pytest.raises(p11.AttributeSensitive):
            working[Attribute.VALUE]
        wrapper = pooled.session.generate_key(
            KeyType.AES, 256, template={Attribute.TOKEN: False, Attribute.WRAP: True}
        )
        try:
            with pytest.raises(p11.PKCS11Error):
                wrapper.wrap_key(working, mechanism=Mechanism.AES_KEY_WRAP_PAD)
        finally:
            wrapper.destroy()
        return attrs, working.handle != token_key.handle

    attrs, distinct = token_sessions.run(inspect)
    assert distinct
    assert attrs["TOKEN"] is False
    assert attrs["SENSITIVE"] is True
    assert attrs["NEVER_EXTRACTABLE"] is True
    assert attrs["EXTRACTABLE"] is False
    assert attrs["PRIVATE"] is True
    # The copy and the token key are the same key.
    assert hsm.decrypt(object_id, bytes(12), sealed, b"aad") == b"same key"


def test_a_copy_goes_when_its_token_key_is_destroyed(
    runtime: Runtime, wait, token_sessions, token_dir: Path
) -> None:
    """Another process destroying the version is seen at the next recheck, and the copy
    is destroyed with the cache entry."""
    object_id = token_sessions.run(lambda pooled: _create_in_token(pooled, b"custody-copied"))
    handles = KeyHandles(recheck=0.0)

    def copy_it(pooled):
        copy = handles.working(object_id, pooled.session)
        assert copy[Attribute.TOKEN] is False
        return copy

    copy = token_sessions.run(copy_it)
    done = subprocess.run(
        [sys.executable, "-m", "tests.token_tool", str(token_dir), "destroy", object_id.decode()],
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip() == "destroyed"

    def after(pooled):
        with pytest.raises(p11.ObjectHandleInvalid):
            handles.working(object_id, pooled.session)
        handles.forget(object_id)
        with pytest.raises(p11.PKCS11Error):
            copy[Attribute.TOKEN]
        with pytest.raises(p11.NoSuchKey):
            handles.working(object_id, pooled.session)

    token_sessions.run(after)


def test_a_key_the_token_will_not_copy_is_used_as_it_is(
    runtime: Runtime, wait, token_sessions
) -> None:
    """Version keys made before copies were used are CKA_MODIFIABLE=False: SoftHSM2 will
    not copy them, and they keep working from the token."""
    object_id = b"custody-unmodifiable-key"

    def create(pooled):
        pooled.session.generate_key(
            KeyType.AES,
            256,
            id=object_id,
            store=True,
            template={
                Attribute.TOKEN: True,
                Attribute.SENSITIVE: True,
                Attribute.EXTRACTABLE: False,
                Attribute.MODIFIABLE: False,
                Attribute.ENCRYPT: True,
                Attribute.DECRYPT: True,
            },
        )
        return pooled.working_key(object_id)[Attribute.TOKEN]

    hsm = HsmCrypto(token_sessions)
    try:
        assert token_sessions.run(create) is True
        sealed = hsm.encrypt(object_id, bytes(12), b"from the token", b"")
        assert hsm.decrypt(object_id, bytes(12), sealed, b"") == b"from the token"
    finally:
        hsm.destroy_key(object_id)
