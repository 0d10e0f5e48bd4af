"""The served OpenAPI document: Yandex's paths and fields, committed and kept in sync."""

from __future__ import annotations

import json

import httpx

from kms_hsm.api.app import create_app
from kms_hsm.api.openapi import COMMITTED, bindings, message_models, render
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
