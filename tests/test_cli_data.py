"""The data CLI (``kms-hsm keys …``, ``encrypt``, ``decrypt``, ``datakey``) through the real
console script in a subprocess, against a real ``kms-hsm serve`` (HTTPS, SoftHSM2)."""

from __future__ import annotations

import base64
import json
import os
import pty
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import KMS_HSM, REPO, free_port
from tests.grpc_support import KmsServer, running_server

FOLDER = "b1g-cli"

# Every byte value, twice, and bytes that are not UTF-8: the pipes must carry them unchanged.
BINARY = bytes(range(256)) * 2 + b"\xff\xfe\x00\r\n\x1a"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KmsServer]:
    """One server for the module (start-up costs seconds)."""
    with running_server(tmp_path_factory.mktemp("cli-data")) as s:
        yield s


def cli_env(server: KmsServer, **extra: str) -> dict[str, str]:
    """The environment of a CLI user: endpoint, CA and token from the environment; this
    checkout's kms_hsm first on the path (the console script is installed from main)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KMS_HSM_", "SOFTHSM2_"))}
    env.update(
        PYTHONPATH=str(REPO),
        KMS_HSM_ENDPOINT=server.rest_url,
        KMS_HSM_CA_FILE=str(server.pki.ca),
        KMS_HSM_TOKEN=server.admin_token,
    )
    env.update(extra)
    return {k: v for k, v in env.items() if v != ""}


def run(
    server: KmsServer,
    *args: str,
    stdin: bytes = b"",
    env: dict[str, str] | None = None,
    expect: int = 0,
) -> subprocess.CompletedProcess[bytes]:
    """``kms-hsm ARGS`` with ``stdin``; asserts the exit code, and that a failure is one
    line on stderr (no traceback) and a success writes nothing there."""
    result = subprocess.run(
        [KMS_HSM, *args],
        input=stdin,
        env=env if env is not None else cli_env(server),
        capture_output=True,
        timeout=120,
    )
    err = result.stderr.decode(errors="replace")
    assert result.returncode == expect, (args, result.returncode, result.stdout[:500], err)
    assert "Traceback" not in err, err
    if expect == 0:
        assert err == "", err
    elif expect != 2 or err.startswith("kms-hsm:"):  # argparse's usage errors have 2 lines
        assert len(err.strip().splitlines()) == 1 and err.startswith("kms-hsm: "), err
    return result


def run_json(server: KmsServer, *args: str) -> dict[str, object]:
    """``kms-hsm ARGS --json``, parsed."""
    out = json.loads(run(server, *args, "--json").stdout)
    assert isinstance(out, dict)
    return out


def new_key(server: KmsServer, name: str) -> str:
    """A fresh AES-256 key's id."""
    key = run_json(server, "keys", "create", "--folder-id", FOLDER, "--name", name)
    return str(key["id"])


def test_the_console_script_runs_this_checkout(server: KmsServer) -> None:
    out = run(server, "keys", "--help").stdout.decode()
    assert "schedule-destroy" in out


def test_key_lifecycle_every_keys_command_table_and_json(server: KmsServer) -> None:
    # create: the table, then --json with the REST API's camelCase names
    created = run(
        server,
        *("keys", "create", "--folder-id", FOLDER, "--name", "life"),
        *("--description", "cli test", "--label", "team=cli", "--label", "env=test"),
        *("--rotation-period", "30d", "--deletion-protection"),
    ).stdout.decode()
    fields = dict(
        (name.strip(), value.strip())
        for name, _, value in (line.partition(":") for line in created.splitlines())
    )
    key_id = fields["id"]
    assert fields["name"] == "life" and fields["folder"] == FOLDER
    assert fields["labels"] == "env=test,team=cli" and fields["status"] == "ACTIVE"
    assert fields["deletion protection"] == "yes" and fields["rotation period"] == "2592000s"
    first_version = fields["primary version"]

    got = run_json(server, "keys", "get", key_id)
    assert got["id"] == key_id and got["folderId"] == FOLDER and got["name"] == "life"
    assert got["labels"] == {"team": "cli", "env": "test"} and got["status"] == "ACTIVE"
    assert got["rotationPeriod"] == "2592000s" and got["deletionProtection"] is True
    assert got["defaultAlgorithm"] == "AES_256"
    primary = got["primaryVersion"]
    assert isinstance(primary, dict) and primary["id"] == first_version
    assert primary["primary"] is True and primary["keyId"] == key_id
    assert str(got["createdAt"]).endswith("Z")
    assert key_id in run(server, "keys", "get", key_id).stdout.decode()

    # list: every key of the folder, in a table and as {"keys": [...]}
    listed = run(server, "keys", "list", "--folder-id", FOLDER).stdout.decode().splitlines()
    assert listed[0].split()[:3] == ["ID", "NAME", "STATUS"]
    assert any(line.split()[0] == key_id and "life" in line for line in listed[1:])
    keys = run_json(server, "keys", "list", "--folder-id", FOLDER)["keys"]
    assert isinstance(keys, list) and key_id in [k["id"] for k in keys]
    # the folder from the environment
    env = cli_env(server, KMS_HSM_FOLDER_ID=FOLDER)
    assert key_id in run(server, "keys", "list", env=env).stdout.decode()

    # update: only the fields given change
    updated = run_json(server, "keys", "update", key_id, "--name", "renamed", "--label", "team=ops")
    assert updated["name"] == "renamed" and updated["labels"] == {"team": "ops"}
    assert updated["description"] == "cli test"
    updated = run_json(server, "keys", "update", key_id, "--status", "INACTIVE")
    assert updated["status"] == "INACTIVE" and updated["name"] == "renamed"
    updated = run_json(server, "keys", "update", key_id, "--status", "ACTIVE", "--clear-labels")
    assert updated["status"] == "ACTIVE" and updated["labels"] == {}
    run(server, "keys", "update", key_id, expect=2)  # nothing to change

    # rotate: a new primary version
    rotated = run_json(server, "keys", "rotate", key_id)
    second_version = str(rotated["id"])
    assert rotated["primary"] is True and second_version != first_version
    assert "primary:" in run(server, "keys", "rotate", key_id).stdout.decode()

    # versions: table and {"keyVersions": [...]}
    versions = run_json(server, "keys", "versions", key_id)["keyVersions"]
    assert isinstance(versions, list) and len(versions) == 3
    assert first_version in [v["id"] for v in versions]
    table = run(server, "keys", "versions", key_id).stdout.decode().splitlines()
    assert table[0].split()[:3] == ["ID", "STATUS", "ALGORITHM"] and len(table) == 4

    # set-primary back to the first version
    key = run_json(server, "keys", "set-primary", key_id, first_version)
    assert isinstance(key["primaryVersion"], dict)
    assert key["primaryVersion"]["id"] == first_version
    run(server, "keys", "set-primary", key_id, second_version)  # the table form
    run(server, "keys", "set-primary", key_id, first_version)

    # schedule-destroy / cancel-destroy of a version that is not the primary
    scheduled = run_json(
        server,
        *("keys", "schedule-destroy", key_id, second_version, "--pending-period", "7d"),
    )
    assert scheduled["status"] == "SCHEDULED_FOR_DESTRUCTION" and scheduled["destroyAt"]
    cancelled = run_json(server, "keys", "cancel-destroy", key_id, second_version)
    assert cancelled["status"] == "ACTIVE" and cancelled["destroyAt"] is None
    out = run(server, "keys", "schedule-destroy", key_id, second_version).stdout.decode()
    assert "SCHEDULED_FOR_DESTRUCTION" in out
    assert "ACTIVE" in run(server, "keys", "cancel-destroy", key_id, second_version).stdout.decode()

    # delete: refused while protected (the server's word, exit 1), then done
    refused = run(server, "keys", "delete", key_id, expect=1)
    assert b"protect" in refused.stderr.lower()
    run(server, "keys", "update", key_id, "--no-deletion-protection")
    deleted = run_json(server, "keys", "delete", key_id)
    assert deleted["id"] == key_id
    run(server, "keys", "get", key_id, expect=4)
    other = new_key(server, "deleted-as-table")
    assert other in run(server, "keys", "delete", other).stdout.decode()


def test_binary_round_trip_through_stdin_and_stdout(server: KmsServer) -> None:
    key_id = new_key(server, "pipes")
    ciphertext = run(server, "encrypt", key_id, stdin=BINARY).stdout
    assert BINARY not in ciphertext and len(ciphertext) > len(BINARY)
    assert run(server, "decrypt", key_id, stdin=ciphertext).stdout == BINARY
    # an empty plaintext: the server's rule (as Yandex's), one line and exit 1
    refused = run(server, "encrypt", key_id, stdin=b"", expect=1)
    assert b"plaintext" in refused.stderr


def test_binary_ciphertext_is_not_written_to_a_terminal(server: KmsServer) -> None:
    key_id = new_key(server, "terminal")
    controller, terminal = pty.openpty()
    try:
        result = subprocess.run(
            [KMS_HSM, "encrypt", key_id],
            input=b"to a terminal",
            stdout=terminal,
            stderr=subprocess.PIPE,
            env=cli_env(server),
            timeout=120,
        )
    finally:
        os.close(terminal)
        os.close(controller)
    assert result.returncode == 2
    assert result.stderr.startswith(b"kms-hsm: refusing to write binary ciphertext")
    # base64 is fine on a terminal
    controller, terminal = pty.openpty()
    try:
        result = subprocess.run(
            [KMS_HSM, "encrypt", key_id, "--out-base64"],
            input=b"to a terminal",
            stdout=terminal,
            stderr=subprocess.PIPE,
            env=cli_env(server),
            timeout=120,
        )
        printed = os.read(controller, 4096)
    finally:
        os.close(terminal)
        os.close(controller)
    assert result.returncode == 0, result.stderr
    assert base64.b64decode(printed.strip())


def test_files_base64_json_and_aad(server: KmsServer, tmp_path: Path) -> None:
    key_id = new_key(server, "files")
    plain = tmp_path / "plain.bin"
    plain.write_bytes(BINARY)
    sealed = tmp_path / "sealed.bin"
    opened = tmp_path / "opened.bin"
    aad = ("--aad", "order=42")
    run(server, "encrypt", key_id, "--in", str(plain), "--out", str(sealed), *aad)
    assert stat.S_IMODE(sealed.stat().st_mode) & 0o600 == 0o600
    run(server, "decrypt", key_id, "--in", str(sealed), "--out", str(opened), *aad)
    assert opened.read_bytes() == BINARY
    assert stat.S_IMODE(opened.stat().st_mode) == 0o600  # plaintext: the owner's only
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []

    # a wrong or missing AAD: refused with the one decrypt message, no plaintext anywhere
    for wrong in (("--aad", "order=43"), ()):
        refused = run(server, "decrypt", key_id, "--in", str(sealed), *wrong, expect=1)
        assert b"ciphertext is invalid" in refused.stderr and refused.stdout == b""
    refused = run(
        server,
        *("decrypt", key_id, "--in", str(sealed), "--out", str(tmp_path / "none")),
        *("--aad", "x"),
        expect=1,
    )
    assert not (tmp_path / "none").exists()
    # more than the server takes in one request: its message, exit 1
    too_big = run(server, "encrypt", key_id, stdin=b"x" * 40000, expect=1)
    assert b"plaintext" in too_big.stderr
    # garbage is refused the same way
    refused = run(server, "decrypt", key_id, stdin=b"not a ciphertext at all", expect=1)
    assert b"ciphertext is invalid" in refused.stderr

    # base64 out of encrypt, base64 into decrypt; binary AAD as base64
    aad_b64 = ("--aad-base64", base64.b64encode(b"\x00\xffctx").decode())
    text = run(server, "encrypt", key_id, "--out-base64", *aad_b64, stdin=b"hello").stdout
    assert text.endswith(b"\n") and base64.b64decode(text)
    out = run(server, "decrypt", key_id, "--in-base64", *aad_b64, stdin=text).stdout
    assert out == b"hello"
    b64_plain = base64.b64encode(b"from base64")
    text = run(server, "encrypt", key_id, "--in-base64", "--out-base64", stdin=b64_plain).stdout
    out = run(server, "decrypt", key_id, "--in-base64", "--out-base64", stdin=text).stdout
    assert base64.b64decode(out) == b"from base64"
    run(server, "decrypt", key_id, "--in-base64", stdin=b"%%% not base64", expect=2)

    # --json: the REST API's fields, bytes in base64
    sealed_json = json.loads(run(server, "encrypt", key_id, "--json", stdin=b"json").stdout)
    assert sealed_json["keyId"] == key_id and sealed_json["versionId"]
    ciphertext = base64.b64decode(sealed_json["ciphertext"])
    opened_json = json.loads(run(server, "decrypt", key_id, "--json", stdin=ciphertext).stdout)
    assert base64.b64decode(opened_json["plaintext"]) == b"json"
    assert opened_json["versionId"] == sealed_json["versionId"]

    # --version-id: an older version encrypts when asked
    first = json.loads(run(server, "encrypt", key_id, "--json", stdin=b"v").stdout)["versionId"]
    run(server, "keys", "rotate", key_id)
    pinned = json.loads(
        run(server, "encrypt", key_id, "--json", "--version-id", first, stdin=b"v").stdout
    )
    assert pinned["versionId"] == first
    latest = json.loads(run(server, "encrypt", key_id, "--json", stdin=b"v").stdout)
    assert latest["versionId"] != first


def test_datakey_with_and_without_plaintext(server: KmsServer, tmp_path: Path) -> None:
    key_id = new_key(server, "datakeys")
    made = run_json(server, "datakey", key_id, "--spec", "AES_128", "--aad", "dk")
    plaintext = base64.b64decode(str(made["dataKeyPlaintext"]))
    ciphertext = base64.b64decode(str(made["dataKeyCiphertext"]))
    assert len(plaintext) == 16 and made["keyId"] == key_id
    # its ciphertext decrypts (with the same AAD) to its plaintext
    assert run(server, "decrypt", key_id, "--aad", "dk", stdin=ciphertext).stdout == plaintext
    run(server, "decrypt", key_id, stdin=ciphertext, expect=1)

    bare = run_json(server, "datakey", key_id, "--no-plaintext")
    assert bare["dataKeyPlaintext"] is None and bare["dataKeyCiphertext"]
    out = run(server, "decrypt", key_id, stdin=base64.b64decode(str(bare["dataKeyCiphertext"])))
    assert len(out.stdout) == 32
    table = run(server, "datakey", key_id, "--no-plaintext").stdout.decode()
    assert "(not requested)" in table

    # files: raw bytes, the plaintext key 0600 and not printed
    cipher_file, plain_file = tmp_path / "dk.enc", tmp_path / "dk.key"
    printed = run(
        server,
        *("datakey", key_id, "--spec", "AES_192"),
        *("--ciphertext-out", str(cipher_file), "--plaintext-out", str(plain_file)),
    ).stdout.decode()
    key_bytes = plain_file.read_bytes()
    assert len(key_bytes) == 24 and stat.S_IMODE(plain_file.stat().st_mode) == 0o600
    assert base64.b64encode(key_bytes).decode() not in printed
    assert run(server, "decrypt", key_id, "--in", str(cipher_file)).stdout == key_bytes
    run(server, "datakey", key_id, "--no-plaintext", "--plaintext-out", "x", expect=2)
    run(server, "datakey", key_id, "--spec", "AES_512", expect=2)


def test_exit_codes(server: KmsServer, tmp_path: Path) -> None:
    key_id = new_key(server, "exits")
    # 2: usage
    run(server, "keys", "get", expect=2)
    run(server, "keys", "create", "--name", "no-folder", expect=2)
    run(server, "encrypt", key_id, "--in", str(tmp_path / "missing"), expect=2)
    run(server, "keys", "get", key_id, "--endpoint", "ftp://nowhere", expect=2)
    run(server, "keys", "get", key_id, "--ca-file", str(tmp_path / "no-ca.pem"), expect=2)
    # 3: no token, a token the server does not know (401), no role (403)
    no_token = cli_env(server, KMS_HSM_TOKEN="")
    err = run(server, "keys", "get", key_id, env=no_token, expect=3).stderr
    assert b"KMS_HSM_TOKEN" in err
    bogus = cli_env(server, KMS_HSM_TOKEN="not-a-real-token-value")
    err = run(server, "keys", "get", key_id, env=bogus, expect=3).stderr
    assert b"not-a-real-token-value" not in err
    principal, token, _ = server.principal_with_token("cli-viewer")
    viewer = cli_env(server, KMS_HSM_TOKEN=token)
    # a key the caller may not see at all is "not found" (the server hides its existence)
    run(server, "encrypt", key_id, env=viewer, stdin=b"secret plaintext", expect=4)
    server.cli("bindings", "add", "--key", key_id, "--role", "kms.viewer", "--subject", principal)
    assert key_id in run(server, "keys", "get", key_id, env=viewer).stdout.decode()
    err = run(server, "encrypt", key_id, env=viewer, stdin=b"secret plaintext", expect=3)
    assert b"secret plaintext" not in err.stderr
    run(server, "keys", "rotate", key_id, env=viewer, expect=3)
    # 4: not found
    run(server, "keys", "get", "abcdefghij0123456789", expect=4)
    run(server, "keys", "set-primary", key_id, "abcdefghij0123456789", expect=4)
    # 5: nothing listens there (retries within the deadline, then give up)
    closed = f"http://127.0.0.1:{free_port()}"
    err = run(server, "keys", "get", key_id, "--endpoint", closed, "--timeout", "2", expect=5)
    assert b"cannot reach" in err.stderr or b"deadline" in err.stderr
    # 1: the server refused (here: an invalid argument)
    run(server, "keys", "create", "--folder-id", "bad folder id!", expect=1)


def test_token_from_file_and_never_from_argv(server: KmsServer, tmp_path: Path) -> None:
    key_id = new_key(server, "token-file")
    token_file = tmp_path / "token"
    token_file.write_text(server.admin_token + "\n")
    token_file.chmod(0o600)
    env = cli_env(server, KMS_HSM_TOKEN="")
    out = run(server, "keys", "get", key_id, "--token-file", str(token_file), env=env)
    assert key_id in out.stdout.decode()
    # the file wins over the environment
    env_bad = cli_env(server, KMS_HSM_TOKEN="wrong-token")
    run(server, "keys", "get", key_id, "--token-file", str(token_file), env=env_bad)

    token_file.chmod(0o644)
    err = run(server, "keys", "get", key_id, "--token-file", str(token_file), env=env, expect=2)
    assert b"chmod 600" in err.stderr and server.admin_token.encode() not in err.stderr

    for flag in (["--token", server.admin_token], [f"--token={server.admin_token}"]):
        refused = run(server, "keys", "get", key_id, *flag, env=env, expect=2)
        assert b"--token refused" in refused.stderr
        assert server.admin_token.encode() not in refused.stderr + refused.stdout
    # Abbreviations are off, and a prefix of a secret's flag is refused before argparse
    # could take it for --token-file and print the secret as a file name.
    for flag in (["--toke", server.admin_token], [f"--tok={server.admin_token}"]):
        refused = run(server, "keys", "get", key_id, *flag, env=env, expect=2)
        assert b"refused" in refused.stderr
        assert server.admin_token.encode() not in refused.stderr + refused.stdout
    # An endpoint that is not a URL, or one with a password, is a usage error, not echoed.
    for endpoint in ("http://[::1", "http://user:hunter2@127.0.0.1:1"):
        bad = run(
            server, "keys", "get", key_id, "--endpoint", endpoint, env=cli_env(server), expect=2
        )
        assert bad.stderr.count(b"\n") == 1 and b"hunter2" not in bad.stderr


def test_help_lists_the_exit_codes(server: KmsServer) -> None:
    for command in (["encrypt"], ["decrypt"], ["datakey"], ["keys", "get"], ["keys"]):
        out = run(server, *command, "--help").stdout.decode()
        assert "exit codes:" in out and "5  unavailable" in out


def test_docs_name_every_command_and_exit_code() -> None:
    from kms_hsm.cli import data

    docs = (REPO / "docs" / "cli.md").read_text()
    for command in (
        *("create", "get", "list", "update", "rotate", "versions", "set-primary"),
        *("schedule-destroy", "cancel-destroy", "delete"),
    ):
        assert f"`keys {command}" in docs, command
    for command in ("encrypt", "decrypt", "datakey"):
        assert f"kms-hsm {command} KEY_ID" in docs, command
    codes = (data.EXIT_OK, data.EXIT_REFUSED, data.EXIT_USAGE, data.EXIT_AUTH)
    codes += (data.EXIT_NOT_FOUND, data.EXIT_UNAVAILABLE, data.EXIT_INTERRUPTED)
    for code in codes:
        assert f"\n| {code} | " in docs, code


def test_a_server_certificate_of_an_unknown_ca_is_refused(server: KmsServer) -> None:
    key_id = new_key(server, "unknown-ca")
    env = cli_env(server, KMS_HSM_CA_FILE="")
    err = run(server, "keys", "get", key_id, env=env, expect=5).stderr
    assert b"CERTIFICATE_VERIFY_FAILED" in err
