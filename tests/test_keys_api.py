"""SymmetricKeyService over real HTTP with the real token: every method, its failures,
the rotation table, pagination."""

from __future__ import annotations

import base64
from datetime import timedelta

import httpx
import pytest

from tests.conftest import create_key, token_key_ids


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def op_ok(r: httpx.Response, metadata_type: str) -> dict:
    assert r.status_code == 200, r.text
    op = r.json()
    assert op["done"] is True
    assert op["metadata"]["@type"] == f"type.googleapis.com/yandex.cloud.kms.v1.{metadata_type}"
    for field in ("id", "createdAt", "createdBy", "modifiedAt", "description"):
        assert op[field], field
    return op


def error(r: httpx.Response, status: int, code: int) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["code"] == code, body
    return body


def enc(api, key_id, plaintext=b"data", aad=b"ctx", version_id=None):
    body = {"plaintext": b64(plaintext), "aadContext": b64(aad)}
    if version_id:
        body["versionId"] = version_id
    return api.post(f"/kms/v1/keys/{key_id}:encrypt", json=body)


def dec(api, key_id, ciphertext, aad=b"ctx"):
    return api.post(
        f"/kms/v1/keys/{key_id}:decrypt", json={"ciphertext": ciphertext, "aadContext": b64(aad)}
    )


def test_update_with_mask(api) -> None:
    key = create_key(api, "AES_256", name="before", labels={"a": "1"}, rotationPeriod="172800s")
    r = api.patch(
        f"/kms/v1/keys/{key['id']}",
        json={
            "updateMask": "name,labels,deletionProtection",
            "name": "after",
            "labels": {"b": "2"},
            "deletionProtection": True,
            "description": "ignored: not in mask",
        },
    )
    op = op_ok(r, "UpdateSymmetricKeyMetadata")
    assert op["metadata"]["keyId"] == key["id"]
    updated = op["response"]
    assert updated["name"] == "after" and updated["labels"] == {"b": "2"}
    assert updated["deletionProtection"] is True
    assert "description" not in updated
    assert updated["rotationPeriod"] == "172800s"
    # A path in the mask that is absent from the body resets the field.
    r = api.patch(f"/kms/v1/keys/{key['id']}", json={"updateMask": "rotationPeriod,labels"})
    reset = op_ok(r, "UpdateSymmetricKeyMetadata")["response"]
    assert "rotationPeriod" not in reset and "labels" not in reset
    r = api.patch(
        f"/kms/v1/keys/{key['id']}",
        json={"updateMask": "defaultAlgorithm", "defaultAlgorithm": "AES_256_HSM"},
    )
    assert op_ok(r, "UpdateSymmetricKeyMetadata")["response"]["defaultAlgorithm"] == "AES_256_HSM"
    assert api.get(f"/kms/v1/keys/{key['id']}").json()["defaultAlgorithm"] == "AES_256_HSM"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "x"}, "updateMask"),
        ({"updateMask": "bogus"}, "updateMask"),
        ({"updateMask": "deletion_protection"}, "updateMask"),
        ({"updateMask": "status", "status": "CREATING"}, "status"),
        ({"updateMask": "status"}, "status"),
        ({"updateMask": "name", "name": "n" * 101}, "name"),
        ({"updateMask": "labels", "labels": {"UP": "x"}}, "labels"),
        ({"updateMask": "defaultAlgorithm"}, "defaultAlgorithm"),
        ({"updateMask": "rotationPeriod", "rotationPeriod": "soon"}, "rotationPeriod"),
    ],
)
def test_update_failures(api, body, field) -> None:
    key = create_key(api, "AES_128")
    assert field in error(api.patch(f"/kms/v1/keys/{key['id']}", json=body), 400, 3)["message"]


def test_update_unknown_key(api) -> None:
    r = api.patch("/kms/v1/keys/abjnokey", json={"updateMask": "name", "name": "x"})
    error(r, 404, 5)


def test_inactive_key_refuses_crypto_until_active_again(api) -> None:
    key = create_key(api, "AES_256_HSM")
    ct = enc(api, key["id"]).json()["ciphertext"]
    r = api.patch(f"/kms/v1/keys/{key['id']}", json={"updateMask": "status", "status": "INACTIVE"})
    assert op_ok(r, "UpdateSymmetricKeyMetadata")["response"]["status"] == "INACTIVE"
    error(enc(api, key["id"]), 400, 9)
    error(dec(api, key["id"], ct), 400, 9)
    gdk = api.post(f"/kms/v1/keys/{key['id']}:generateDataKey", json={"dataKeySpec": "AES_256"})
    error(gdk, 400, 9)
    api.patch(f"/kms/v1/keys/{key['id']}", json={"updateMask": "status", "status": "ACTIVE"})
    assert dec(api, key["id"], ct).status_code == 200


def test_delete_respects_protection_then_hides_the_key(
    api, runtime, clock, wait, token_dir
) -> None:
    key = create_key(api, "AES_256_HSM", deletionProtection=True)
    error(api.delete(f"/kms/v1/keys/{key['id']}"), 400, 9)
    api.patch(f"/kms/v1/keys/{key['id']}", json={"updateMask": "deletionProtection"})
    op = op_ok(api.delete(f"/kms/v1/keys/{key['id']}"), "DeleteSymmetricKeyMetadata")
    assert op["response"]["id"] == key["id"]
    error(api.get(f"/kms/v1/keys/{key['id']}"), 404, 5)
    error(enc(api, key["id"]), 404, 5)
    listed = api.get("/kms/v1/keys", params={"folderId": key["folderId"], "pageSize": 1000})
    assert key["id"] not in [k["id"] for k in listed.json().get("keys", [])]
    error(api.delete(f"/kms/v1/keys/{key['id']}"), 404, 5)
    # After the 72 h grace the token object is destroyed.
    version_id = key["primaryVersion"]["id"]
    assert version_id in token_key_ids(token_dir)
    clock.advance(timedelta(hours=73))
    wait(runtime.scheduler.run_once())
    assert version_id not in token_key_ids(token_dir)


def test_rotation_table(api, runtime, clock, wait, token_dir) -> None:
    """Who can decrypt what, through rotate, setPrimary, schedule, cancel and destroy."""
    key = create_key(api, "AES_256_HSM")
    key_id = key["id"]
    v1 = key["primaryVersion"]["id"]
    ct1 = enc(api, key_id).json()["ciphertext"]

    op = op_ok(api.post(f"/kms/v1/keys/{key_id}:rotate"), "RotateSymmetricKeyMetadata")
    v2 = op["metadata"]["newPrimaryVersionId"]
    assert v2 != v1 and op["response"]["primaryVersion"]["id"] == v2
    assert op["response"]["rotatedAt"] == op["response"]["primaryVersion"]["createdAt"]
    assert enc(api, key_id).json()["versionId"] == v2
    assert dec(api, key_id, ct1).json()["versionId"] == v1  # old ciphertexts still decrypt
    ct2 = enc(api, key_id).json()["ciphertext"]

    r = api.post(f"/kms/v1/keys/{key_id}:setPrimaryVersion", json={"versionId": v1})
    assert (
        op_ok(r, "SetPrimarySymmetricKeyVersionMetadata")["response"]["primaryVersion"]["id"] == v1
    )
    assert enc(api, key_id).json()["versionId"] == v1

    # The primary cannot be scheduled; v2 can.
    r = api.post(f"/kms/v1/keys/{key_id}:scheduleVersionDestruction", json={"versionId": v1})
    error(r, 400, 9)
    r = api.post(f"/kms/v1/keys/{key_id}:scheduleVersionDestruction", json={"versionId": v2})
    op = op_ok(r, "ScheduleSymmetricKeyVersionDestructionMetadata")
    assert op["response"]["status"] == "SCHEDULED_FOR_DESTRUCTION"
    assert op["metadata"]["destroyAt"] == op["response"]["destroyAt"]
    assert op["metadata"]["destroyAt"].endswith("Z")
    error(dec(api, key_id, ct2), 400, 9)  # scheduled: no decrypt ...
    error(enc(api, key_id, version_id=v2), 400, 9)  # ... and no encrypt
    r = api.post(f"/kms/v1/keys/{key_id}:setPrimaryVersion", json={"versionId": v2})
    error(r, 400, 9)

    r = api.post(f"/kms/v1/keys/{key_id}:cancelVersionDestruction", json={"versionId": v2})
    assert (
        op_ok(r, "CancelSymmetricKeyVersionDestructionMetadata")["response"]["status"] == "ACTIVE"
    )
    assert dec(api, key_id, ct2).status_code == 200
    r = api.post(f"/kms/v1/keys/{key_id}:cancelVersionDestruction", json={"versionId": v2})
    error(r, 400, 9)

    r = api.post(
        f"/kms/v1/keys/{key_id}:scheduleVersionDestruction",
        json={"versionId": v2, "pendingPeriod": "86400s"},
    )
    op_ok(r, "ScheduleSymmetricKeyVersionDestructionMetadata")
    assert v2 in token_key_ids(token_dir)
    clock.advance(timedelta(days=1, seconds=1))
    assert v2 in wait(runtime.scheduler.run_once()).destroyed
    assert v2 not in token_key_ids(token_dir)
    # Destroyed: it cannot authenticate anything any more, so the uniform failure.
    body = error(dec(api, key_id, ct2), 400, 3)
    assert "DESTROYED" not in body["message"]
    assert dec(api, key_id, ct1).status_code == 200
    versions = api.get(f"/kms/v1/keys/{key_id}/versions").json()["keyVersions"]
    assert {v["id"]: v["status"] for v in versions} == {v1: "ACTIVE", v2: "DESTROYED"}
    assert [v.get("primary", False) for v in versions] == [True, False]
    r = api.post(f"/kms/v1/keys/{key_id}:cancelVersionDestruction", json={"versionId": v2})
    error(r, 400, 9)


def test_software_version_schedule_and_destroy(api, runtime, clock, wait) -> None:
    key = create_key(api, "AES_128")
    v1 = key["primaryVersion"]["id"]
    ct = enc(api, key["id"]).json()["ciphertext"]
    api.post(f"/kms/v1/keys/{key['id']}:rotate")
    r = api.post(f"/kms/v1/keys/{key['id']}:scheduleVersionDestruction", json={"versionId": v1})
    assert op_ok(r, "ScheduleSymmetricKeyVersionDestructionMetadata")
    error(dec(api, key["id"], ct), 400, 9)
    clock.advance(timedelta(days=7, seconds=1))
    assert v1 in wait(runtime.scheduler.run_once()).destroyed
    error(dec(api, key["id"], ct), 400, 3)


@pytest.mark.parametrize(
    ("verb", "body", "status", "code"),
    [
        ("setPrimaryVersion", {}, 400, 3),
        ("setPrimaryVersion", {"versionId": "abjnope"}, 404, 5),
        ("scheduleVersionDestruction", {"versionId": "abjnope"}, 404, 5),
        ("scheduleVersionDestruction", {"versionId": "x", "pendingPeriod": "60s"}, 400, 3),
        ("scheduleVersionDestruction", {"versionId": "x", "pendingPeriod": "99999999s"}, 400, 3),
        ("scheduleVersionDestruction", {"versionId": "x", "pendingPeriod": 5}, 400, 3),
        ("cancelVersionDestruction", {"versionId": "abjnope"}, 404, 5),
        ("cancelVersionDestruction", {"versionId": "v" * 51}, 400, 3),
    ],
)
def test_version_method_failures(api, verb, body, status, code) -> None:
    key = create_key(api, "AES_256")
    error(api.post(f"/kms/v1/keys/{key['id']}:{verb}", json=body), status, code)


def test_mutations_on_unknown_key_are_404(api) -> None:
    for verb, body in (
        ("rotate", {}),
        ("setPrimaryVersion", {"versionId": "v"}),
        ("scheduleVersionDestruction", {"versionId": "v"}),
        ("cancelVersionDestruction", {"versionId": "v"}),
    ):
        error(api.post(f"/kms/v1/keys/abjnokey:{verb}", json=body), 404, 5)
    error(api.get("/kms/v1/keys/abjnokey/versions"), 404, 5)
    error(api.get("/kms/v1/keys/abjnokey/operations"), 404, 5)


def test_operations_are_listed_and_readable(api) -> None:
    key = create_key(api, "AES_192")
    api.post(f"/kms/v1/keys/{key['id']}:rotate")
    api.patch(f"/kms/v1/keys/{key['id']}", json={"updateMask": "name", "name": "n"})
    ops = api.get(f"/kms/v1/keys/{key['id']}/operations").json()["operations"]
    assert [o["description"] for o in ops] == [
        "Create symmetric key",
        "Rotate symmetric key",
        "Update symmetric key",
    ]
    for op in ops:
        assert api.get(f"/operations/{op['id']}").json() == op
    page = api.get(f"/kms/v1/keys/{key['id']}/operations", params={"pageSize": 2}).json()
    assert len(page["operations"]) == 2 and page["nextPageToken"]
    rest = api.get(
        f"/kms/v1/keys/{key['id']}/operations",
        params={"pageSize": 2, "pageToken": page["nextPageToken"]},
    ).json()
    assert [o["id"] for o in rest["operations"]] == [ops[2]["id"]]
    assert "nextPageToken" not in rest


def test_list_pagination_over_250_keys(api, runtime, wait) -> None:
    from kms_hsm.domain.model import Algorithm
    from kms_hsm.service.keys import KeySpec

    folder = "b1gpaging"
    spec = KeySpec(folder, "p", "", {}, Algorithm.AES_128, None, False)
    created = {
        wait(runtime.keys.create(spec, "test")).metadata["value"]["key_id"] for _ in range(250)
    }
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        params = {"folderId": folder, "pageSize": 100}
        if token:
            params["pageToken"] = token
        body = api.get("/kms/v1/keys", params=params).json()
        seen += [k["id"] for k in body["keys"]]
        pages += 1
        token = body.get("nextPageToken", "")
        if not token:
            break
    assert pages == 3
    assert len(seen) == len(set(seen)) == 250 and set(seen) == created
    default = api.get("/kms/v1/keys", params={"folderId": folder}).json()
    assert len(default["keys"]) == 100
    # Tokens are tamper-evident and bound to their list.
    good = default["nextPageToken"]
    forged = good[:-2] + ("A" if good[-2] != "A" else "B") + good[-1]
    for bad in (forged, "garbage", "A" * 300):
        r = api.get("/kms/v1/keys", params={"folderId": folder, "pageToken": bad})
        error(r, 400, 3)
    r = api.get("/kms/v1/keys", params={"folderId": "b1gother", "pageToken": good})
    error(r, 400, 3)
    for size in ("1001", "-1", "ten"):
        error(api.get("/kms/v1/keys", params={"folderId": folder, "pageSize": size}), 400, 3)
    error(api.get("/kms/v1/keys"), 400, 3)
    error(api.get("/kms/v1/keys", params={"folderId": folder, "bogus": "1"}), 400, 3)


def test_versions_list_token_limit(api) -> None:
    key = create_key(api, "AES_256")
    r = api.get(f"/kms/v1/keys/{key['id']}/versions", params={"pageToken": "x" * 101})
    assert "pageToken" in error(r, 400, 3)["message"]
