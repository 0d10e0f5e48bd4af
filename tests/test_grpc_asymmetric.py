"""Issue 17 acceptance over gRPC through the official Python SDK (`yandexcloud`): the four
asymmetric services (signature and encryption keys, their crypto services) against
`kms-hsm serve` on a real SoftHSM2 token, reached by discovery with TLS.

Signatures are verified and ciphertexts made with `cryptography`, from the public key the
server gives out. One server per module; the RSA keys are shared (module fixtures) because
RSA key generation in SoftHSM2 costs up to seconds.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Callable
from typing import Any

import grpc
import pytest
import yandexcloud
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from google.protobuf import field_mask_pb2
from yandex.cloud.access import access_pb2
from yandex.cloud.endpoint import api_endpoint_service_pb2
from yandex.cloud.endpoint.api_endpoint_service_pb2_grpc import ApiEndpointServiceStub
from yandex.cloud.kms.v1 import symmetric_crypto_service_pb2 as sym_crypto_pb2
from yandex.cloud.kms.v1 import symmetric_key_service_pb2 as sym_keys_pb2
from yandex.cloud.kms.v1.asymmetricencryption import (
    asymmetric_encryption_crypto_service_pb2 as ec_pb2,
)
from yandex.cloud.kms.v1.asymmetricencryption import asymmetric_encryption_key_pb2 as ek_pb2
from yandex.cloud.kms.v1.asymmetricencryption import (
    asymmetric_encryption_key_service_pb2 as eks_pb2,
)
from yandex.cloud.kms.v1.asymmetricencryption.asymmetric_encryption_crypto_service_pb2_grpc import (
    AsymmetricEncryptionCryptoServiceStub,
)
from yandex.cloud.kms.v1.asymmetricencryption.asymmetric_encryption_key_service_pb2_grpc import (
    AsymmetricEncryptionKeyServiceStub,
)
from yandex.cloud.kms.v1.asymmetricsignature import (
    asymmetric_signature_crypto_service_pb2 as sc_pb2,
)
from yandex.cloud.kms.v1.asymmetricsignature import asymmetric_signature_key_pb2 as sk_pb2
from yandex.cloud.kms.v1.asymmetricsignature import asymmetric_signature_key_service_pb2 as sks_pb2
from yandex.cloud.kms.v1.asymmetricsignature.asymmetric_signature_crypto_service_pb2_grpc import (
    AsymmetricSignatureCryptoServiceStub,
)
from yandex.cloud.kms.v1.asymmetricsignature.asymmetric_signature_key_service_pb2_grpc import (
    AsymmetricSignatureKeyServiceStub,
)
from yandex.cloud.kms.v1.symmetric_crypto_service_pb2_grpc import SymmetricCryptoServiceStub
from yandex.cloud.kms.v1.symmetric_key_service_pb2_grpc import SymmetricKeyServiceStub
from yandex.cloud.operation import operation_service_pb2
from yandex.cloud.operation.operation_service_pb2_grpc import OperationServiceStub
from yandexcloud._sdk import _service_for_ctor

from kms_hsm.service.methods import METHODS
from tests.grpc_support import KmsServer, rpc_error, server_fixture, status_details

FOLDER = "b1gasymmetricsdk"
UNKNOWN_KEY = "abjnosuchkey00000000"
SIG = sk_pb2.AsymmetricSignatureAlgorithm
ENC = ek_pb2.AsymmetricEncryptionAlgorithm
SIG_KEY = sk_pb2.AsymmetricSignatureKey
ENC_KEY = ek_pb2.AsymmetricEncryptionKey

# The algorithm as `cryptography` checks it: key type, size or curve, and hash.
_HASH = {"SHA_256": hashes.SHA256, "SHA_384": hashes.SHA384, "SHA_512": hashes.SHA512}
_CURVE = {
    "ECDSA_NIST_P256_SHA_256": ec.SECP256R1,
    "ECDSA_NIST_P384_SHA_384": ec.SECP384R1,
    "ECDSA_NIST_P521_SHA_512": ec.SECP521R1,
    "ECDSA_SECP256_K1_SHA_256": ec.SECP256K1,
}
SIGNING = [
    SIG.ECDSA_NIST_P256_SHA_256,
    SIG.ECDSA_NIST_P384_SHA_384,
    SIG.ECDSA_NIST_P521_SHA_512,
    SIG.ECDSA_SECP256_K1_SHA_256,
    SIG.RSA_2048_SIGN_PSS_SHA_256,
    SIG.RSA_2048_SIGN_PSS_SHA_512,
    SIG.RSA_3072_SIGN_PSS_SHA_256,
]
RSA_2048_OAEP = ENC.RSA_2048_ENC_OAEP_SHA_256

server = server_fixture()


def sig_name(algorithm: int) -> str:
    return str(SIG.Name(algorithm))


def hash_of(algorithm: int) -> hashes.HashAlgorithm:
    return _HASH[sig_name(algorithm)[-7:]]()


# --- the SDK, its clients, and keys made through the operation helper ---


@pytest.fixture(scope="module")
def sdk(server: KmsServer) -> yandexcloud.SDK:
    """The SDK as the admin."""
    return server.sdk(iam_token=server.admin_token)


@pytest.fixture(scope="module")
def signer(sdk: yandexcloud.SDK) -> AsymmetricSignatureCryptoServiceStub:
    return sdk.client(AsymmetricSignatureCryptoServiceStub)


@pytest.fixture(scope="module")
def sig_keys(sdk: yandexcloud.SDK) -> AsymmetricSignatureKeyServiceStub:
    return sdk.client(AsymmetricSignatureKeyServiceStub)


@pytest.fixture(scope="module")
def decrypter(sdk: yandexcloud.SDK) -> AsymmetricEncryptionCryptoServiceStub:
    return sdk.client(AsymmetricEncryptionCryptoServiceStub)


@pytest.fixture(scope="module")
def enc_keys(sdk: yandexcloud.SDK) -> AsymmetricEncryptionKeyServiceStub:
    return sdk.client(AsymmetricEncryptionKeyServiceStub)


def create_signature_key(
    sdk: yandexcloud.SDK, algorithm: int, folder: str = FOLDER, **fields: Any
) -> tuple[sk_pb2.AsymmetricSignatureKey, sks_pb2.CreateAsymmetricSignatureKeyMetadata]:
    """Create through the SDK's operation helper (it polls OperationService.Get)."""
    result = sdk.create_operation_and_get_result(
        sks_pb2.CreateAsymmetricSignatureKeyRequest(
            folder_id=folder, signature_algorithm=algorithm, **fields
        ),
        service=AsymmetricSignatureKeyServiceStub,
        method_name="Create",
        response_type=SIG_KEY,
        meta_type=sks_pb2.CreateAsymmetricSignatureKeyMetadata,
        timeout=60,
    )
    # The SDK unpacks into the type it is given without checking it.
    assert result.operation.response.Is(SIG_KEY.DESCRIPTOR), result.operation
    assert result.operation.metadata.Is(sks_pb2.CreateAsymmetricSignatureKeyMetadata.DESCRIPTOR)
    return result.response, result.meta


def create_encryption_key(
    sdk: yandexcloud.SDK, algorithm: int, folder: str = FOLDER, **fields: Any
) -> tuple[ek_pb2.AsymmetricEncryptionKey, eks_pb2.CreateAsymmetricEncryptionKeyMetadata]:
    """Create through the SDK's operation helper."""
    result = sdk.create_operation_and_get_result(
        eks_pb2.CreateAsymmetricEncryptionKeyRequest(
            folder_id=folder, encryption_algorithm=algorithm, **fields
        ),
        service=AsymmetricEncryptionKeyServiceStub,
        method_name="Create",
        response_type=ENC_KEY,
        meta_type=eks_pb2.CreateAsymmetricEncryptionKeyMetadata,
        timeout=60,
    )
    assert result.operation.response.Is(ENC_KEY.DESCRIPTOR), result.operation
    assert result.operation.metadata.Is(eks_pb2.CreateAsymmetricEncryptionKeyMetadata.DESCRIPTOR)
    return result.response, result.meta


@pytest.fixture(scope="module")
def signing_keys(sdk: yandexcloud.SDK) -> dict[int, sk_pb2.AsymmetricSignatureKey]:
    """One key of each algorithm under test, shared by the crypto tests."""
    return {a: create_signature_key(sdk, a, name=f"sign-{sig_name(a).lower()}")[0] for a in SIGNING}


@pytest.fixture(scope="module")
def oaep_key(sdk: yandexcloud.SDK) -> ek_pb2.AsymmetricEncryptionKey:
    """The one RSA-2048 OAEP key of the module."""
    return create_encryption_key(sdk, RSA_2048_OAEP, name="oaep")[0]


def update(sdk: yandexcloud.SDK, key: SIG_KEY | ENC_KEY, paths: list[str], **fields: Any) -> Any:
    """Update through the operation helper; the result's response is the updated key."""
    if isinstance(key, SIG_KEY):
        request: Any = sks_pb2.UpdateAsymmetricSignatureKeyRequest
        stub: Any = AsymmetricSignatureKeyServiceStub
        meta: Any = sks_pb2.UpdateAsymmetricSignatureKeyMetadata
    else:
        request = eks_pb2.UpdateAsymmetricEncryptionKeyRequest
        stub = AsymmetricEncryptionKeyServiceStub
        meta = eks_pb2.UpdateAsymmetricEncryptionKeyMetadata
    result = sdk.create_operation_and_get_result(
        request(key_id=key.id, update_mask=field_mask_pb2.FieldMask(paths=paths), **fields),
        service=stub,
        method_name="Update",
        response_type=type(key),
        meta_type=meta,
        timeout=60,
    )
    assert result.operation.response.Is(type(key).DESCRIPTOR)
    assert result.meta.key_id == key.id
    return result.response


def public_key(pem: str) -> Any:
    """The served PEM as `cryptography` loads it (SubjectPublicKeyInfo, nothing else)."""
    assert pem.startswith("-----BEGIN PUBLIC KEY-----\n"), pem[:40]
    return serialization.load_pem_public_key(pem.encode())


def assert_code(error: grpc.RpcError, code: grpc.StatusCode) -> None:
    """The status and its details agree (REST's code and message, a RequestInfo)."""
    assert error.code() is code, (error.code(), error.details())
    status, found = status_details(error)
    assert (status.code, status.message) == (code.value[0], error.details())
    assert found["RequestInfo"].request_id == dict(error.trailing_metadata())["x-request-id"]


# --- every method is served, and discovery routes the new services ---


def test_every_grpc_method_is_bound(server: KmsServer) -> None:
    """Each declared method's full name reaches the pipeline (UNAUTHENTICATED without a
    credential), none is UNIMPLEMENTED: the four asymmetric services are registered."""
    declared = [m for m in METHODS.values() if m.grpc and not m.public]
    assert sum(".asymmetric" in (m.grpc or "") for m in declared) == 23
    with server.secure_channel() as channel:
        for method in declared:
            call = channel.unary_unary(
                method.grpc, request_serializer=bytes, response_deserializer=bytes
            )
            error = rpc_error(call, b"")
            assert error.code() is grpc.StatusCode.UNAUTHENTICATED, (method.grpc, error.code())


def test_discovery_answers_the_ids_the_sdk_routes_asymmetric_services_to(
    server: KmsServer, sdk: yandexcloud.SDK
) -> None:
    # The Python SDK picks an endpoint id by the stub's module (yandexcloud._sdk); the Go SDK
    # sends the asymmetric crypto services to "kms-crypto" (shared/spec/yandex-grpc-clients.md).
    stubs = (
        AsymmetricSignatureCryptoServiceStub,
        AsymmetricSignatureKeyServiceStub,
        AsymmetricEncryptionCryptoServiceStub,
        AsymmetricEncryptionKeyServiceStub,
    )
    routed = {_service_for_ctor(stub) for stub in stubs}
    assert routed == {"kms"}
    with server.secure_channel() as channel:
        listed = ApiEndpointServiceStub(channel).List(
            api_endpoint_service_pb2.ListApiEndpointsRequest(), timeout=30
        )
    served = {e.id: e.address for e in listed.endpoints}
    assert routed | {"kms-crypto"} <= set(served)
    assert {served[i] for i in routed | {"kms-crypto"}} == {server.endpoint}


# --- keys of both families ---


def test_create_both_families_with_the_operation_helper(
    sdk: yandexcloud.SDK,
    sig_keys: AsymmetricSignatureKeyServiceStub,
    enc_keys: AsymmetricEncryptionKeyServiceStub,
) -> None:
    key, meta = create_signature_key(
        sdk,
        SIG.ECDSA_NIST_P256_SHA_256,
        name="created",
        description="a signature key",
        labels={"team": "sdk"},
    )
    assert meta.key_id == key.id
    assert (key.folder_id, key.name, key.description) == (FOLDER, "created", "a signature key")
    assert dict(key.labels) == {"team": "sdk"} and not key.deletion_protection
    assert key.signature_algorithm == SIG.ECDSA_NIST_P256_SHA_256
    assert key.status == SIG_KEY.ACTIVE and key.created_at.seconds > 0
    assert sig_keys.Get(sks_pb2.GetAsymmetricSignatureKeyRequest(key_id=key.id), timeout=30) == key

    pair, meta = create_encryption_key(
        sdk, RSA_2048_OAEP, name="created", labels={"team": "sdk"}, deletion_protection=True
    )
    assert meta.key_id == pair.id != key.id
    assert pair.encryption_algorithm == RSA_2048_OAEP and pair.deletion_protection
    assert pair.status == ENC_KEY.ACTIVE and dict(pair.labels) == {"team": "sdk"}
    got = enc_keys.Get(eks_pb2.GetAsymmetricEncryptionKeyRequest(key_id=pair.id), timeout=30)
    assert got == pair
    assert not update(sdk, pair, ["deletion_protection"]).deletion_protection


@pytest.mark.parametrize(
    ("call", "request_fields", "field"),
    [
        ("signature", {}, "signatureAlgorithm"),
        ("signature", {"signature_algorithm": 99}, "signatureAlgorithm"),
        ("encryption", {}, "encryptionAlgorithm"),
        ("encryption", {"encryption_algorithm": 10}, "encryptionAlgorithm"),
        ("signature", {"signature_algorithm": 10, "folder_id": ""}, "folderId"),
    ],
    ids=["no-sig-algorithm", "unknown-sig-algorithm", "no-enc-algorithm", "sig-as-enc", "folder"],
)
def test_create_refusals_name_the_field(
    sig_keys: AsymmetricSignatureKeyServiceStub,
    enc_keys: AsymmetricEncryptionKeyServiceStub,
    call: str,
    request_fields: dict[str, Any],
    field: str,
) -> None:
    fields = {"folder_id": FOLDER, **request_fields}
    if call == "signature":
        error = rpc_error(sig_keys.Create, sks_pb2.CreateAsymmetricSignatureKeyRequest(**fields))
    else:
        error = rpc_error(enc_keys.Create, eks_pb2.CreateAsymmetricEncryptionKeyRequest(**fields))
    assert_code(error, grpc.StatusCode.INVALID_ARGUMENT)
    assert field in error.details()
    _status, found = status_details(error)
    assert [v.field for v in found["BadRequest"].field_violations] == [field]


# --- Sign, SignHash, GetPublicKey ---


def verify(algorithm: int, pem: str, signature: bytes, data: bytes, prehashed: bool) -> None:
    """`cryptography` verifies ``signature`` of ``data`` (or of its digest) under ``pem``."""
    key = public_key(pem)
    h = hash_of(algorithm)
    chosen: Any = Prehashed(h) if prehashed else h
    name = sig_name(algorithm)
    if name.startswith("ECDSA"):
        assert isinstance(key, ec.EllipticCurvePublicKey)
        assert isinstance(key.curve, _CURVE[name])
        key.verify(signature, data, ec.ECDSA(chosen))
    else:
        assert isinstance(key, rsa.RSAPublicKey)
        assert key.key_size == int(name.split("_")[1])
        # RSA-PSS as the spec says: MGF1 with the same hash, salt as long as the digest.
        pss = padding.PSS(mgf=padding.MGF1(h), salt_length=h.digest_size)
        assert len(signature) == key.key_size // 8
        key.verify(signature, data, pss, chosen)


@pytest.mark.parametrize("algorithm", SIGNING, ids=sig_name)
def test_sign_and_sign_hash_verify_with_the_served_public_key(
    signer: AsymmetricSignatureCryptoServiceStub,
    signing_keys: dict[int, sk_pb2.AsymmetricSignatureKey],
    algorithm: int,
) -> None:
    key = signing_keys[algorithm]
    served = signer.GetPublicKey(sc_pb2.AsymmetricGetPublicKeyRequest(key_id=key.id), timeout=30)
    assert served.key_id == key.id
    message = b"signed over gRPC " + bytes(range(256))
    signed = signer.Sign(sc_pb2.AsymmetricSignRequest(key_id=key.id, message=message), timeout=30)
    assert signed.key_id == key.id
    verify(algorithm, served.public_key, signed.signature, message, prehashed=False)
    with pytest.raises(InvalidSignature):
        verify(algorithm, served.public_key, signed.signature, message + b"!", prehashed=False)

    digest = hashlib.new(hash_of(algorithm).name, b"a digest made by the caller").digest()
    hashed = signer.SignHash(
        sc_pb2.AsymmetricSignHashRequest(key_id=key.id, hash=digest), timeout=30
    )
    assert hashed.key_id == key.id
    verify(algorithm, served.public_key, hashed.signature, digest, prehashed=True)
    # The largest message is signed too.
    largest = b"\xa5" * 32768
    signed = signer.Sign(sc_pb2.AsymmetricSignRequest(key_id=key.id, message=largest), timeout=30)
    verify(algorithm, served.public_key, signed.signature, largest, prehashed=False)


@pytest.mark.parametrize(
    ("rpc", "payload", "field"),
    [
        ("Sign", b"", "message"),
        ("Sign", b"m" * 32769, "message"),
        ("SignHash", b"", "hash"),
        ("SignHash", b"h" * 31, "hash"),
        ("SignHash", b"h" * 33, "hash"),
        ("SignHash", b"h" * 48, "hash"),
        ("SignHash", b"h" * 4097, "hash"),
    ],
    ids=[
        "no-message",
        "oversize-message",
        "no-hash",
        "short-hash",
        "long-hash",
        "sha384-len",
        "oversize-hash",
    ],
)
def test_sign_refusals_are_invalid_argument(
    signer: AsymmetricSignatureCryptoServiceStub,
    signing_keys: dict[int, sk_pb2.AsymmetricSignatureKey],
    rpc: str,
    payload: bytes,
    field: str,
) -> None:
    key_id = signing_keys[SIG.ECDSA_NIST_P256_SHA_256].id
    if rpc == "Sign":
        error = rpc_error(signer.Sign, sc_pb2.AsymmetricSignRequest(key_id=key_id, message=payload))
    else:
        error = rpc_error(
            signer.SignHash, sc_pb2.AsymmetricSignHashRequest(key_id=key_id, hash=payload)
        )
    assert_code(error, grpc.StatusCode.INVALID_ARGUMENT)
    assert field in error.details()


# --- Decrypt ---


def oaep(h: hashes.HashAlgorithm) -> padding.OAEP:
    return padding.OAEP(mgf=padding.MGF1(h), algorithm=h, label=None)


def test_decrypt_oaep_sha256_one_byte_and_the_largest(
    decrypter: AsymmetricEncryptionCryptoServiceStub, oaep_key: ek_pb2.AsymmetricEncryptionKey
) -> None:
    served = decrypter.GetPublicKey(
        ec_pb2.AsymmetricGetPublicKeyRequest(key_id=oaep_key.id), timeout=30
    )
    assert served.key_id == oaep_key.id
    key = public_key(served.public_key)
    assert isinstance(key, rsa.RSAPublicKey) and key.key_size == 2048
    for plaintext in (b"\x00", b"\x7f" * 190):  # 190 = 256 - 2·32 - 2, the most OAEP holds
        ciphertext = key.encrypt(plaintext, oaep(hashes.SHA256()))
        opened = decrypter.Decrypt(
            ec_pb2.AsymmetricDecryptRequest(key_id=oaep_key.id, ciphertext=ciphertext), timeout=30
        )
        assert (opened.key_id, opened.plaintext) == (oaep_key.id, plaintext)
    with pytest.raises(ValueError):  # the client cannot even make a longer one
        key.encrypt(b"\x7f" * 191, oaep(hashes.SHA256()))


def test_every_bad_ciphertext_gets_the_same_answer(
    decrypter: AsymmetricEncryptionCryptoServiceStub, oaep_key: ek_pb2.AsymmetricEncryptionKey
) -> None:
    key = public_key(
        decrypter.GetPublicKey(
            ec_pb2.AsymmetricGetPublicKeyRequest(key_id=oaep_key.id), timeout=30
        ).public_key
    )
    good = key.encrypt(b"secret", oaep(hashes.SHA256()))
    cases = {
        "oaep-sha1": key.encrypt(b"secret", oaep(hashes.SHA1())),
        "pkcs1v15": key.encrypt(b"secret", padding.PKCS1v15()),
        "flipped-bit": good[:100] + bytes([good[100] ^ 0x04]) + good[101:],
        "short": good[:-1],
        "long": good + b"\x00",
        "all-zero": bytes(256),
        "modulus-or-more": b"\xff" * 256,
        "one": bytes(255) + b"\x01",
    }
    answers: dict[str, tuple[Any, ...]] = {}
    for name, ciphertext in cases.items():
        error = rpc_error(
            decrypter.Decrypt,
            ec_pb2.AsymmetricDecryptRequest(key_id=oaep_key.id, ciphertext=ciphertext),
        )
        assert_code(error, grpc.StatusCode.INVALID_ARGUMENT)
        status, found = status_details(error)
        # Everything but the request id is the same: code, message, which details are sent.
        answers[name] = (error.code(), error.details(), status.code, tuple(sorted(found)))
    assert len(set(answers.values())) == 1, answers
    assert "BadRequest" not in next(iter(answers.values()))[3]  # no field to single out
    # The good one still opens: the failures changed nothing.
    opened = decrypter.Decrypt(
        ec_pb2.AsymmetricDecryptRequest(key_id=oaep_key.id, ciphertext=good), timeout=30
    )
    assert opened.plaintext == b"secret"
    # An empty ciphertext is a missing field, named as such (it says nothing of the key).
    error = rpc_error(decrypter.Decrypt, ec_pb2.AsymmetricDecryptRequest(key_id=oaep_key.id))
    assert_code(error, grpc.StatusCode.INVALID_ARGUMENT)
    assert "ciphertext" in error.details()


# --- lifecycle: INACTIVE, deletion protection, Delete ---


def test_inactive_keys_refuse_sign_and_decrypt(
    sdk: yandexcloud.SDK,
    signer: AsymmetricSignatureCryptoServiceStub,
    decrypter: AsymmetricEncryptionCryptoServiceStub,
    oaep_key: ek_pb2.AsymmetricEncryptionKey,
) -> None:
    key, _ = create_signature_key(sdk, SIG.ECDSA_NIST_P256_SHA_256, name="inactive")
    inactive = update(sdk, key, ["status"], status=SIG_KEY.INACTIVE)
    assert inactive.status == SIG_KEY.INACTIVE
    for call, request in (
        (signer.Sign, sc_pb2.AsymmetricSignRequest(key_id=key.id, message=b"m")),
        (signer.SignHash, sc_pb2.AsymmetricSignHashRequest(key_id=key.id, hash=bytes(32))),
    ):
        assert_code(rpc_error(call, request), grpc.StatusCode.FAILED_PRECONDITION)
    assert update(sdk, key, ["status"], status=SIG_KEY.ACTIVE).status == SIG_KEY.ACTIVE
    signer.Sign(sc_pb2.AsymmetricSignRequest(key_id=key.id, message=b"m"), timeout=30)

    pem = decrypter.GetPublicKey(
        ec_pb2.AsymmetricGetPublicKeyRequest(key_id=oaep_key.id), timeout=30
    ).public_key
    ciphertext = public_key(pem).encrypt(b"later", oaep(hashes.SHA256()))
    request = ec_pb2.AsymmetricDecryptRequest(key_id=oaep_key.id, ciphertext=ciphertext)
    update(sdk, oaep_key, ["status"], status=ENC_KEY.INACTIVE)
    try:
        assert_code(rpc_error(decrypter.Decrypt, request), grpc.StatusCode.FAILED_PRECONDITION)
    finally:
        update(sdk, oaep_key, ["status"], status=ENC_KEY.ACTIVE)
    assert decrypter.Decrypt(request, timeout=30).plaintext == b"later"
    # CREATING is not a status a caller may set.
    error = rpc_error(
        sdk.client(AsymmetricSignatureKeyServiceStub).Update,
        sks_pb2.UpdateAsymmetricSignatureKeyRequest(
            key_id=key.id,
            update_mask=field_mask_pb2.FieldMask(paths=["status"]),
            status=SIG_KEY.CREATING,
        ),
    )
    assert_code(error, grpc.StatusCode.INVALID_ARGUMENT)


def test_update_mask_and_deletion_protection_then_delete(
    sdk: yandexcloud.SDK,
    sig_keys: AsymmetricSignatureKeyServiceStub,
    signer: AsymmetricSignatureCryptoServiceStub,
) -> None:
    key, _ = create_signature_key(
        sdk,
        SIG.ECDSA_NIST_P256_SHA_256,
        name="protected",
        description="kept",
        labels={"a": "1"},
        deletion_protection=True,
    )
    changed = update(
        sdk,
        key,
        ["name", "labels"],
        name="renamed",
        labels={"b": "2"},
        description="ignored: not in the mask",
    )
    assert (changed.name, dict(changed.labels), changed.description) == (
        "renamed",
        {"b": "2"},
        "kept",
    )
    error = rpc_error(
        sig_keys.Update,
        sks_pb2.UpdateAsymmetricSignatureKeyRequest(
            key_id=key.id, update_mask=field_mask_pb2.FieldMask(paths=["signature_algorithm"])
        ),
    )
    assert_code(error, grpc.StatusCode.INVALID_ARGUMENT)
    assert "updateMask" in error.details()

    error = rpc_error(sig_keys.Delete, sks_pb2.DeleteAsymmetricSignatureKeyRequest(key_id=key.id))
    assert_code(error, grpc.StatusCode.FAILED_PRECONDITION)
    assert sig_keys.Get(sks_pb2.GetAsymmetricSignatureKeyRequest(key_id=key.id), timeout=30)
    assert not update(sdk, key, ["deletion_protection"]).deletion_protection
    result = sdk.create_operation_and_get_result(
        sks_pb2.DeleteAsymmetricSignatureKeyRequest(key_id=key.id),
        service=AsymmetricSignatureKeyServiceStub,
        method_name="Delete",
        response_type=SIG_KEY,
        meta_type=sks_pb2.DeleteAsymmetricSignatureKeyMetadata,
        timeout=60,
    )
    assert result.operation.response.Is(SIG_KEY.DESCRIPTOR)
    assert result.meta.key_id == key.id and result.response.id == key.id
    for call, request in (
        (sig_keys.Get, sks_pb2.GetAsymmetricSignatureKeyRequest(key_id=key.id)),
        (signer.Sign, sc_pb2.AsymmetricSignRequest(key_id=key.id, message=b"m")),
        (signer.GetPublicKey, sc_pb2.AsymmetricGetPublicKeyRequest(key_id=key.id)),
        (sig_keys.Delete, sks_pb2.DeleteAsymmetricSignatureKeyRequest(key_id=key.id)),
    ):
        assert_code(rpc_error(call, request), grpc.StatusCode.NOT_FOUND)


# --- List paging, ListOperations, OperationService.Get ---


def walk(list_page: Callable[[str], Any], field: str) -> list[Any]:
    """Every item of a paged list, one per page, and no page twice."""
    seen: list[Any] = []
    token, pages = "", 0
    while True:
        page = list_page(token)
        pages += 1
        items = list(getattr(page, field))
        assert len(items) <= 1
        seen += items
        token = page.next_page_token
        if not token:
            return seen
        assert pages <= 20, "the walk does not end"


def test_list_pages_through_one_family(
    sdk: yandexcloud.SDK,
    sig_keys: AsymmetricSignatureKeyServiceStub,
    enc_keys: AsymmetricEncryptionKeyServiceStub,
) -> None:
    folder = "b1gasympaged"
    made = [
        create_signature_key(sdk, SIG.ECDSA_NIST_P256_SHA_256, folder, name=f"p{i}")[0]
        for i in range(3)
    ]
    seen = walk(
        lambda token: sig_keys.List(
            sks_pb2.ListAsymmetricSignatureKeysRequest(
                folder_id=folder, page_size=1, page_token=token
            ),
            timeout=30,
        ),
        "keys",
    )
    assert sorted(k.id for k in seen) == sorted(k.id for k in made)
    assert {k.id: k for k in seen} == {k.id: k for k in made}
    everything = sig_keys.List(
        sks_pb2.ListAsymmetricSignatureKeysRequest(folder_id=folder), timeout=30
    )
    assert len(everything.keys) == 3 and not everything.next_page_token
    # The other family's list of the same folder has none of them.
    others = enc_keys.List(
        eks_pb2.ListAsymmetricEncryptionKeysRequest(folder_id=folder), timeout=30
    )
    assert list(others.keys) == [] and not others.next_page_token
    error = rpc_error(sig_keys.List, sks_pb2.ListAsymmetricSignatureKeysRequest())
    assert_code(error, grpc.StatusCode.INVALID_ARGUMENT)
    assert "folderId" in error.details()


def test_list_operations_and_get_each(
    sdk: yandexcloud.SDK, sig_keys: AsymmetricSignatureKeyServiceStub
) -> None:
    key, _ = create_signature_key(sdk, SIG.ECDSA_SECP256_K1_SHA_256, name="ops")
    update(sdk, key, ["description"], description="first")
    update(sdk, key, ["status"], status=SIG_KEY.INACTIVE)
    listed = sig_keys.ListOperations(
        sks_pb2.ListAsymmetricSignatureKeyOperationsRequest(key_id=key.id), timeout=30
    ).operations
    assert len(listed) == 3 and all(op.done for op in listed)
    assert listed[0].metadata.Is(sks_pb2.CreateAsymmetricSignatureKeyMetadata.DESCRIPTOR)
    assert all(
        op.metadata.Is(sks_pb2.UpdateAsymmetricSignatureKeyMetadata.DESCRIPTOR) for op in listed[1:]
    )
    assert all(op.response.Is(SIG_KEY.DESCRIPTOR) for op in listed)
    last = SIG_KEY()
    listed[-1].response.Unpack(last)
    assert (last.id, last.description, last.status) == (key.id, "first", SIG_KEY.INACTIVE)
    paged = walk(
        lambda token: sig_keys.ListOperations(
            sks_pb2.ListAsymmetricSignatureKeyOperationsRequest(
                key_id=key.id, page_size=1, page_token=token
            ),
            timeout=30,
        ),
        "operations",
    )
    assert paged == list(listed)
    operations = sdk.client(OperationServiceStub)
    for op in listed:
        got = operations.Get(
            operation_service_pb2.GetOperationRequest(operation_id=op.id), timeout=30
        )
        assert got == op
    # An encryption key's operations, through its own service.
    pair, _ = create_encryption_key(sdk, RSA_2048_OAEP, name="ops")
    enc_ops = (
        sdk.client(AsymmetricEncryptionKeyServiceStub)
        .ListOperations(
            eks_pb2.ListAsymmetricEncryptionKeyOperationsRequest(key_id=pair.id), timeout=30
        )
        .operations
    )
    assert len(enc_ops) == 1
    assert enc_ops[0].metadata.Is(eks_pb2.CreateAsymmetricEncryptionKeyMetadata.DESCRIPTOR)
    created = ENC_KEY()
    enc_ops[0].response.Unpack(created)
    assert created.id == pair.id and created.encryption_algorithm == RSA_2048_OAEP
    assert (
        operations.Get(
            operation_service_pb2.GetOperationRequest(operation_id=enc_ops[0].id), timeout=30
        )
        == enc_ops[0]
    )


# --- roles and access bindings ---


def binding(role: str, principal_id: str) -> access_pb2.AccessBinding:
    return access_pb2.AccessBinding(
        role_id=role, subject=access_pb2.Subject(id=principal_id, type="serviceAccount")
    )


def test_access_bindings_and_roles(
    server: KmsServer,
    sdk: yandexcloud.SDK,
    sig_keys: AsymmetricSignatureKeyServiceStub,
    enc_keys: AsymmetricEncryptionKeyServiceStub,
    signing_keys: dict[int, sk_pb2.AsymmetricSignatureKey],
    oaep_key: ek_pb2.AsymmetricEncryptionKey,
) -> None:
    sig_key = signing_keys[SIG.ECDSA_NIST_P256_SHA_256]
    people = {
        name: server.principal_with_token(f"asym-{name}")
        for name in ("signer", "sig-viewer", "viewer", "decrypter", "enc-viewer")
    }
    pid = {name: p[0] for name, p in people.items()}
    # SetAccessBindings replaces, UpdateAccessBindings adds and removes; both are Operations.
    result = sdk.create_operation_and_get_result(
        access_pb2.SetAccessBindingsRequest(
            resource_id=sig_key.id,
            access_bindings=[
                binding("kms.asymmetricSignatureKeys.signer", pid["signer"]),
                binding("kms.viewer", pid["decrypter"]),  # removed again below
            ],
        ),
        service=AsymmetricSignatureKeyServiceStub,
        method_name="SetAccessBindings",
        meta_type=access_pb2.SetAccessBindingsMetadata,
        timeout=60,
    )
    assert result.meta.resource_id == sig_key.id
    add, remove = access_pb2.AccessBindingAction.ADD, access_pb2.AccessBindingAction.REMOVE
    result = sdk.create_operation_and_get_result(
        access_pb2.UpdateAccessBindingsRequest(
            resource_id=sig_key.id,
            access_binding_deltas=[
                access_pb2.AccessBindingDelta(
                    action=add,
                    access_binding=binding(
                        "kms.asymmetricSignatureKeys.publicKeyViewer", pid["sig-viewer"]
                    ),
                ),
                access_pb2.AccessBindingDelta(
                    action=add, access_binding=binding("kms.viewer", pid["viewer"])
                ),
                access_pb2.AccessBindingDelta(
                    action=remove, access_binding=binding("kms.viewer", pid["decrypter"])
                ),
            ],
        ),
        service=AsymmetricSignatureKeyServiceStub,
        method_name="UpdateAccessBindings",
        meta_type=access_pb2.UpdateAccessBindingsMetadata,
        timeout=60,
    )
    assert result.meta.resource_id == sig_key.id
    listed = sig_keys.ListAccessBindings(
        access_pb2.ListAccessBindingsRequest(resource_id=sig_key.id), timeout=30
    ).access_bindings
    assert {(b.role_id, b.subject.id) for b in listed} == {
        ("kms.asymmetricSignatureKeys.signer", pid["signer"]),
        ("kms.asymmetricSignatureKeys.publicKeyViewer", pid["sig-viewer"]),
        ("kms.viewer", pid["viewer"]),
    }
    enc_keys.UpdateAccessBindings(
        access_pb2.UpdateAccessBindingsRequest(
            resource_id=oaep_key.id,
            access_binding_deltas=[
                access_pb2.AccessBindingDelta(action=add, access_binding=binding(role, pid[name]))
                for role, name in (
                    ("kms.asymmetricEncryptionKeys.decrypter", "decrypter"),
                    ("kms.asymmetricEncryptionKeys.publicKeyViewer", "enc-viewer"),
                )
            ],
        ),
        timeout=30,
    )

    def clients(name: str) -> tuple[Any, Any, Any, Any]:
        own = server.sdk(iam_token=people[name][1])
        return (
            own.client(AsymmetricSignatureCryptoServiceStub),
            own.client(AsymmetricSignatureKeyServiceStub),
            own.client(AsymmetricEncryptionCryptoServiceStub),
            own.client(AsymmetricEncryptionKeyServiceStub),
        )

    sign = sc_pb2.AsymmetricSignRequest(key_id=sig_key.id, message=b"by role")
    sig_pem = sc_pb2.AsymmetricGetPublicKeyRequest(key_id=sig_key.id)
    sig_get = sks_pb2.GetAsymmetricSignatureKeyRequest(key_id=sig_key.id)
    enc_pem = ec_pb2.AsymmetricGetPublicKeyRequest(key_id=oaep_key.id)
    enc_get = eks_pb2.GetAsymmetricEncryptionKeyRequest(key_id=oaep_key.id)
    pem = sdk.client(AsymmetricEncryptionCryptoServiceStub).GetPublicKey(enc_pem, timeout=30)
    decrypt = ec_pb2.AsymmetricDecryptRequest(
        key_id=oaep_key.id,
        ciphertext=public_key(pem.public_key).encrypt(b"by role", oaep(hashes.SHA256())),
    )
    ok, denied, missing = "ok", grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.NOT_FOUND
    expected = {
        #            Sign    sig PEM  sig Get  Decrypt  enc PEM  enc Get
        "signer": (ok, ok, denied, missing, missing, missing),
        "sig-viewer": (denied, ok, denied, missing, missing, missing),
        "viewer": (denied, denied, ok, missing, missing, missing),
        "decrypter": (missing, missing, missing, ok, ok, denied),
        "enc-viewer": (missing, missing, missing, denied, ok, denied),
    }
    for name, outcomes in expected.items():
        s_crypto, s_keys, e_crypto, e_keys = clients(name)
        calls = (
            (s_crypto.Sign, sign),
            (s_crypto.GetPublicKey, sig_pem),
            (s_keys.Get, sig_get),
            (e_crypto.Decrypt, decrypt),
            (e_crypto.GetPublicKey, enc_pem),
            (e_keys.Get, enc_get),
        )
        for (call, request), outcome in zip(calls, outcomes, strict=True):
            if outcome == ok:
                call(request, timeout=30)
            else:
                error = rpc_error(call, request)
                assert error.code() is outcome, (name, call, error.code(), error.details())
                assert_code(error, outcome)
    # A signer signs verifiably; a decrypter opens the ciphertext.
    s_crypto, _s_keys, e_crypto, _e_keys = clients("signer")
    signature = s_crypto.Sign(sign, timeout=30).signature
    served = sdk.client(AsymmetricSignatureCryptoServiceStub).GetPublicKey(sig_pem, timeout=30)
    verify(SIG.ECDSA_NIST_P256_SHA_256, served.public_key, signature, b"by role", prehashed=False)
    assert clients("decrypter")[2].Decrypt(decrypt, timeout=30).plaintext == b"by role"
    # Only who may change bindings does: a viewer may list them, not set them.
    viewer_keys = clients("viewer")[1]
    viewer_keys.ListAccessBindings(
        access_pb2.ListAccessBindingsRequest(resource_id=sig_key.id), timeout=30
    )
    error = rpc_error(
        viewer_keys.SetAccessBindings,
        access_pb2.SetAccessBindingsRequest(resource_id=sig_key.id, access_bindings=[]),
    )
    assert_code(error, grpc.StatusCode.PERMISSION_DENIED)


# --- family isolation ---


def test_a_key_is_not_found_on_another_familys_services(
    sdk: yandexcloud.SDK,
    signing_keys: dict[int, sk_pb2.AsymmetricSignatureKey],
    oaep_key: ek_pb2.AsymmetricEncryptionKey,
) -> None:
    sig_id = signing_keys[SIG.ECDSA_NIST_P256_SHA_256].id
    enc_id = oaep_key.id
    s_crypto = sdk.client(AsymmetricSignatureCryptoServiceStub)
    s_keys = sdk.client(AsymmetricSignatureKeyServiceStub)
    e_crypto = sdk.client(AsymmetricEncryptionCryptoServiceStub)
    e_keys = sdk.client(AsymmetricEncryptionKeyServiceStub)
    sym_keys = sdk.client(SymmetricKeyServiceStub)
    sym_crypto = sdk.client(SymmetricCryptoServiceStub)

    def cases(key_id: str, own: str) -> list[tuple[str, Any, Any]]:
        every = [
            ("sig", s_crypto.Sign, sc_pb2.AsymmetricSignRequest(key_id=key_id, message=b"m")),
            (
                "sig",
                s_crypto.SignHash,
                sc_pb2.AsymmetricSignHashRequest(key_id=key_id, hash=bytes(32)),
            ),
            ("sig", s_crypto.GetPublicKey, sc_pb2.AsymmetricGetPublicKeyRequest(key_id=key_id)),
            ("sig", s_keys.Get, sks_pb2.GetAsymmetricSignatureKeyRequest(key_id=key_id)),
            (
                "sig",
                s_keys.Update,
                sks_pb2.UpdateAsymmetricSignatureKeyRequest(
                    key_id=key_id, update_mask=field_mask_pb2.FieldMask(paths=["name"]), name="x"
                ),
            ),
            ("sig", s_keys.Delete, sks_pb2.DeleteAsymmetricSignatureKeyRequest(key_id=key_id)),
            (
                "sig",
                s_keys.ListOperations,
                sks_pb2.ListAsymmetricSignatureKeyOperationsRequest(key_id=key_id),
            ),
            (
                "sig",
                s_keys.ListAccessBindings,
                access_pb2.ListAccessBindingsRequest(resource_id=key_id),
            ),
            (
                "enc",
                e_crypto.Decrypt,
                ec_pb2.AsymmetricDecryptRequest(key_id=key_id, ciphertext=bytes(256)),
            ),
            ("enc", e_crypto.GetPublicKey, ec_pb2.AsymmetricGetPublicKeyRequest(key_id=key_id)),
            ("enc", e_keys.Get, eks_pb2.GetAsymmetricEncryptionKeyRequest(key_id=key_id)),
            ("enc", e_keys.Delete, eks_pb2.DeleteAsymmetricEncryptionKeyRequest(key_id=key_id)),
            (
                "enc",
                e_keys.SetAccessBindings,
                access_pb2.SetAccessBindingsRequest(resource_id=key_id, access_bindings=[]),
            ),
            ("sym", sym_keys.Get, sym_keys_pb2.GetSymmetricKeyRequest(key_id=key_id)),
            ("sym", sym_keys.Rotate, sym_keys_pb2.RotateSymmetricKeyRequest(key_id=key_id)),
            (
                "sym",
                sym_crypto.Encrypt,
                sym_crypto_pb2.SymmetricEncryptRequest(key_id=key_id, plaintext=b"x"),
            ),
        ]
        return [case for case in every if case[0] != own]

    for key_id, own in ((sig_id, "sig"), (enc_id, "enc")):
        for _family, call, request in cases(key_id, own):
            error = rpc_error(call, request)
            assert error.code() is grpc.StatusCode.NOT_FOUND, (key_id, call, error.details())
            assert_code(error, grpc.StatusCode.NOT_FOUND)
            # The same answer as for a key that does not exist at all.
            unknown = type(request)()
            unknown.CopyFrom(request)
            id_field = "key_id" if "key_id" in request.DESCRIPTOR.fields_by_name else "resource_id"
            setattr(unknown, id_field, UNKNOWN_KEY)
            answer = rpc_error(call, unknown)
            assert error.details() == answer.details().replace(UNKNOWN_KEY, key_id)
    # Both keys are still there and usable by their own family.
    assert s_keys.Get(sks_pb2.GetAsymmetricSignatureKeyRequest(key_id=sig_id), timeout=30).id
    assert e_keys.Get(eks_pb2.GetAsymmetricEncryptionKeyRequest(key_id=enc_id), timeout=30).id


# --- one error, two transports ---


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def assert_as_rest(error: grpc.RpcError, rest_status: int, rest_answer: dict[str, Any]) -> None:
    """The gRPC status is REST's body ``code`` with REST's ``message``."""
    assert error.code().value[0] == rest_answer["code"], (error.code(), rest_answer)
    assert error.details() == rest_answer["message"], rest_answer
    assert_code(error, error.code())
    http = {3: 400, 5: 404, 7: 403, 9: 400}[rest_answer["code"]]
    assert rest_status == http, (rest_status, rest_answer)


def test_errors_answer_as_rest(
    server: KmsServer,
    sdk: yandexcloud.SDK,
    signer: AsymmetricSignatureCryptoServiceStub,
    decrypter: AsymmetricEncryptionCryptoServiceStub,
    sig_keys: AsymmetricSignatureKeyServiceStub,
    enc_keys: AsymmetricEncryptionKeyServiceStub,
    signing_keys: dict[int, sk_pb2.AsymmetricSignatureKey],
    oaep_key: ek_pb2.AsymmetricEncryptionKey,
) -> None:
    sig_id = signing_keys[SIG.ECDSA_NIST_P256_SHA_256].id
    enc_id = oaep_key.id
    sig_path = f"/kms/v1/asymmetricSignatureKeys/{sig_id}"
    enc_path = f"/kms/v1/asymmetricEncryptionKeys/{enc_id}"
    cases: list[tuple[Any, Any, str, str, dict[str, Any] | None]] = [
        (
            decrypter.Decrypt,
            ec_pb2.AsymmetricDecryptRequest(key_id=enc_id, ciphertext=bytes(256)),
            "post",
            f"{enc_path}:decrypt",
            {"ciphertext": b64(bytes(256))},
        ),
        (
            signer.SignHash,
            sc_pb2.AsymmetricSignHashRequest(key_id=sig_id, hash=bytes(48)),
            "post",
            f"{sig_path}:signHash",
            {"hash": b64(bytes(48))},
        ),
        (
            signer.Sign,
            sc_pb2.AsymmetricSignRequest(key_id=sig_id, message=bytes(32769)),
            "post",
            f"{sig_path}:sign",
            {"message": b64(bytes(32769))},
        ),
        (
            enc_keys.Get,
            eks_pb2.GetAsymmetricEncryptionKeyRequest(key_id=sig_id),
            "get",
            f"/kms/v1/asymmetricEncryptionKeys/{sig_id}",
            None,
        ),
        (
            signer.GetPublicKey,
            sc_pb2.AsymmetricGetPublicKeyRequest(key_id=enc_id),
            "get",
            f"/kms/v1/asymmetricSignatureKeys/{enc_id}/publicKey",
            None,
        ),
        (
            sig_keys.Update,
            sks_pb2.UpdateAsymmetricSignatureKeyRequest(
                key_id=sig_id, update_mask=field_mask_pb2.FieldMask(paths=["bogus"])
            ),
            "patch",
            sig_path,
            {"updateMask": "bogus"},
        ),
    ]
    cases += [
        (
            enc_keys.Create,
            eks_pb2.CreateAsymmetricEncryptionKeyRequest(folder_id=FOLDER, encryption_algorithm=10),
            "post",
            "/kms/v1/asymmetricEncryptionKeys",
            {"folderId": FOLDER, "encryptionAlgorithm": 10},
        ),
        (
            sig_keys.Create,
            sks_pb2.CreateAsymmetricSignatureKeyRequest(folder_id=FOLDER),
            "post",
            "/kms/v1/asymmetricSignatureKeys",
            {"folderId": FOLDER},
        ),
        (
            sig_keys.Update,
            sks_pb2.UpdateAsymmetricSignatureKeyRequest(
                key_id=sig_id, update_mask=field_mask_pb2.FieldMask(paths=["status"]), status=7
            ),
            "patch",
            sig_path,
            {"updateMask": "status", "status": 7},
        ),
    ]
    with server.rest(server.admin_token) as rest:
        for call, request, verb, path, body in cases:
            error = rpc_error(call, request)
            answer = rest.request(verb, path, json=body)
            assert_as_rest(error, answer.status_code, answer.json())
        # INACTIVE (400 / FAILED_PRECONDITION) and deletion protection, on a key of their own.
        key, _ = create_signature_key(
            sdk, SIG.ECDSA_NIST_P256_SHA_256, name="as-rest", deletion_protection=True
        )
        update(sdk, key, ["status"], status=SIG_KEY.INACTIVE)
        error = rpc_error(signer.Sign, sc_pb2.AsymmetricSignRequest(key_id=key.id, message=b"m"))
        answer = rest.post(
            f"/kms/v1/asymmetricSignatureKeys/{key.id}:sign", json={"message": "bQ=="}
        )
        assert_as_rest(error, answer.status_code, answer.json())
        error = rpc_error(
            sig_keys.Delete, sks_pb2.DeleteAsymmetricSignatureKeyRequest(key_id=key.id)
        )
        answer = rest.delete(f"/kms/v1/asymmetricSignatureKeys/{key.id}")
        assert_as_rest(error, answer.status_code, answer.json())
    # A signer may not read the key's metadata (403 / PERMISSION_DENIED).
    principal_id, token, _ = server.principal_with_token("asym-as-rest")
    sig_keys.UpdateAccessBindings(
        access_pb2.UpdateAccessBindingsRequest(
            resource_id=sig_id,
            access_binding_deltas=[
                access_pb2.AccessBindingDelta(
                    action=access_pb2.AccessBindingAction.ADD,
                    access_binding=binding("kms.asymmetricSignatureKeys.signer", principal_id),
                )
            ],
        ),
        timeout=30,
    )
    own = server.sdk(iam_token=token).client(AsymmetricSignatureKeyServiceStub)
    error = rpc_error(own.Get, sks_pb2.GetAsymmetricSignatureKeyRequest(key_id=sig_id))
    with server.rest(token) as rest:
        answer = rest.get(sig_path)
    assert_as_rest(error, answer.status_code, answer.json())
    assert error.code() is grpc.StatusCode.PERMISSION_DENIED


# --- the audit trail (last: it stops the module's server) ---


def test_audit_names_grpc_and_the_chain_verifies(server: KmsServer) -> None:
    deadline = time.monotonic() + 10
    wanted = {
        "AsymmetricSignatureCrypto.Sign",
        "AsymmetricSignatureCrypto.SignHash",
        "AsymmetricSignatureCrypto.GetPublicKey",
        "AsymmetricEncryptionCrypto.Decrypt",
        "AsymmetricEncryptionCrypto.GetPublicKey",
        "AsymmetricSignatureKey.Create",
        "AsymmetricSignatureKey.Update",
        "AsymmetricSignatureKey.Delete",
        "AsymmetricSignatureKey.SetAccessBindings",
        "AsymmetricSignatureKey.UpdateAccessBindings",
        "AsymmetricEncryptionKey.Create",
        "AsymmetricEncryptionKey.Update",
        "AsymmetricEncryptionKey.UpdateAccessBindings",
    }
    while True:
        events = [
            json.loads(line) for line in server.audit_log.read_text().splitlines() if line.strip()
        ]
        asymmetric = [e for e in events if e.get("method", "").startswith("Asymmetric")]
        over_grpc = {e["method"] for e in asymmetric if e["transport"] == "grpc"}
        if wanted <= over_grpc or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert wanted <= over_grpc, wanted - over_grpc
    # Every event names its transport (test_errors_answer_as_rest calls REST too).
    assert {e["transport"] for e in asymmetric} <= {"grpc", "rest"}
    assert any(e["outcome"] != "OK" for e in asymmetric if e["transport"] == "grpc")
    server.stop()
    verified = server.cli("audit", "verify", "--checkpoints", str(server.audit_log), check=False)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "audit chain intact" in verified.stdout
    written = server.written()
    assert server.admin_token not in written
