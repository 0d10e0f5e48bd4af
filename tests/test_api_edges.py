"""API edges of issue 15 (§7 and §8), over real HTTP against the session token.

Identifiers, log escaping, X-Request-Id, the 405 of verb paths, folder-binding
operations, uniform decryption failures, existence by timing, the trailing-slash
redirect and repeated Authorization headers.
"""

from __future__ import annotations

import base64
from urllib.parse import quote

import httpx
import pytest

from kms_hsm.service.runtime import Runtime
from tests.conftest import create_key

FOLDER = "b1g-edges"
BAD_IDS = {
    "slash": "a/b",
    "colon": "a:b",
    "newline": "a\nb",
    "escape": "a\x1b[31mb",
    "space": "a b",
    "nul": "a\x00b",
    "non-ascii": "ключ",
    "51-chars": "a" * 51,
}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def assert_invalid(r: httpx.Response, field: str) -> None:
    """400 with INVALID_ARGUMENT (3) naming ``field``."""
    assert r.status_code == 400, f"{r.status_code} {r.text[:300]}"
    body = r.json()
    assert body["code"] == 3, body
    assert field in body["message"], body


@pytest.fixture(scope="module")
def key_id(api: httpx.Client) -> str:
    return str(create_key(api, "AES_256", folderId=FOLDER, name="edges")["id"])


# --- identifiers ------------------------------------------------------------------------


@pytest.mark.parametrize("bad", BAD_IDS.values(), ids=BAD_IDS.keys())
def test_folder_id_must_be_an_identifier(api: httpx.Client, bad: str) -> None:
    r = api.post("/kms/v1/keys", json={"folderId": bad, "defaultAlgorithm": "AES_256"})
    assert_invalid(r, "folderId")
    assert_invalid(api.get("/kms/v1/keys", params={"folderId": bad}), "folderId")


@pytest.mark.parametrize("bad", BAD_IDS.values(), ids=BAD_IDS.keys())
def test_other_client_ids_must_be_identifiers(api: httpx.Client, key_id: str, bad: str) -> None:
    r = api.post(f"/kms/v1/keys/{key_id}:encrypt", json={"plaintext": "YQ==", "versionId": bad})
    assert_invalid(r, "versionId")
    r = api.post(
        f"/kms/v1/keys/{key_id}:reEncrypt",
        json={"sourceKeyId": bad, "ciphertext": "YQ=="},
    )
    assert_invalid(r, "sourceKeyId")
    for verb in ("setPrimaryVersion", "scheduleVersionDestruction", "cancelVersionDestruction"):
        assert_invalid(
            api.post(f"/kms/v1/keys/{key_id}:{verb}", json={"versionId": bad}), "versionId"
        )
    subject = "a" * 101 if bad == "a" * 51 else bad  # subject ids may have 100 characters
    binding = {"roleId": "kms.viewer", "subject": {"id": subject, "type": "userAccount"}}
    r = api.post(
        f"/kms-hsm/v1/folders/{FOLDER}:setAccessBindings", json={"accessBindings": [binding]}
    )
    assert_invalid(r, "subject.id")


@pytest.mark.parametrize(
    "bad", [v for k, v in BAD_IDS.items() if k != "slash"], ids=[k for k in BAD_IDS if k != "slash"]
)
def test_path_ids_must_be_identifiers(api: httpx.Client, bad: str) -> None:
    # A '/' in the path is a different route; each of these reaches the id check.
    path = quote(bad, safe="")
    assert_invalid(api.get(f"/kms/v1/keys/{path}"), "keyId")
    assert_invalid(api.post(f"/kms/v1/keys/{path}:encrypt", json={"plaintext": "YQ=="}), "keyId")
    assert_invalid(api.get(f"/operations/{path}"), "operationId")
    assert_invalid(api.get(f"/kms-hsm/v1/folders/{path}:listAccessBindings"), "folderId")


def test_identifiers_that_stay_valid(api: httpx.Client) -> None:
    for folder in ("b1g-demo", "b1g_demo", "B1G", "f" * 50):
        r = api.post("/kms/v1/keys", json={"folderId": folder, "defaultAlgorithm": "AES_128"})
        assert r.status_code == 200, r.text
        assert r.json()["response"]["folderId"] == folder
        assert api.get("/kms/v1/keys", params={"folderId": folder}).status_code == 200
    r = api.post(
        "/kms/v1/keys",
        json={"folderId": FOLDER, "defaultAlgorithm": "AES_128", "name": "any name: é/\u2603"},
    )
    assert r.status_code == 200, r.text  # names have no pattern in the contract


def test_identifiers_are_checked_below_the_api(runtime: Runtime, wait: object) -> None:
    """The CLI and other callers of the service get the same rule as the API."""
    from kms_hsm.domain.model import Algorithm
    from kms_hsm.errors import InvalidArgument
    from kms_hsm.service.access import Resource
    from kms_hsm.service.keys import KeySpec

    spec = KeySpec("a:b", "", "", {}, Algorithm.AES_128, None, False)
    with pytest.raises(InvalidArgument, match="folderId"):
        wait(runtime.keys.create(spec, "tester"))  # type: ignore[operator]
    with pytest.raises(InvalidArgument, match="resourceId"):
        runtime.access.set_bindings(Resource("folder", "a\nb"), [], "tester")
