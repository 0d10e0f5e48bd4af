"""Hostile input over real HTTP: every answer is a clean 4xx, quickly, and the process lives.

"Clean" means: a 4xx status, ``application/json``, the ``google.rpc.Status`` shape
(``code``, ``message``, ``details``) with the HTTP status Yandex maps the code to, and no
traceback or internal detail in the body. Requests that break HTTP framing itself never
reach the app; uvicorn refuses them, and those tests ask only for a 4xx without a traceback.

Oversized bodies are sent over raw sockets so that the test controls how much of the body
is sent: the server must answer before the rest arrives (it never does).
"""

from __future__ import annotations

import base64
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from kms_hsm.api.deps import MAX_BODY_BYTES
from kms_hsm.api.status import HTTP_STATUS_BY_GRPC_CODE
from kms_hsm.api.wire import FieldError, decode_any_base64, decode_base64
from kms_hsm.service.runtime import Runtime
from tests.conftest import (
    KMS_HSM,
    create_key,
    free_port,
    serve_env,
    stop,
    wait_until_serving,
)

FOLDER = "b1ghostile"
# A request that takes longer than this is treated as a hang.
ANSWER_WITHIN = 10.0
TRACEBACK_MARKERS = ("Traceback", 'File "', ", line ", "Error:", "kms_hsm.", "site-packages")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def assert_clean_error(r: httpx.Response, status: int | None = None) -> dict[str, object]:
    """A 4xx google.rpc.Status JSON body whose code maps to the HTTP status."""
    assert 400 <= r.status_code < 500, f"{r.status_code} {r.text[:500]}"
    if status is not None:
        assert r.status_code == status, f"{r.status_code} {r.text[:500]}"
    assert r.headers.get("content-type", "").startswith("application/json"), r.headers
    body = r.json()
    assert isinstance(body, dict), body
    assert isinstance(body.get("code"), int) and not isinstance(body["code"], bool), body
    assert isinstance(body.get("message"), str), body
    assert isinstance(body.get("details", []), list), body
    if r.status_code == 405:
        # A method the path does not take: HTTP 405 with gRPC's UNIMPLEMENTED (12).
        assert body["code"] == 12, body
    else:
        assert HTTP_STATUS_BY_GRPC_CODE[body["code"]] == r.status_code, body
    for marker in TRACEBACK_MARKERS:
        assert marker not in r.text, f"internal detail {marker!r} in {r.text[:500]}"
    return body


@pytest.fixture(scope="module")
def key_id(api: httpx.Client) -> str:
    """A live software key to aim the hostile requests at."""
    return str(create_key(api, "AES_256", folderId=FOLDER, name="hostile")["id"])


@pytest.fixture(scope="module")
def client(base_url: str, admin_token: str) -> Iterator[httpx.Client]:
    """An admin client whose timeout turns a hang into a failure."""
    with httpx.Client(
        base_url=base_url,
        headers={"Authorization": f"Bearer {admin_token}"},
        timeout=ANSWER_WITHIN,
    ) as c:
        yield c


def post_raw(
    client: httpx.Client, path: str, body: bytes, content_type: str | None = "application/json"
) -> httpx.Response:
    headers = {} if content_type is None else {"content-type": content_type}
    return client.post(path, content=body, headers=headers)


# --- raw sockets ------------------------------------------------------------------------


@pytest.fixture
def raw(base_url: str) -> Iterator[socket.socket]:
    """A TCP connection to the server (closed afterwards)."""
    parts = urlsplit(base_url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=ANSWER_WITHIN)
    try:
        yield sock
    finally:
        sock.close()


def request_head(
    method: str, path: str, token: str, extra: dict[str, str], host: str = "127.0.0.1"
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", f"Authorization: Bearer {token}"]
    lines += [f"{k}: {v}" for k, v in extra.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def send_quietly(sock: socket.socket, data: bytes) -> bool:
    """Send; False once the server has stopped reading (closed or reset the connection)."""
    try:
        sock.sendall(data)
    except (BrokenPipeError, ConnectionResetError, TimeoutError):
        return False
    return True


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response (Content-Length, chunked, or until close)."""
    sock.settimeout(ANSWER_WITHIN)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    assert data, "the server closed the connection without an answer"
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    status = int(status_line.split(" ")[1])
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        length = int(headers["content-length"])
        while len(rest) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
        return status, headers, rest[:length]
    while True:  # chunked or close-delimited: read to the terminator or the close
        if headers.get("transfer-encoding") == "chunked" and rest.endswith(b"0\r\n\r\n"):
            break
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            break
        if not chunk:
            break
        rest += chunk
    if headers.get("transfer-encoding") == "chunked":
        decoded, buf = b"", rest
        while buf:
            size_line, _, buf = buf.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                break
            decoded, buf = decoded + buf[:size], buf[size + 2 :]
        rest = decoded
    return status, headers, rest


def assert_clean_raw_error(status: int, headers: dict[str, str], body: bytes) -> None:
    """The raw-socket form of assert_clean_error."""
    response = httpx.Response(status, headers=headers, content=body)
    assert_clean_error(response)


def test_oversized_body_with_content_length_is_refused_before_it_is_sent(
    raw: socket.socket, admin_token: str, key_id: str
) -> None:
    declared = 64 * 1024 * 1024
    raw.sendall(
        request_head(
            "POST",
            f"/kms/v1/keys/{key_id}:encrypt",
            admin_token,
            {"Content-Type": "application/json", "Content-Length": str(declared)},
        )
    )
    started = time.monotonic()
    send_quietly(raw, b'{"plaintext": "' + b"A" * 4096)  # 4 KiB of the 64 MiB promised
    status, headers, body = read_response(raw)
    elapsed = time.monotonic() - started
    assert status == 400
    assert_clean_raw_error(status, headers, body)
    assert str(MAX_BODY_BYTES) in body.decode()
    assert elapsed < 2.0, f"answered only after {elapsed:.1f}s"


def test_body_just_over_the_limit_by_content_length_is_refused(
    client: httpx.Client, key_id: str
) -> None:
    body = b'{"plaintext": "' + b"A" * MAX_BODY_BYTES + b'"}'
    r = post_raw(client, f"/kms/v1/keys/{key_id}:encrypt", body)
    assert_clean_error(r, 400)


@pytest.mark.parametrize("length", ["abc", "-1", "1e3", "99999999999999999999999999"])
def test_nonsense_content_length_is_refused(
    raw: socket.socket, admin_token: str, key_id: str, length: str
) -> None:
    raw.sendall(
        request_head(
            "POST",
            f"/kms/v1/keys/{key_id}:encrypt",
            admin_token,
            {"Content-Type": "application/json", "Content-Length": length},
        )
    )
    status, _headers, body = read_response(raw)
    # h11 refuses a Content-Length that is not a number before the app sees the request;
    # a huge number reaches the app's own guard. Either way: 4xx, no traceback.
    assert 400 <= status < 500
    for marker in TRACEBACK_MARKERS:
        assert marker.encode() not in body


def test_chunked_body_over_the_limit_is_refused_while_streaming(
    raw: socket.socket, admin_token: str, key_id: str
) -> None:
    raw.sendall(
        request_head(
            "POST",
            f"/kms/v1/keys/{key_id}:encrypt",
            admin_token,
            {"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
        )
    )
    started = time.monotonic()
    chunk = b"A" * 16384
    frame = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    # 320 KiB in 16 KiB chunks and never the terminating chunk: the server has to give up
    # on its own once it has read more than the limit.
    for _ in range(20):
        if not send_quietly(raw, frame):
            break
    status, headers, body = read_response(raw)
    elapsed = time.monotonic() - started
    assert status == 400
    assert_clean_raw_error(status, headers, body)
    assert str(MAX_BODY_BYTES) in body.decode()  # the cap, not the (unfinished) JSON
    assert elapsed < 5.0, f"answered only after {elapsed:.1f}s"


def test_chunked_body_under_the_limit_is_served(
    raw: socket.socket, admin_token: str, key_id: str
) -> None:
    payload = b'{"plaintext": "' + b64(b"chunked").encode() + b'"}'
    raw.sendall(
        request_head(
            "POST",
            f"/kms/v1/keys/{key_id}:encrypt",
            admin_token,
            {"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
        )
        + b"".join(
            f"{1:x}\r\n".encode() + payload[i : i + 1] + b"\r\n" for i in range(len(payload))
        )
        + b"0\r\n\r\n"
    )
    status, _headers, body = read_response(raw)
    assert status == 200, body


def test_content_length_and_chunked_together_are_refused(
    raw: socket.socket, admin_token: str, key_id: str
) -> None:
    raw.sendall(
        request_head(
            "POST",
            f"/kms/v1/keys/{key_id}:encrypt",
            admin_token,
            {
                "Content-Type": "application/json",
                "Content-Length": "5",
                "Transfer-Encoding": "chunked",
            },
        )
        + b"0\r\n\r\n"
    )
    status, _headers, body = read_response(raw)
    assert 400 <= status < 500
    for marker in TRACEBACK_MARKERS:
        assert marker.encode() not in body


# --- JSON bodies ------------------------------------------------------------------------

DEPTH = 10_000


@pytest.mark.parametrize(
    "body",
    [
        b"[" * DEPTH + b"]" * DEPTH,
        b'{"a":' * DEPTH + b"1" + b"}" * DEPTH,
        b'{"plaintext":' + b"[" * DEPTH + b"]" * DEPTH + b"}",
        b'{"labels":' + b'{"a":' * DEPTH + b'"x"' + b"}" * DEPTH + b"}",
        b"[" * DEPTH,  # unterminated
    ],
    ids=["arrays", "objects", "array-in-field", "objects-in-field", "unterminated"],
)
def test_deeply_nested_json_is_refused(client: httpx.Client, key_id: str, body: bytes) -> None:
    assert_clean_error(post_raw(client, f"/kms/v1/keys/{key_id}:encrypt", body), 400)
    assert_clean_error(post_raw(client, "/kms/v1/keys", body), 400)


@pytest.mark.parametrize("depth", [33, 900, 1020])
def test_deep_json_with_an_escape_is_refused_not_a_500(
    client: httpx.Client, key_id: str, depth: int
) -> None:
    """A backslash escape sends the body through the duplicate-member check, which walks
    it recursively: it must meet a depth limit first (issue 15: ~1,000 deep gave 500)."""
    nested = b'{"a\\u0062":' * depth + b"1" + b"}" * depth
    body = b'{"labels":' + nested + b"}"
    for path in (f"/kms/v1/keys/{key_id}:encrypt", "/kms/v1/keys"):
        r = post_raw(client, path, body)
        assert_clean_error(r, 400)
        assert r.json()["code"] == 3
        assert "nest" in r.json()["message"]


def test_nesting_the_parser_accepts_is_still_refused_cleanly(
    client: httpx.Client, key_id: str
) -> None:
    depth = 500
    nested = b'{"a":' * depth + b"1" + b"}" * depth
    for field in (b"labels", b"accessBindings", b"plaintext"):
        body = b'{"' + field + b'":' + nested + b"}"
        assert_clean_error(post_raw(client, f"/kms/v1/keys/{key_id}:encrypt", body), 400)
        assert_clean_error(post_raw(client, "/kms/v1/keys", body), 400)
        assert_clean_error(
            post_raw(client, f"/kms-hsm/v1/folders/{FOLDER}:setAccessBindings", body), 400
        )


@pytest.mark.parametrize(
    "body",
    [
        b"\xff\xfe\xfd",
        b'{"plaintext": "\xff\xfe"}',
        b'{"folderId": "b1g\xc3\x28", "defaultAlgorithm": "AES_256"}',
        b'{"plaintext": "YQ==", "\xed\xa0\x80": 1}',  # a UTF-8-encoded lone surrogate
        b'{"plaintext": "\xc0\xaf"}',  # overlong encoding of "/"
        b"\xef\xbb\xbf" + b'{"plaintext": "YQ=="}',  # a byte order mark
    ],
    ids=["garbage", "in-string", "in-id", "surrogate-key", "overlong", "bom"],
)
def test_invalid_utf8_is_refused(client: httpx.Client, key_id: str, body: bytes) -> None:
    assert_clean_error(post_raw(client, f"/kms/v1/keys/{key_id}:encrypt", body), 400)
    assert_clean_error(post_raw(client, "/kms/v1/keys", body), 400)


def test_escaped_lone_surrogate_is_refused_or_handled(client: httpx.Client) -> None:
    body = b'{"folderId": "b1g\\ud800", "name": "\\udfff", "defaultAlgorithm": "AES_256"}'
    r = post_raw(client, "/kms/v1/keys", body)
    assert_clean_error(r, 400)


@pytest.mark.parametrize(
    "fields",
    [
        {"name": "nul\u0000name"},
        {"description": "\u0000" * 10},
        {"labels": {"a": "\u0000"}},
        {"labels": {"\u0000": "a"}},
        {"folderId": "b1g\u0000folder"},
    ],
    ids=["name", "description", "label-value", "label-key", "folder"],
)
def test_nul_in_key_fields(client: httpx.Client, fields: dict[str, object]) -> None:
    body = {"folderId": FOLDER, "defaultAlgorithm": "AES_256", **fields}
    r = client.post("/kms/v1/keys", json=body)
    if r.status_code == 200:
        # Accepted: it must then round-trip exactly, not be truncated at the NUL.
        key = r.json()["response"]
        for name, value in fields.items():
            assert key.get(name) == value, (name, key)
        got = client.get(f"/kms/v1/keys/{key['id']}")
        assert got.status_code == 200
        for name, value in fields.items():
            assert got.json().get(name) == value
    else:
        assert_clean_error(r, 400)


@pytest.mark.parametrize(
    "body",
    [
        {"plaintext": "YQ==", "versionId": "\u0000"},
        {"plaintext": "YQ==", "versionId": "abc\u0000def"},
        {"plaintext": "\u0000YQ=="},
        {"plaintext": "YQ==", "aadContext": "\u0000"},
        {"\u0000": "YQ=="},
    ],
    ids=["version", "version-middle", "plaintext", "aad", "field-name"],
)
def test_nul_in_encrypt_fields_is_refused(
    client: httpx.Client, key_id: str, body: dict[str, object]
) -> None:
    r = client.post(f"/kms/v1/keys/{key_id}:encrypt", json=body)
    assert r.status_code in (400, 404)
    assert_clean_error(r)


@pytest.mark.parametrize(
    "path",
    ["/kms/v1/keys/%00", "/kms/v1/keys/abc%00def", "/operations/%00", "/kms/v1/keys/%00/versions"],
)
def test_nul_in_path_ids(client: httpx.Client, path: str) -> None:
    r = client.get(path)
    assert r.status_code in (400, 404)
    assert_clean_error(r)


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=xyz",
        "application/xml",
        "application/jsonx",
        "application/json-patch+json",
        "*/*",
        "application",
        "\u00e9/\u00e9",
    ],
)
def test_wrong_content_type_is_refused(
    client: httpx.Client, key_id: str, content_type: str
) -> None:
    body = b'{"plaintext": "YQ=="}'
    if content_type.startswith("multipart"):
        body = (
            b'--xyz\r\nContent-Disposition: form-data; name="plaintext"\r\n\r\nYQ==\r\n--xyz--\r\n'
        )
    elif "urlencoded" in content_type:
        body = b"plaintext=YQ%3D%3D"
    headers = {b"content-type": content_type.encode("utf-8")}
    r = client.post(f"/kms/v1/keys/{key_id}:encrypt", content=body, headers=headers)
    assert_clean_error(r, 400)
    assert "content-type" in r.json()["message"]
    r = client.post("/kms/v1/keys", content=body, headers=headers)
    assert_clean_error(r, 400)


def test_multipart_upload_via_files_is_refused(client: httpx.Client, key_id: str) -> None:
    r = client.post(f"/kms/v1/keys/{key_id}:encrypt", files={"plaintext": ("p", b"YQ==")})
    assert_clean_error(r, 400)


@pytest.mark.parametrize(
    "body",
    [b"[]", b'[{"plaintext": "YQ=="}]', b"42", b"-1.5e300", b"null", b"true", b'"plaintext"'],
)
def test_non_object_json_is_refused(client: httpx.Client, key_id: str, body: bytes) -> None:
    r = post_raw(client, f"/kms/v1/keys/{key_id}:encrypt", body)
    assert_clean_error(r, 400)
    assert "JSON object" in r.json()["message"]
    assert_clean_error(post_raw(client, "/kms/v1/keys", body), 400)
    assert_clean_error(post_raw(client, f"/kms/v1/keys/{key_id}:setPrimaryVersion", body), 400)


@pytest.mark.parametrize(
    "body", [b"{", b"{}}", b"{'plaintext': 'YQ=='}", b'{"plaintext": NaN}', b"{}garbage"]
)
def test_malformed_json_is_refused(client: httpx.Client, key_id: str, body: bytes) -> None:
    assert_clean_error(post_raw(client, f"/kms/v1/keys/{key_id}:encrypt", body), 400)


# --- page sizes and query strings -------------------------------------------------------

BAD_PAGE_SIZES = ["1001", "99999999999999999999", "-1", "1e3", "0x10", "1.0", " 5", "5 ", "abc"]


@pytest.mark.parametrize("page_size", BAD_PAGE_SIZES)
def test_bad_page_size_on_list_keys(client: httpx.Client, page_size: str) -> None:
    r = client.get("/kms/v1/keys", params={"folderId": "x", "pageSize": page_size})
    assert_clean_error(r, 400)


@pytest.mark.parametrize("page_size", ["1001", "99999999999999999999", "-1", "1e3"])
@pytest.mark.parametrize(
    "path",
    [
        "/kms/v1/keys/{key}/versions",
        "/kms/v1/keys/{key}/operations",
        "/kms/v1/keys/{key}:listAccessBindings",
        "/kms-hsm/v1/folders/" + FOLDER + ":listAccessBindings",
    ],
)
def test_bad_page_size_on_other_lists(
    client: httpx.Client, key_id: str, path: str, page_size: str
) -> None:
    r = client.get(path.format(key=key_id), params={"pageSize": page_size})
    assert_clean_error(r, 400)


@pytest.mark.parametrize("page_size", ["\uff15", "\u0661\u0660"])
def test_non_ascii_digits_page_size_is_refused(client: httpx.Client, page_size: str) -> None:
    r = client.get("/kms/v1/keys", params={"folderId": "x", "pageSize": page_size})
    assert_clean_error(r, 400)


def test_page_size_at_the_limit_is_served(client: httpx.Client) -> None:
    r = client.get("/kms/v1/keys", params={"folderId": "x", "pageSize": "1000"})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    "params",
    [
        {"folderId": "x", "pageToken": "A" * 8000},
        {"folderId": "x", "pageToken": "%%%%"},
        {"folderId": "x" * 8000},
        {"folderId": "x", "unknown": "1"},
        {"folderId": "x", **{f"p{i}": "v" for i in range(500)}},
    ],
    ids=["long-token", "garbage-token", "long-folder", "unknown-param", "many-params"],
)
def test_long_or_odd_query_strings_are_refused(
    client: httpx.Client, params: dict[str, str]
) -> None:
    assert_clean_error(client.get("/kms/v1/keys", params=params), 400)


def test_repeated_query_parameter(client: httpx.Client) -> None:
    r = client.get("/kms/v1/keys?folderId=x&pageSize=5&pageSize=99999")
    assert r.status_code in (200, 400), r.text
    if r.status_code != 200:
        assert_clean_error(r)


@pytest.mark.parametrize("length", [12_000, 100_000, 1_000_000])
def test_query_string_over_the_http_limit_is_refused(
    raw: socket.socket, admin_token: str, length: int
) -> None:
    # httpx refuses to build such URLs, so the request goes over a raw socket. Under uvicorn's
    # (h11's) 16 KiB limit for a request head the app answers; over it, uvicorn does.
    path = "/kms/v1/keys?folderId=x&pageToken=" + "A" * length
    send_quietly(raw, request_head("GET", path, admin_token, {}))
    status, headers, body = read_response(raw)
    assert 400 <= status < 500, status
    for marker in TRACEBACK_MARKERS:
        assert marker.encode() not in body
    if headers.get("content-type", "").startswith("application/json"):
        assert_clean_raw_error(status, headers, body)


# --- field values -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b'{"plaintext": "YQ==", "plaintext": "Yg=="}',
        b'{"plaintext": 5, "plaintext": "YQ=="}',
        b'{"plaintext": "YQ==", "versionId": "nope", "versionId": ""}',
    ],
    ids=["same-type", "invalid-then-valid", "hidden-version"],
)
def test_duplicate_json_keys_are_refused(client: httpx.Client, key_id: str, body: bytes) -> None:
    assert_clean_error(post_raw(client, f"/kms/v1/keys/{key_id}:encrypt", body), 400)


def test_camel_and_snake_spelling_of_one_field_is_refused(
    client: httpx.Client, key_id: str
) -> None:
    body = {"plaintext": "YQ==", "aadContext": "YQ==", "aad_context": "Yg=="}
    r = client.post(f"/kms/v1/keys/{key_id}:encrypt", json=body)
    assert_clean_error(r, 400)
    assert "given twice" in r.json()["message"]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/kms/v1/keys/{key}:encrypt", {"plaintext": 12345}),
        ("/kms/v1/keys/{key}:encrypt", {"plaintext": "YQ==", "versionId": 7}),
        ("/kms/v1/keys/{key}:encrypt", {"plaintext": "YQ==", "aadContext": 1.5}),
        ("/kms/v1/keys/{key}:encrypt", {"plaintext": ["YQ=="]}),
        ("/kms/v1/keys/{key}:encrypt", {"plaintext": {"a": "YQ=="}}),
        ("/kms/v1/keys/{key}:encrypt", {"plaintext": True}),
        ("/kms/v1/keys/{key}:decrypt", {"ciphertext": 0}),
        ("/kms/v1/keys/{key}:generateDataKey", {"dataKeySpec": 99}),
        ("/kms/v1/keys/{key}:generateDataKey", {"dataKeySpec": -1}),
        ("/kms/v1/keys/{key}:generateDataKey", {"dataKeySpec": 3.0}),
        ("/kms/v1/keys/{key}:generateDataKey", {"dataKeySpec": True}),
        ("/kms/v1/keys/{key}:generateDataKey", {"skipPlaintext": "true"}),
        ("/kms/v1/keys/{key}:generateDataKey", {"skipPlaintext": 1}),
        ("/kms/v1/keys/{key}:setPrimaryVersion", {"versionId": 1}),
        ("/kms/v1/keys", {"folderId": 42, "defaultAlgorithm": "AES_256"}),
        ("/kms/v1/keys", {"folderId": FOLDER, "defaultAlgorithm": "AES_256", "name": 1}),
        ("/kms/v1/keys", {"folderId": FOLDER, "defaultAlgorithm": "AES_256", "labels": {"a": 1}}),
        ("/kms/v1/keys", {"folderId": FOLDER, "defaultAlgorithm": "AES_256", "labels": ["a"]}),
        (
            "/kms/v1/keys",
            {"folderId": FOLDER, "defaultAlgorithm": "AES_256", "rotationPeriod": 86400},
        ),
        (
            "/kms/v1/keys",
            {"folderId": FOLDER, "defaultAlgorithm": "AES_256", "rotationPeriod": "1e400s"},
        ),
        (
            "/kms/v1/keys",
            {"folderId": FOLDER, "defaultAlgorithm": "AES_256", "deletionProtection": "yes"},
        ),
        ("/kms/v1/keys", {"folderId": FOLDER, "defaultAlgorithm": 2**63}),
        ("/kms-hsm/v1/folders/" + FOLDER + ":setAccessBindings", {"accessBindings": "x"}),
        ("/kms-hsm/v1/folders/" + FOLDER + ":setAccessBindings", {"accessBindings": [1]}),
        (
            "/kms-hsm/v1/folders/" + FOLDER + ":updateAccessBindings",
            {"accessBindingDeltas": [{"action": 1, "accessBinding": {}}]},
        ),
    ],
)
def test_wrong_json_types_are_refused(
    client: httpx.Client, key_id: str, path: str, body: dict[str, object]
) -> None:
    assert_clean_error(client.post(path.format(key=key_id), json=body), 400)


@pytest.mark.parametrize("how", ["create", "update"])
def test_huge_rotation_period_is_refused_or_harmless(
    client: httpx.Client, runtime: Runtime, how: str
) -> None:
    huge = "999999999999s"
    body: dict[str, object] = {"folderId": FOLDER, "defaultAlgorithm": "AES_256"}
    if how == "create":
        body["rotationPeriod"] = huge
    r = client.post("/kms/v1/keys", json=body)
    if r.status_code != 200:
        assert_clean_error(r, 400)
        return
    created = r.json()["response"]["id"]
    try:
        if how == "update":
            r = client.patch(
                f"/kms/v1/keys/{created}",
                json={"updateMask": "rotationPeriod", "rotationPeriod": huge},
            )
            if r.status_code != 200:
                assert_clean_error(r, 400)
                return
        assert client.get(f"/kms/v1/keys/{created}").status_code == 200
        # What the scheduler asks on each pass (read-only): it must not blow up.
        runtime.keys.due_rotations()
    finally:
        # Deleted keys are not considered for rotation: the session is left as it was.
        assert client.delete(f"/kms/v1/keys/{created}").status_code == 200


@pytest.mark.parametrize(
    "body",
    [
        b'{"folderId": "b1ghostile", "defaultAlgorithm": 99999999999999999999999999}',
        b'{"folderId": "b1ghostile", "defaultAlgorithm": 1e400}',
        b'{"folderId": "b1ghostile", "defaultAlgorithm": -0}',
        b'{"folderId": "b1ghostile", "defaultAlgorithm": 3e0}',
    ],
    ids=["bigint", "inf", "minus-zero", "float-exponent"],
)
def test_numbers_out_of_range_are_refused(client: httpx.Client, body: bytes) -> None:
    assert_clean_error(post_raw(client, "/kms/v1/keys", body), 400)


@pytest.mark.parametrize(
    "value", ["Y", "YQ===", "Y===", "YQ==YQ==", "Y Q==", "YQ==\n", "=YQ=", "YQ*=", "\u00e9\u00e9=="]
)
@pytest.mark.parametrize("field", ["plaintext", "aadContext"])
def test_invalid_base64_is_refused(
    client: httpx.Client, key_id: str, field: str, value: str
) -> None:
    body = {"plaintext": "YQ==", field: value}
    r = client.post(f"/kms/v1/keys/{key_id}:encrypt", json=body)
    assert_clean_error(r, 400)
    assert field in r.json()["message"]


@pytest.mark.parametrize("value", ["YQ==YQ==", "Y", "YQ===", "!!!!"])
def test_invalid_base64_ciphertext_is_refused(
    client: httpx.Client, key_id: str, value: str
) -> None:
    r = client.post(f"/kms/v1/keys/{key_id}:decrypt", json={"ciphertext": value})
    assert_clean_error(r, 400)


@pytest.mark.parametrize("value", ["YQ", "YQ=", "-_-_", "+/+/"])
def test_lenient_base64_forms_are_accepted(client: httpx.Client, key_id: str, value: str) -> None:
    # proto3 JSON: standard or URL-safe alphabet, padding optional.
    r = client.post(f"/kms/v1/keys/{key_id}:encrypt", json={"plaintext": value})
    assert r.status_code == 200, r.text


@given(st.text(alphabet="ABab09+/=-_ \n*\u00e9", max_size=14) | st.binary().map(b64))
@example("YQ==YQ==")
@example("AAAA====")
def test_base64_fast_path_decides_as_the_general_path(value: str) -> None:
    """The strict one-call decoder of standard base64 accepts nothing the general path
    refuses, and gives the same bytes."""
    try:
        expected: bytes | None = decode_any_base64("plaintext", value)
    except FieldError:
        expected = None
    try:
        got: bytes | None = decode_base64("plaintext", value)
    except FieldError:
        got = None
    assert got == expected


def test_plaintext_over_the_field_limit_is_refused(client: httpx.Client, key_id: str) -> None:
    r = client.post(f"/kms/v1/keys/{key_id}:encrypt", json={"plaintext": b64(b"a" * 32769)})
    assert_clean_error(r, 400)


# --- path ids ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key_path",
    [
        "abc%2Fdef",
        "abc%2fdef",
        "..%2F..%2Fhealthz",
        "%2E%2E",
        "%E2%98%83",  # a snowman
        "\u2603",
        "%F0%9F%94%91" * 12,
        "%FF%FE",
        "a" * 51,
        "a" * 5000,
        "%20",
        "abc%3Adef",
        "abc;def",
        "abc%0D%0AX-Injected:%201",
    ],
)
def test_odd_path_ids(client: httpx.Client, key_path: str) -> None:
    for method, suffix in (
        ("GET", ""),
        ("GET", "/versions"),
        ("POST", ":encrypt"),
        ("POST", ":rotate"),
        ("DELETE", ""),
        ("GET", ":listAccessBindings"),
    ):
        body = {"plaintext": "YQ=="} if suffix == ":encrypt" else None
        r = client.request(method, f"/kms/v1/keys/{key_path}{suffix}", json=body)
        assert r.status_code in (400, 404), (method, suffix, r.status_code, r.text)
        assert_clean_error(r)
        assert "x-injected" not in r.headers
    r = client.get(f"/operations/{key_path}")
    assert r.status_code in (400, 404), r.text
    assert_clean_error(r)


def test_fifty_one_character_ids_are_refused_with_400(client: httpx.Client) -> None:
    long_id = "a" * 51
    for method, path in (
        ("GET", f"/kms/v1/keys/{long_id}"),
        ("POST", f"/kms/v1/keys/{long_id}:rotate"),
        ("GET", f"/operations/{long_id}"),
    ):
        assert_clean_error(client.request(method, path), 400)
    r = client.post(f"/kms/v1/keys/{long_id}:encrypt", json={"plaintext": "YQ=="})
    assert_clean_error(r, 400)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PUT", "/kms/v1/keys/abc"),
        ("POST", "/kms/v1/keys/abc"),
        ("TRACE", "/kms/v1/keys/abc"),
        ("OPTIONS", "/kms/v1/keys"),
        ("DELETE", "/kms/v1/keys"),
        ("PUT", "/kms/v1/keys/abc:encrypt"),
        ("PATCH", "/operations/abc"),
        ("CONNECT", "/kms/v1/keys/abc"),
    ],
)
def test_methods_a_path_does_not_allow(client: httpx.Client, method: str, path: str) -> None:
    assert_clean_error(client.request(method, path), 405)


def test_get_on_a_verb_path(client: httpx.Client) -> None:
    # A known verb: the path exists, the method does not (405/12, issue 15 §8).
    assert_clean_error(client.get("/kms/v1/keys/abc:rotate"), 405)
    # An unknown one: GET /kms/v1/keys/{keyId} with keyId "abc:nope" (ids hold no ":").
    assert_clean_error(client.get("/kms/v1/keys/abc:nope"), 400)


# --- headers ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [
        b"Bearer " + b"A" * 8000,
        b"Bearer",
        b"Bearer \t ",
        b"Basic YTpi",
        b"bearer\tabc",
        b"Bearer \xff\xfe",
        b"Bearer \xc3\xa9",
        b"Bearer a b c",
        b"Bearer \x00",
    ],
    ids=["long", "no-token", "blank-token", "basic", "tab", "latin1", "utf8", "spaces", "nul"],
)
def test_hostile_authorization_headers(
    raw: socket.socket, key_id: str, authorization: bytes
) -> None:
    body = b'{"plaintext": "YQ=="}'
    raw.sendall(
        f"POST /kms/v1/keys/{key_id}:encrypt HTTP/1.1\r\nHost: x\r\n".encode()
        + b"Authorization: "
        + authorization
        + f"\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    status, headers, body = read_response(raw)
    if authorization.endswith(b"\x00"):
        # A NUL in a header value breaks HTTP framing: uvicorn (h11) refuses it.
        assert 400 <= status < 500
        return
    assert status == 401
    assert_clean_raw_error(status, headers, body)


def test_hostile_request_ids_are_bounded(client: httpx.Client, key_id: str) -> None:
    r = client.get(f"/kms/v1/keys/{key_id}", headers={"x-request-id": "r" * 5000})
    assert r.status_code == 200
    assert len(r.headers["x-request-id"]) <= 100
    r = client.get("/kms/v1/keys/nope", headers={b"x-request-id": b"\xff" * 50})
    assert_clean_error(r, 404)


# --- the same strings against PostgreSQL ------------------------------------------------

# (method, path, JSON body) that SQLite stores or looks up happily but PostgreSQL cannot:
# text columns cannot hold NUL, and rotation_period_seconds is a 32-bit integer.
POSTGRES_PROBES: list[tuple[str, str, dict[str, object] | None]] = [
    ("POST", "/kms/v1/keys", {"folderId": FOLDER, "defaultAlgorithm": "AES_256", "name": "a\0b"}),
    ("POST", "/kms/v1/keys", {"folderId": "b1g\0x", "defaultAlgorithm": "AES_256"}),
    (
        "POST",
        "/kms/v1/keys",
        {"folderId": FOLDER, "defaultAlgorithm": "AES_256", "description": "\0"},
    ),
    (
        "POST",
        "/kms/v1/keys",
        {"folderId": FOLDER, "defaultAlgorithm": "AES_256", "rotationPeriod": "2147483648s"},
    ),
    ("GET", "/kms/v1/keys/%00", None),
    ("GET", "/kms/v1/keys?folderId=a%00b", None),
    ("GET", "/operations/a%00b", None),
    ("GET", "/kms-hsm/v1/folders/a%00b:listAccessBindings", None),
    ("POST", "/kms/v1/keys/{key}:encrypt", {"plaintext": "YQ==", "versionId": "a\0"}),
    (
        "POST",
        f"/kms-hsm/v1/folders/{FOLDER}:setAccessBindings",
        {
            "accessBindings": [
                {"roleId": "kms.viewer", "subject": {"id": "a\0", "type": "userAccount"}}
            ]
        },
    ),
]


@pytest.mark.postgres
def test_postgres_refuses_what_it_cannot_store(tmp_path: Path, postgres_url: str) -> None:
    port = free_port()
    env = serve_env(tmp_path / "data", port, KMS_HSM_DATABASE_URL=postgres_url)
    with (tmp_path / "serve.log").open("wb") as log:
        proc = subprocess.Popen([KMS_HSM, "serve"], env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(proc, base)
        token = (tmp_path / "data" / "admin-token").read_text().strip()
        with httpx.Client(
            base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=ANSWER_WITHIN
        ) as pg:
            key = pg.post("/kms/v1/keys", json={"folderId": FOLDER, "defaultAlgorithm": "AES_256"})
            assert key.status_code == 200, key.text
            key_id = key.json()["response"]["id"]
            failures = []
            for method, path, body in POSTGRES_PROBES:
                # A fresh connection each: after a 500 uvicorn drops the connection.
                r = pg.request(
                    method, path.format(key=key_id), json=body, headers={"Connection": "close"}
                )
                if r.status_code >= 500:
                    failures.append(f"{method} {path} {body!r} -> {r.status_code} {r.text}")
                elif r.status_code != 200:
                    assert_clean_error(r)
            assert not failures, "\n".join(failures)
    finally:
        stop(proc)


# --- the process survived ---------------------------------------------------------------


def test_service_still_serves_after_the_barrage(client: httpx.Client, key_id: str) -> None:
    """Runs last in this module: the same process still encrypts and decrypts."""
    plaintext = b"still alive"
    r = client.post(
        f"/kms/v1/keys/{key_id}:encrypt",
        json={"plaintext": b64(plaintext), "aadContext": b64(b"ctx")},
    )
    assert r.status_code == 200, r.text
    ciphertext = r.json()["ciphertext"]
    r = client.post(
        f"/kms/v1/keys/{key_id}:decrypt", json={"ciphertext": ciphertext, "aadContext": b64(b"ctx")}
    )
    assert r.status_code == 200, r.text
    assert base64.b64decode(r.json()["plaintext"]) == plaintext
    assert client.get("/healthz").status_code == 200


@pytest.mark.parametrize(
    ("period", "expected"),
    [
        ("\u0661\u0662s", "duration string"),  # Arabic-Indic digits: not 12 s
        ("\uff11\uff12s", "duration string"),  # fullwidth digits
        ("86400.0000001s", "finer than a microsecond"),  # not silently 86400 s
    ],
)
def test_durations_are_ascii_and_never_silently_cut(
    client: httpx.Client, period: str, expected: str
) -> None:
    r = client.post(
        "/kms/v1/keys",
        json={"folderId": FOLDER, "defaultAlgorithm": "AES_256", "rotationPeriod": period},
    )
    body = assert_clean_error(r, 400)
    assert body["code"] == 3
    assert expected in str(body["message"])
