"""KeyPairService on a real SoftHSM2 token: both asymmetric families' lifecycle, family
isolation from the symmetric paths (and between the two families), crash safety through the
orphan sweep, and migration 0009.

Service level: the session runtime's services are called directly, or through
``pipeline.run`` where a handler decides (the transports are tested in their own files). Only
small keys are made here (RSA-2048, P-256): every algorithm is the token tests' business.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from sqlalchemy import update

from kms_hsm.crypto.agent import AgentToken
from kms_hsm.domain.asymmetric import (
    AsymmetricKeyStatus,
    EncryptionAlgorithm,
    KeyFamily,
    SignatureAlgorithm,
)
from kms_hsm.domain.model import Algorithm
from kms_hsm.domain.records import key_pair_from_record
from kms_hsm.errors import (
    BackendUnavailable,
    DecryptionFailed,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from kms_hsm.service import asymmetric_handlers as ah
from kms_hsm.service import handlers, methods, pipeline
from kms_hsm.service.access import Binding, Resource
from kms_hsm.service.context import CallContext
from kms_hsm.service.key_pairs import KeyPairSpec, KeyPairUpdate
from kms_hsm.service.keys import KeySpec, KeyUpdate
from kms_hsm.service.runtime import Runtime
from kms_hsm.service.scheduler import Scheduler
from kms_hsm.store import repository
from kms_hsm.store.engine import MIGRATIONS_DIR, Database, make_engine, upgrade_schema
from kms_hsm.store.tables import Base, KeyRow

SIG = KeyFamily.ASYMMETRIC_SIGNATURE
ENC = KeyFamily.ASYMMETRIC_ENCRYPTION
P256 = SignatureAlgorithm.ECDSA_NIST_P256_SHA_256
RSA_PSS = SignatureAlgorithm.RSA_2048_SIGN_PSS_SHA_256
OAEP = EncryptionAlgorithm.RSA_2048_ENC_OAEP_SHA_256
CALLER = CallContext("aje-test-caller", "", "req-1", "127.0.0.1", "rest")
SHA256 = hashes.SHA256()
PSS = padding.PSS(mgf=padding.MGF1(SHA256), salt_length=32)
OAEP_PAD = padding.OAEP(mgf=padding.MGF1(SHA256), algorithm=SHA256, label=None)


def _folder() -> str:
    return f"b1gkp{secrets.token_hex(6)}"


def _create(runtime: Runtime, wait, family: KeyFamily, algorithm: int, folder: str, **fields):
    spec = KeyPairSpec(folder_id=folder, algorithm=int(algorithm), **fields)
    return wait(runtime.key_pairs.create(family, spec, CALLER))


def _symmetric(runtime: Runtime, wait, folder: str) -> str:
    spec = KeySpec(folder, "sym", "", {}, Algorithm.AES_256_HSM, None, False)
    return str(wait(runtime.keys.create(spec, CALLER)).key_id)


def _public(runtime: Runtime, family: KeyFamily, key_id: str) -> Any:
    return serialization.load_pem_public_key(
        runtime.key_pairs.public_key_pem(family, key_id).encode()
    )


def _events(runtime: Runtime, key_id: str) -> list[Any]:
    return [c.event for c in runtime.audit.events() if c.event.key_id == key_id]


@pytest.fixture(scope="module")
def token(runtime: Runtime) -> AgentToken:
    """The runtime's own Token (its HSM agent), to look at what the service left there."""
    return AgentToken(runtime.agents)


def _in_token(runtime: Runtime, token: AgentToken, wait, key_id: str) -> bool:
    prefix = runtime.keyring.object_label("")
    return key_id.encode() in wait(token.find_key_ids(prefix))


@pytest.fixture(scope="module")
def ecdsa_key(runtime: Runtime, wait) -> str:
    """An ECDSA P-256 signature key."""
    return str(_create(runtime, wait, SIG, P256, _folder(), name="ecdsa").key_id)


@pytest.fixture(scope="module")
def pss_key(runtime: Runtime, wait) -> str:
    """An RSA-2048 PSS SHA-256 signature key."""
    return str(_create(runtime, wait, SIG, RSA_PSS, _folder(), name="pss").key_id)


@pytest.fixture(scope="module")
def oaep_key(runtime: Runtime, wait) -> str:
    """An RSA-2048 OAEP SHA-256 encryption key."""
    return str(_create(runtime, wait, ENC, OAEP, _folder(), name="oaep").key_id)


@pytest.fixture(scope="module")
def symmetric_key(runtime: Runtime, wait) -> str:
    """A symmetric key, to be NotFound on the asymmetric paths."""
    return _symmetric(runtime, wait, _folder())


# ---------------------------------------------------------------- create / get / list


@pytest.mark.parametrize(
    ("family", "algorithm", "kind"),
    [(SIG, P256, "signature"), (ENC, OAEP, "encryption")],
    ids=["signature", "encryption"],
)
def test_create_commits_the_key_and_a_done_operation(
    runtime, wait, token, family, algorithm, kind
) -> None:
    op = _create(
        runtime, wait, family, algorithm, _folder(), name="k1", description="d", labels={"e": "t"}
    )
    package = f"yandex.cloud.kms.v1.asymmetric{kind}."
    service = f"Asymmetric{kind.capitalize()}Key"
    assert op.done and op.description == f"Create asymmetric {kind} key"
    assert op.metadata == {
        "type": f"{package}Create{service}Metadata",
        "value": {"key_id": op.key_id},
    }
    assert op.response is not None and op.response["type"] == package + service
    from_op = key_pair_from_record(op.response["value"])
    key = runtime.key_pairs.get(family, op.key_id)
    assert key.id == from_op.id == op.key_id
    assert (key.family, key.algorithm) == (family, algorithm)
    assert key.status is from_op.status is AsymmetricKeyStatus.ACTIVE
    assert (key.name, key.description, key.labels) == ("k1", "d", {"e": "t"})
    assert from_op.algorithm == algorithm
    # The stored public key is the one read from the token, of the algorithm's type.
    public = serialization.load_der_public_key(key.public_key_der)
    assert isinstance(public, ec.EllipticCurvePublicKey if family is SIG else rsa.RSAPublicKey)
    assert _public(runtime, family, op.key_id).public_numbers() == public.public_numbers()
    # The pair is a token object of this deployment (the orphan sweep's label prefix).
    assert _in_token(runtime, token, wait, op.key_id)
    # Committed with its audit event, named by the caller's method.
    assert [(e.method, e.principal_id, e.transport) for e in _events(runtime, op.key_id)] == [
        (f"{service}.Create", CALLER.principal_id, "rest")
    ]


@pytest.mark.parametrize(
    ("family", "value", "message"),
    [
        (SIG, 0, "signatureAlgorithm is required"),
        (SIG, 14, "signatureAlgorithm must be one of"),
        (ENC, 0, "encryptionAlgorithm is required"),
        (ENC, 4, "encryptionAlgorithm must be one of"),
        (ENC, -1, "encryptionAlgorithm must be one of"),
    ],
)
def test_create_refuses_an_algorithm_outside_the_family(runtime, wait, family, value, message):
    with pytest.raises(InvalidArgument, match=message):
        _create(runtime, wait, family, value, _folder())


def test_create_validates_ids_and_labels_before_making_anything(runtime, wait, token) -> None:
    before = set(wait(token.find_key_ids(runtime.keyring.object_label(""))))
    with pytest.raises(InvalidArgument, match="folderId"):
        _create(runtime, wait, SIG, P256, "bad/folder")
    with pytest.raises(InvalidArgument, match="labels key"):
        _create(runtime, wait, SIG, P256, _folder(), labels={"Bad": "x"})
    with pytest.raises(InvalidArgument, match="name"):
        _create(runtime, wait, SIG, P256, _folder(), name="n" * 101)
    assert set(wait(token.find_key_ids(runtime.keyring.object_label("")))) == before


def test_list_pages_one_family_at_a_time(runtime, wait) -> None:
    folder = _folder()
    signature = [
        str(_create(runtime, wait, SIG, P256, folder, name=f"s{i}").key_id) for i in range(3)
    ]
    encryption = str(_create(runtime, wait, ENC, OAEP, folder).key_id)
    symmetric = _symmetric(runtime, wait, folder)
    kp = runtime.key_pairs
    first = kp.list_keys(SIG, folder, 2, "")
    assert [k.id for k in first.items] == signature[:2] and first.next_page_token
    second = kp.list_keys(SIG, folder, 2, first.next_page_token)
    assert [k.id for k in second.items] == signature[2:] and second.next_page_token == ""
    assert [k.id for k in kp.list_keys(ENC, folder, 0, "").items] == [encryption]
    assert [k.id for k in runtime.keys.list_keys(folder, 0, "").items] == [symmetric]
    # A page token belongs to its own list: not another family's, not the symmetric one's.
    with pytest.raises(InvalidArgument, match="pageToken"):
        kp.list_keys(ENC, folder, 2, first.next_page_token)
    with pytest.raises(InvalidArgument, match="pageToken"):
        runtime.keys.list_keys(folder, 2, first.next_page_token)
    with pytest.raises(InvalidArgument, match="pageSize"):
        kp.list_keys(SIG, folder, 1001, "")


# ---------------------------------------------------------------- update / delete


def test_update_applies_the_mask_and_records_an_operation(runtime, wait) -> None:
    key_id = str(_create(runtime, wait, ENC, OAEP, _folder(), name="before").key_id)
    values = KeyPairUpdate(
        name="after", description="new", labels={"a": "b"}, deletion_protection=True
    )
    mask = frozenset({"name", "labels", "deletion_protection"})
    op = runtime.key_pairs.update(ENC, key_id, mask, values, CALLER)
    package = "yandex.cloud.kms.v1.asymmetricencryption."
    assert op.description == "Update asymmetric encryption key"
    assert op.metadata["type"] == package + "UpdateAsymmetricEncryptionKeyMetadata"
    assert op.response is not None
    assert op.response["type"] == package + "AsymmetricEncryptionKey"
    key = runtime.key_pairs.get(ENC, key_id)
    assert key_pair_from_record(op.response["value"]).name == key.name == "after"
    assert key.description == ""  # not in the mask
    assert key.labels == {"a": "b"} and key.deletion_protection
    assert _events(runtime, key_id)[-1].method == "AsymmetricEncryptionKey.Update"
    page = runtime.key_pairs.list_operations(ENC, key_id, 1, "")
    assert page.items[0].metadata["type"].endswith("CreateAsymmetricEncryptionKeyMetadata")
    rest = runtime.key_pairs.list_operations(ENC, key_id, 1, page.next_page_token)
    assert [o.id for o in rest.items] == [op.id] and rest.next_page_token == ""
    for bad_mask, message in [
        (frozenset(), "updateMask is required"),
        (frozenset({"rotation_period"}), "updateMask"),
    ]:
        with pytest.raises(InvalidArgument, match=message):
            runtime.key_pairs.update(ENC, key_id, bad_mask, values, CALLER)
    for status in (AsymmetricKeyStatus.CREATING, AsymmetricKeyStatus.STATUS_UNSPECIFIED):
        with pytest.raises(InvalidArgument, match="only ACTIVE or INACTIVE"):
            runtime.key_pairs.update(
                ENC, key_id, frozenset({"status"}), KeyPairUpdate(status=status), CALLER
            )


@pytest.mark.parametrize("family", [SIG, ENC], ids=["signature", "encryption"])
def test_delete_honours_protection_then_hides_the_key_and_destroys_its_pair(
    runtime, wait, token, family
) -> None:
    algorithm = P256 if family is SIG else OAEP
    key_id = str(
        _create(runtime, wait, family, algorithm, _folder(), deletion_protection=True).key_id
    )
    with pytest.raises(FailedPrecondition, match="deletionProtection"):
        wait(runtime.key_pairs.delete(family, key_id, CALLER))
    assert runtime.key_pairs.get(family, key_id).id == key_id
    off = KeyPairUpdate(deletion_protection=False)
    runtime.key_pairs.update(family, key_id, frozenset({"deletion_protection"}), off, CALLER)
    op = wait(runtime.key_pairs.delete(family, key_id, CALLER))
    assert op.description.startswith("Delete asymmetric") and op.response is not None
    assert op.metadata["type"].endswith(f"Delete{family.service}Metadata")
    assert key_pair_from_record(op.response["value"]).id == key_id
    assert _events(runtime, key_id)[-1].method == f"{family.service}.Delete"
    assert not _in_token(runtime, token, wait, key_id)
    with pytest.raises(NotFound, match=f"key {key_id} not found"):
        runtime.key_pairs.get(family, key_id)
    with pytest.raises(NotFound):
        runtime.key_pairs.public_key_pem(family, key_id)
    with pytest.raises(NotFound):
        runtime.key_pairs.list_operations(family, key_id, 0, "")
    with pytest.raises(NotFound):
        wait(runtime.key_pairs.delete(family, key_id, CALLER))
    assert key_id not in [
        k.id
        for k in runtime.key_pairs.list_keys(family, op.response["value"]["folder_id"], 0, "").items
    ]


# ---------------------------------------------------------------- data plane


def test_sign_and_sign_hash_verify_with_the_public_key(runtime, wait, ecdsa_key, pss_key) -> None:
    message = b"in-HSM signing by name"
    digest = hashlib.sha256(message).digest()
    ecdsa = _public(runtime, SIG, ecdsa_key)
    for signature in (
        wait(runtime.key_pairs.sign(ecdsa_key, message)),
        wait(runtime.key_pairs.sign_hash(ecdsa_key, digest)),
    ):
        ecdsa.verify(signature, message, ec.ECDSA(SHA256))
    pss = _public(runtime, SIG, pss_key)
    for signature in (
        wait(runtime.key_pairs.sign(pss_key, message)),
        wait(runtime.key_pairs.sign_hash(pss_key, digest)),
    ):
        pss.verify(signature, message, PSS, SHA256)


@pytest.mark.parametrize("length", [0, 31, 33, 48, 64])
def test_sign_hash_wants_exactly_the_digest_length(runtime, wait, ecdsa_key, length) -> None:
    with pytest.raises(InvalidArgument, match=r"^hash: must be 32 bytes"):
        wait(runtime.key_pairs.sign_hash(ecdsa_key, bytes(length)))


def test_oversize_inputs_are_refused(runtime, wait, ecdsa_key, oaep_key) -> None:
    with pytest.raises(InvalidArgument, match="message must be at most 32768"):
        wait(runtime.key_pairs.sign(ecdsa_key, bytes(32769)))
    with pytest.raises(InvalidArgument, match="hash must be at most 4096"):
        wait(runtime.key_pairs.sign_hash(ecdsa_key, bytes(4097)))
    with pytest.raises(InvalidArgument, match="ciphertext must be at most 32768"):
        wait(runtime.key_pairs.decrypt(oaep_key, bytes(32769)))


def test_decrypt_opens_oaep_and_fails_one_way(runtime, wait, oaep_key) -> None:
    public = _public(runtime, ENC, oaep_key)
    for plaintext in (b"x", secrets.token_bytes(190)):
        ciphertext = public.encrypt(plaintext, OAEP_PAD)
        assert wait(runtime.key_pairs.decrypt(oaep_key, ciphertext)) == plaintext
    good = public.encrypt(b"secret", OAEP_PAD)
    flipped = bytes([good[0] ^ 1]) + good[1:]
    sha1 = public.encrypt(b"secret", padding.OAEP(padding.MGF1(hashes.SHA1()), hashes.SHA1(), None))
    for bad in (flipped, good[:-1], bytes(256), sha1, public.encrypt(b"s", padding.PKCS1v15())):
        with pytest.raises(DecryptionFailed) as caught:
            wait(runtime.key_pairs.decrypt(oaep_key, bad))
        assert caught.value.message == DecryptionFailed().message


def test_inactive_keys_refuse_private_key_operations(runtime, wait) -> None:
    sig = str(_create(runtime, wait, SIG, P256, _folder()).key_id)
    enc = str(_create(runtime, wait, ENC, OAEP, _folder()).key_id)
    ciphertext = _public(runtime, ENC, enc).encrypt(b"p", OAEP_PAD)
    status = frozenset({"status"})
    for family, key_id in ((SIG, sig), (ENC, enc)):
        inactive = KeyPairUpdate(status=AsymmetricKeyStatus.INACTIVE)
        runtime.key_pairs.update(family, key_id, status, inactive, CALLER)
    calls: list[Callable[[], Awaitable[bytes]]] = [
        lambda: runtime.key_pairs.sign(sig, b"m"),
        lambda: runtime.key_pairs.sign_hash(sig, bytes(32)),
        lambda: runtime.key_pairs.decrypt(enc, ciphertext),
    ]
    for call in calls:
        with pytest.raises(FailedPrecondition, match=r"^key \w+ is INACTIVE, not ACTIVE$"):
            wait(call())
    # Public keys are served all the same; ACTIVE again works at once.
    assert _public(runtime, SIG, sig) and _public(runtime, ENC, enc)
    for family, key_id in ((SIG, sig), (ENC, enc)):
        active = KeyPairUpdate(status=AsymmetricKeyStatus.ACTIVE)
        runtime.key_pairs.update(family, key_id, status, active, CALLER)
    assert wait(runtime.key_pairs.decrypt(enc, ciphertext)) == b"p"
    _public(runtime, SIG, sig).verify(
        wait(runtime.key_pairs.sign(sig, b"m")), b"m", ec.ECDSA(SHA256)
    )


def test_data_plane_reads_cached_keys_until_a_change(runtime, wait, ecdsa_key) -> None:
    """Sign does not read the key row while the state version stands still."""
    wait(runtime.key_pairs.sign(ecdsa_key, b"warm"))
    statements: list[str] = []

    def count(conn, cursor, statement, *args) -> None:
        if "FROM keys" in statement:
            statements.append(statement)

    sa.event.listen(runtime.engine, "before_cursor_execute", count)
    try:
        for _ in range(5):
            wait(runtime.key_pairs.sign(ecdsa_key, b"cached"))
        assert statements == []
        runtime.key_pairs.update(
            SIG, ecdsa_key, frozenset({"description"}), KeyPairUpdate(description="x"), CALLER
        )
        wait(runtime.key_pairs.sign(ecdsa_key, b"reloaded"))
        assert len(statements) >= 2  # the update's lock, then the one reload
    finally:
        sa.event.remove(runtime.engine, "before_cursor_execute", count)


# ---------------------------------------------------------------- family isolation


def _run(runtime: Runtime, wait, admin_token: str, method, work) -> Any:
    """``work`` as ``method`` through the pipeline, as the admin (kms.admin everywhere)."""
    transport = pipeline.Transport(f"Bearer {admin_token}", "req-iso", "127.0.0.1")
    return wait(pipeline.run(runtime, method, transport, work))


def test_symmetric_paths_do_not_see_asymmetric_keys(
    runtime, wait, admin_token, ecdsa_key, oaep_key
) -> None:
    keys, crypto = runtime.keys, runtime.crypto
    for key_id in (ecdsa_key, oaep_key):
        calls: list[Callable[[], Any]] = [
            lambda: keys.get(key_id),
            lambda: keys.list_versions(key_id, 0, ""),
            lambda: keys.list_operations(key_id, 0, ""),
            lambda: keys.update(key_id, frozenset({"name"}), KeyUpdate(name="x"), CALLER),
            lambda: keys.delete(key_id, CALLER),
            lambda: wait(keys.rotate(key_id, CALLER)),
            lambda: keys.set_primary_version(key_id, "abjnoversion00000000", CALLER),
            lambda: keys.cancel_version_destruction(key_id, "abjnoversion00000000", CALLER),
            lambda: wait(crypto.encrypt(key_id, "", b"p", None)),
            lambda: wait(crypto.decrypt(key_id, b"\x01" + bytes(60), None)),
            lambda: wait(crypto.generate_data_key(key_id, "", None, Algorithm.AES_256, False)),
            lambda: wait(crypto.re_encrypt(key_id, "", None, key_id, None, b"\x01" + bytes(60))),
        ]
        for call in calls:
            with pytest.raises(NotFound, match=r"^(key|version) .* not found$"):
                call()
        assert wait(keys.rotate_if_due(key_id)) is None
        # The access-binding methods of symmetric keys, through their handlers.
        resource = Resource("key", key_id)
        binding = Binding("kms.viewer", "serviceAccount", "aje-someone")
        for method, work in [
            (
                methods.KEY_LIST_ACCESS_BINDINGS,
                lambda c: handlers.list_access_bindings(c, handlers.ListBindingsRequest(resource)),
            ),
            (
                methods.KEY_SET_ACCESS_BINDINGS,
                lambda c: handlers.set_access_bindings(
                    c, handlers.SetBindingsRequest(resource, [binding])
                ),
            ),
            (
                methods.KEY_UPDATE_ACCESS_BINDINGS,
                lambda c: handlers.update_access_bindings(
                    c, handlers.UpdateBindingsRequest(resource, [("ADD", binding)])
                ),
            ),
        ]:
            with pytest.raises(NotFound, match=f"^key {key_id} not found$"):
                _run(runtime, wait, admin_token, method, work)
    # The refused SetAccessBindings changed nothing.
    assert runtime.access.list_bindings(Resource("key", ecdsa_key)) == []


def test_asymmetric_paths_see_only_their_own_family(
    runtime, wait, admin_token, ecdsa_key, oaep_key, symmetric_key
) -> None:
    kp = runtime.key_pairs
    ciphertext = _public(runtime, ENC, oaep_key).encrypt(b"p", OAEP_PAD)
    for family, other in (
        (SIG, oaep_key),
        (SIG, symmetric_key),
        (ENC, ecdsa_key),
        (ENC, symmetric_key),
    ):
        calls: list[Callable[[], Any]] = [
            lambda: kp.get(family, other),
            lambda: kp.check_family(family, other),
            lambda: kp.public_key_pem(family, other),
            lambda: kp.list_operations(family, other, 0, ""),
            lambda: kp.update(family, other, frozenset({"name"}), KeyPairUpdate(name="x"), CALLER),
            lambda: wait(kp.delete(family, other, CALLER)),
        ]
        for call in calls:
            with pytest.raises(NotFound, match=f"^key {other} not found$"):
                call()
    for call in [
        lambda: kp.sign(oaep_key, b"m"),
        lambda: kp.sign(symmetric_key, b"m"),
        lambda: kp.sign_hash(oaep_key, bytes(32)),
        lambda: kp.decrypt(ecdsa_key, ciphertext),
        lambda: kp.decrypt(symmetric_key, ciphertext),
    ]:
        with pytest.raises(NotFound, match=r"^key \w+ not found$"):
            wait(call())
    # The key services' access-binding methods: each keeps to its own family.
    for family, method, key_id in (
        (ah.SIGNATURE, methods.SIGNATURE_KEY.list_access_bindings, oaep_key),
        (ah.ENCRYPTION, methods.ENCRYPTION_KEY.list_access_bindings, ecdsa_key),
        (ah.ENCRYPTION, methods.ENCRYPTION_KEY.list_access_bindings, symmetric_key),
    ):
        request = handlers.ListBindingsRequest(Resource("key", key_id))
        with pytest.raises(NotFound, match=f"^key {key_id} not found$"):
            _run(
                runtime,
                wait,
                admin_token,
                method,
                lambda c: ah.list_access_bindings(c, family, request),
            )
    # ... and work on it: set, then list, through the pipeline.
    binding = Binding("kms.asymmetricSignatureKeys.signer", "serviceAccount", "aje-signer")
    resource = Resource("key", ecdsa_key)
    op = _run(
        runtime,
        wait,
        admin_token,
        methods.SIGNATURE_KEY.set_access_bindings,
        lambda c: ah.set_access_bindings(
            c, ah.SIGNATURE, handlers.SetBindingsRequest(resource, [binding])
        ),
    )
    assert op.key_id == ecdsa_key
    assert _events(runtime, ecdsa_key)[-1].method == "AsymmetricSignatureKey.SetAccessBindings"
    page = _run(
        runtime,
        wait,
        admin_token,
        methods.SIGNATURE_KEY.list_access_bindings,
        lambda c: ah.list_access_bindings(c, ah.SIGNATURE, handlers.ListBindingsRequest(resource)),
    )
    assert page.bindings == [binding]


def test_the_scheduler_never_rotates_a_key_pair(runtime, wait, ecdsa_key) -> None:
    """Even a key pair row that somehow has a rotation period (none can be set)."""
    with runtime.keyring.database.write() as session:
        session.execute(
            update(KeyRow)
            .where(KeyRow.id == ecdsa_key)
            .values(rotation_period_seconds=86400, rotated_at=datetime(2020, 1, 1, tzinfo=UTC))
        )
    try:
        assert ecdsa_key not in runtime.keys.due_rotations()
    finally:
        with runtime.keyring.database.write() as session:
            session.execute(
                update(KeyRow).where(KeyRow.id == ecdsa_key).values(rotation_period_seconds=None)
            )


# ---------------------------------------------------------------- crash safety


def _swept(runtime: Runtime, wait, object_id: str) -> None:
    """Run the orphan sweep (no grace) until it destroyed ``object_id``; then it is audited."""
    sweep = Scheduler(runtime.keys, runtime.keyring, 0, orphan_grace=0)
    destroyed: list[bytes] = []
    deadline = time.monotonic() + 20
    while object_id.encode() not in destroyed:
        assert time.monotonic() < deadline, f"{object_id} not swept"
        destroyed += wait(sweep.reconcile_orphans())
    events = [c.event for c in runtime.audit.events() if c.event.version_id == object_id]
    assert [(e.principal_id, e.method) for e in events] == [
        ("system:scheduler", "Token.DestroyOrphanObject")
    ]


def test_a_pair_whose_commit_never_happened_is_swept(runtime, wait, token, ecdsa_key) -> None:
    """A crash between the keygen and the commit: the pair is in the token, no row names it."""
    key_id = f"abjcrash{secrets.token_hex(6)}"
    spec = P256.spec
    wait(token.generate_key_pair(key_id.encode(), runtime.keyring.object_label(key_id), spec))
    _swept(runtime, wait, key_id)
    assert not _in_token(runtime, token, wait, key_id)
    # Live pairs are not orphans: the sweep left them alone.
    assert _in_token(runtime, token, wait, ecdsa_key)
    assert wait(runtime.key_pairs.sign(ecdsa_key, b"still here"))


def test_a_failed_write_destroys_the_new_pair_at_once(runtime, wait, token, monkeypatch) -> None:
    key_id = f"abjnowrite{secrets.token_hex(5)}"
    monkeypatch.setattr("kms_hsm.service.key_pairs.new_id", lambda prefix: key_id)

    def refuse(*args: object, **kwargs: object) -> None:
        raise BackendUnavailable(log_detail="database went away")

    monkeypatch.setattr("kms_hsm.service.key_pairs.persist_with_audit", refuse)
    with pytest.raises(BackendUnavailable):
        _create(runtime, wait, SIG, P256, _folder())
    assert not _in_token(runtime, token, wait, key_id)
    with pytest.raises(NotFound):
        runtime.key_pairs.get(SIG, key_id)


class _DestroyFails:
    """The runtime's token, except that destroy_key fails (a token outage after commit)."""

    def __init__(self, inner: AgentToken) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def destroy_key(self, object_id: bytes) -> bool:
        raise BackendUnavailable(log_detail="token went away")


def test_a_delete_whose_destroy_failed_leaves_the_pair_to_the_sweep(
    runtime, wait, token, monkeypatch
) -> None:
    key_id = str(_create(runtime, wait, ENC, OAEP, _folder()).key_id)
    monkeypatch.setattr(runtime.key_pairs, "_token", _DestroyFails(token))
    op = wait(runtime.key_pairs.delete(ENC, key_id, CALLER))
    monkeypatch.undo()
    assert op.key_id == key_id
    with pytest.raises(NotFound):
        runtime.key_pairs.get(ENC, key_id)
    assert _in_token(runtime, token, wait, key_id)
    _swept(runtime, wait, key_id)
    assert not _in_token(runtime, token, wait, key_id)


# ---------------------------------------------------------------- migration 0009


def _upgrade_with_a_symmetric_key(url: str) -> sa.Engine:
    """A database at 0008 holding a symmetric key (and a version), then upgraded to head."""
    from alembic import command
    from alembic.config import Config

    engine = make_engine(url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0008")
    now = datetime.now(UTC)
    if engine.dialect.name == "sqlite":  # as UtcDateTime stores it there
        stamp: object = now.replace(tzinfo=None).isoformat(" ", "microseconds")
    else:
        stamp = now
    columns = ["id", "folder_id", "name", "description", "labels", "status"]
    columns += ["default_algorithm", "deletion_protection", "created_at", "primary_version_id"]
    keys = sa.table(
        "keys", *(sa.column(c, sa.JSON) if c == "labels" else sa.column(c) for c in columns)
    )
    with engine.begin() as connection:
        connection.execute(
            keys.insert(),
            [
                {
                    "id": "abjoldsymmetric00000",
                    "folder_id": "b1gold",
                    "name": "old",
                    "description": "",
                    "labels": {},
                    "status": 1,
                    "default_algorithm": int(Algorithm.AES_256),
                    "deletion_protection": False,
                    "created_at": stamp,
                    "primary_version_id": None,
                }
            ],
        )
    upgrade_schema(engine)
    return engine


def _check_upgraded(engine: sa.Engine) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    with engine.connect() as connection:
        family, public_key = connection.execute(
            sa.text("SELECT family, public_key FROM keys WHERE id = 'abjoldsymmetric00000'")
        ).one()
        assert (family, public_key) == (0, None)
        # The migrated schema is the one tables.py declares.
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert diff == []
    db = Database(engine)
    with db.read() as session:
        old = session.get(KeyRow, "abjoldsymmetric00000")
        assert old is not None and old.family == KeyFamily.SYMMETRIC
        assert [k.id for k in repository.list_keys(session, "b1gold", None, 10)] == [old.id]
        with pytest.raises(NotFound):
            repository.get_key_row(session, old.id, family=SIG)
    engine.dispose()


def test_migration_0009_makes_existing_keys_symmetric_on_sqlite(tmp_path) -> None:
    _check_upgraded(_upgrade_with_a_symmetric_key(f"sqlite:///{tmp_path / 'old.db'}"))


@pytest.mark.postgres
def test_migration_0009_makes_existing_keys_symmetric_on_postgres(postgres_url) -> None:
    _check_upgraded(_upgrade_with_a_symmetric_key(postgres_url))


def test_an_internal_bindings_change_is_audited_under_the_keys_service(runtime, oaep_key) -> None:
    """The CLI changes bindings with a bare principal id: the event names the key's API."""
    binding = Binding("kms.asymmetricEncryptionKeys.decrypter", "serviceAccount", "aje-cli")
    runtime.access.update_bindings(Resource("key", oaep_key), [("ADD", binding)], "aje-admin")
    event = _events(runtime, oaep_key)[-1]
    assert (event.method, event.principal_id) == (
        "AsymmetricEncryptionKey.UpdateAccessBindings",
        "aje-admin",
    )
