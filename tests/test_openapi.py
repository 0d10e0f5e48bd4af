"""The served OpenAPI document: Yandex's paths and fields, committed and kept in sync."""

from __future__ import annotations

import json
from typing import Any

import httpx

from kms_hsm.api.app import create_app
from kms_hsm.api.openapi import COMMITTED, bindings, message_models, render
from kms_hsm.domain.asymmetric import AsymmetricKeyStatus, EncryptionAlgorithm, SignatureAlgorithm
from kms_hsm.service.access import ROLE_PERMISSIONS
from kms_hsm.service.methods import METHODS


def test_committed_document_is_current() -> None:
    assert COMMITTED.read_text() == render(create_app()), (
        "run `kms-hsm openapi --write` and commit kms_hsm/api/openapi.json"
    )


def test_served_document_matches_and_covers_every_route(base_url: str) -> None:
    served = httpx.get(f"{base_url}/openapi.json").json()
    committed = json.loads(COMMITTED.read_text())
    assert served == committed
    documented = {(m, p) for p, ops in served["paths"].items() for m in ops}
    assert documented == {(b.verb, b.path) for b in bindings()}


def test_every_method_has_one_rest_binding_and_its_messages() -> None:
    bound = [b.method for b in bindings()]
    assert sorted(m.name for m in bound) == sorted(n for n, m in METHODS.items() if m.rest)
    for binding in bindings():
        _request, response = message_models(binding)
        assert response.__name__ == binding.method.response


def test_yandex_field_names_and_types() -> None:
    schemas = json.loads(COMMITTED.read_text())["components"]["schemas"]
    encrypt = schemas["SymmetricEncryptRequest"]["properties"]
    assert set(encrypt) == {"versionId", "aadContext", "plaintext"}
    assert encrypt["plaintext"]["format"] == "byte"
    gdk = schemas["GenerateDataKeyRequest"]["properties"]
    assert set(gdk) == {"versionId", "aadContext", "dataKeySpec", "skipPlaintext"}
    key = schemas["SymmetricKey"]["properties"]
    assert {
        "id",
        "folderId",
        "createdAt",
        "primaryVersion",
        "defaultAlgorithm",
        "rotatedAt",
        "rotationPeriod",
        "deletionProtection",
        "labels",
        "status",
    } <= set(key)
    assert set(schemas["SymmetricKeyVersion"]["properties"]) == {
        "id",
        "keyId",
        "status",
        "algorithm",
        "createdAt",
        "primary",
        "destroyAt",
        "hostedByHsm",
    }


def _enum(schema: dict[str, Any]) -> set[str]:
    """The names of a Literal field's schema (directly, or its non-null ``anyOf`` branch)."""
    for branch in schema.get("anyOf", [schema]):
        if "enum" in branch:
            return set(branch["enum"])
    raise AssertionError(schema)


def test_asymmetric_paths_fields_and_enums() -> None:
    doc = json.loads(COMMITTED.read_text())
    paths = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    for base in ("/kms/v1/asymmetricSignatureKeys", "/kms/v1/asymmetricEncryptionKeys"):
        assert {
            ("post", base),
            ("get", base),
            ("get", base + "/{keyId}"),
            ("patch", base + "/{keyId}"),
            ("delete", base + "/{keyId}"),
            ("get", base + "/{keyId}/operations"),
            ("get", base + "/{keyId}/publicKey"),
            ("get", base + "/{resourceId}:listAccessBindings"),
            ("post", base + "/{resourceId}:setAccessBindings"),
            ("post", base + "/{resourceId}:updateAccessBindings"),
        } <= paths
    assert {
        ("post", "/kms/v1/asymmetricSignatureKeys/{keyId}:sign"),
        ("post", "/kms/v1/asymmetricSignatureKeys/{keyId}:signHash"),
        ("post", "/kms/v1/asymmetricEncryptionKeys/{keyId}:decrypt"),
    } <= paths
    schemas = doc["components"]["schemas"]
    common = {"id", "folderId", "createdAt", "name", "description", "labels", "status"}
    signature_key = schemas["AsymmetricSignatureKey"]["properties"]
    encryption_key = schemas["AsymmetricEncryptionKey"]["properties"]
    assert set(signature_key) == common | {"signatureAlgorithm", "deletionProtection"}
    assert set(encryption_key) == common | {"encryptionAlgorithm", "deletionProtection"}
    assert _enum(signature_key["signatureAlgorithm"]) == {a.name for a in SignatureAlgorithm}
    assert _enum(encryption_key["encryptionAlgorithm"]) == {a.name for a in EncryptionAlgorithm}
    assert _enum(signature_key["status"]) == {s.name for s in AsymmetricKeyStatus}
    for message, field in (
        ("AsymmetricSignRequest", "message"),
        ("AsymmetricSignHashRequest", "hash"),
        ("AsymmetricDecryptRequest", "ciphertext"),
    ):
        properties = schemas[message]["properties"]
        assert set(properties) == {field}
        assert properties[field]["format"] == "byte"
    assert set(schemas["AsymmetricGetPublicKeyResponse"]["properties"]) == {"keyId", "publicKey"}
    assert set(schemas["UpdateAsymmetricEncryptionKeyRequest"]["properties"]) == {
        "updateMask",
        "name",
        "description",
        "status",
        "labels",
        "deletionProtection",
    }
    role_ids = _enum(schemas["AccessBinding"]["properties"]["roleId"])
    assert role_ids == set(ROLE_PERMISSIONS)
