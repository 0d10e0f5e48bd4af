"""`kms-hsm envelope encrypt|decrypt` against a real server (TLS REST + gRPC, SoftHSM2):
round trips, every kind of tampering refused with one message and no output left behind,
a 1 GiB stream in constant memory, and one KMS call per file.

The CLI runs as a subprocess with this checkout on PYTHONPATH (the console script would
otherwise import the main checkout's package); `test_cli_runs_this_checkout` checks that.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kms_hsm.tink import KmsClient, envelope, key_uri
from tests.conftest import KMS_HSM, REPO, create_key
from tests.grpc_support import KmsServer, server_fixture

server = server_fixture()

MESSAGE = "kms-hsm: " + envelope.EnvelopeInvalid.default_message
SEGMENT = 1 << 20  # AES256_GCM_HKDF_1MB: ciphertext segments of 1 MiB
MiB = 1 << 20


def _key(server: KmsServer) -> str:
    with server.rest(server.admin_token) as api:
        return str(create_key(api, "AES_256")["id"])


@pytest.fixture(scope="module")
def key_id(server: KmsServer) -> str:
    """The symmetric key most tests encrypt under."""
    return _key(server)


def cli_env(server: KmsServer, **extra: str) -> dict[str, str]:
    """The CLI's environment: this checkout's code, the admin token, the REST endpoint."""
    env = dict(server.env)
    env.update(
        PYTHONPATH=str(REPO),
        KMS_HSM_TOKEN=server.admin_token,
        KMS_HSM_ENDPOINT=server.rest_url,
    )
    env.update(extra)
    return env


def run(
    server: KmsServer, *args: str, data: bytes | None = None, **env: str
) -> subprocess.CompletedProcess[bytes]:
    """`kms-hsm envelope ARGS --ca-file CA` with ``data`` on stdin."""
    return subprocess.run(
        [KMS_HSM, "envelope", *args, "--ca-file", str(server.pki.ca)],
        input=data if data is not None else b"",
        env=cli_env(server, **env),
        capture_output=True,
        timeout=300,
    )


def ok(result: subprocess.CompletedProcess[bytes]) -> bytes:
    """stdout of a command that must have succeeded."""
    assert result.returncode == 0, result.stderr.decode()
    assert result.stderr == b""  # no progress line: stderr is not a terminal
    return result.stdout


def leftovers(directory: Path) -> list[str]:
    """Temporary files the CLI left in ``directory``."""
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".partial"))


def test_cli_runs_this_checkout(server: KmsServer) -> None:
    result = subprocess.run(
        [KMS_HSM, "envelope", "--help"], env=cli_env(server), capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "encrypt" in result.stdout


@pytest.mark.parametrize("size", [0, 1, 3 * SEGMENT + 17], ids=["empty", "1-byte", "4-segments"])
def test_file_round_trip(server: KmsServer, key_id: str, tmp_path: Path, size: int) -> None:
    plain = tmp_path / "plain.bin"
    plain.write_bytes(os.urandom(size))
    sealed, opened = tmp_path / "sealed.khe", tmp_path / "opened.bin"
    ok(run(server, "encrypt", "--key", key_id, str(plain), str(sealed)))
    ok(run(server, "decrypt", str(sealed), str(opened)))
    assert opened.read_bytes() == plain.read_bytes()
    assert sealed.read_bytes()[:8] == b"KHSMENV\x01"
    for path in (sealed, opened):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert leftovers(tmp_path) == []


def test_stdin_stdout(server: KmsServer, key_id: str) -> None:
    data = os.urandom(SEGMENT + 5)
    sealed = ok(run(server, "encrypt", "--key", key_id, "-", "-", data=data))
    assert ok(run(server, "decrypt", "-", "-", data=sealed)) == data


def test_grpc_endpoint_and_rest_endpoint_read_each_other(server: KmsServer, key_id: str) -> None:
    data = os.urandom(4096)
    over_grpc = ok(
        run(server, "encrypt", "--key", key_id, "--endpoint", server.endpoint, "-", "-", data=data)
    )
    assert ok(run(server, "decrypt", "-", "-", data=over_grpc)) == data
    over_rest = ok(run(server, "encrypt", "--key", key_id, "-", "-", data=data))
    grpc_env = {"KMS_HSM_ENDPOINT": server.endpoint}
    assert ok(run(server, "decrypt", "-", "-", data=over_rest, **grpc_env)) == data


def test_token_from_file_only_private(server: KmsServer, key_id: str, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(server.admin_token + "\n")
    token_file.chmod(0o600)
    args = ("encrypt", "--key", key_id, "--token-file", str(token_file), "-", "-")
    ok(run(server, *args, data=b"x", KMS_HSM_TOKEN=""))
    token_file.chmod(0o644)
    refused = run(server, *args, data=b"x", KMS_HSM_TOKEN="")
    assert refused.returncode == 1
    assert b"must not be readable by group or others" in refused.stderr
    argv = run(server, "encrypt", "--key", key_id, "--token=abc", "-", "-", data=b"x")
    assert argv.returncode == 2
    no_token = run(server, "encrypt", "--key", key_id, "-", "-", data=b"x", KMS_HSM_TOKEN="")
    assert no_token.returncode == 1
    assert no_token.stderr.decode().strip() == (
        "kms-hsm: no token: set KMS_HSM_TOKEN or give --token-file (mode 0600)"
    )


# --- tampering ---


@pytest.fixture(scope="module")
def sealed(server: KmsServer, key_id: str) -> tuple[bytes, bytes, int]:
    """(plaintext, envelope, header length) of a 4-segment file."""
    data = os.urandom(3 * SEGMENT + 1000)
    blob = ok(run(server, "encrypt", "--key", key_id, "-", "-", data=data))
    header = envelope.Header.read(io.BytesIO(blob))
    return data, blob, len(header.serialize())


def _flip(blob: bytes, offset: int) -> bytes:
    return blob[:offset] + bytes([blob[offset] ^ 0x01]) + blob[offset + 1 :]


def _segment(blob: bytes, header: int, index: int) -> tuple[int, int]:
    """Byte range of the stream's ``index``-th ciphertext segment in the file."""
    start = header + index * SEGMENT
    return start, min(start + SEGMENT, len(blob))


def tampered(case: str, blob: bytes, header: int, other_key: str) -> bytes:
    """The envelope changed in the way ``case`` names."""
    uri_at = 10
    uri_len = int.from_bytes(blob[8:10], "big")
    keyset_at = uri_at + uri_len + 4
    s1, e1 = _segment(blob, header, 1)
    s2, e2 = _segment(blob, header, 2)
    last_start, _ = _segment(blob, header, 3)
    if case == "magic":
        return _flip(blob, 0)
    if case == "version":
        return blob[:7] + b"\x02" + blob[8:]
    if case == "uri-length":
        return _flip(blob, 9)
    if case == "uri-other-key":
        other = key_uri(other_key).encode()
        assert len(other) == uri_len
        return blob[:uri_at] + other + blob[uri_at + uri_len :]
    if case == "keyset-length":
        return _flip(blob, keyset_at - 1)
    if case == "keyset-ciphertext":
        return _flip(blob, keyset_at + 20)
    if case == "keyset-last-byte":
        return _flip(blob, header - 1)
    if case == "stream-header":
        return _flip(blob, header + 5)
    if case == "flipped-segment":
        return _flip(blob, s1 + 1000)
    if case == "flipped-tag":
        return _flip(blob, e2 - 1)
    if case == "reordered":
        return blob[:s1] + blob[s2:e2] + blob[s1:e1] + blob[e2:]
    if case == "dropped-segment":
        return blob[:s1] + blob[s2:]
    if case == "truncated-last-byte":
        return blob[:-1]
    if case == "truncated-at-segment":
        return blob[:last_start]
    if case == "header-only":
        return blob[:header]
    if case == "appended-byte":
        return blob + b"\x00"
    if case == "appended-segment":
        return blob + blob[last_start:]
    if case == "empty":
        return b""
    if case == "garbage":
        return os.urandom(len(blob))
    raise AssertionError(case)


CASES = [
    "magic",
    "version",
    "uri-length",
    "uri-other-key",
    "keyset-length",
    "keyset-ciphertext",
    "keyset-last-byte",
    "stream-header",
    "flipped-segment",
    "flipped-tag",
    "reordered",
    "dropped-segment",
    "truncated-last-byte",
    "truncated-at-segment",
    "header-only",
    "appended-byte",
    "appended-segment",
    "empty",
    "garbage",
]


@pytest.fixture(scope="module")
def other_key(server: KmsServer) -> str:
    """A second key the same caller may use: an envelope moved under it must fail."""
    return _key(server)


@pytest.mark.parametrize("case", CASES)
def test_tampering_refused(
    server: KmsServer,
    sealed: tuple[bytes, bytes, int],
    other_key: str,
    tmp_path: Path,
    case: str,
) -> None:
    _, blob, header = sealed
    bad = tmp_path / "bad.khe"
    bad.write_bytes(tampered(case, blob, header, other_key))
    out = tmp_path / "out.bin"
    result = run(server, "decrypt", str(bad), str(out))
    assert result.returncode == 1
    assert result.stderr.decode() == MESSAGE + "\n"
    assert not out.exists()
    assert leftovers(tmp_path) == []
    # An existing file of that name is left as it was.
    out.write_bytes(b"before")
    assert run(server, "decrypt", str(bad), str(out)).returncode == 1
    assert out.read_bytes() == b"before"
    # To stdout: the same refusal (what was written before it is the caller's to discard).
    piped = run(server, "decrypt", "-", "-", data=bad.read_bytes())
    assert piped.returncode == 1
    assert piped.stderr.decode() == MESSAGE + "\n"


def test_every_header_byte_is_bound(server: KmsServer, sealed: tuple[bytes, bytes, int]) -> None:
    """Each single-bit change anywhere in the header is refused (in-process, over gRPC)."""
    data, blob, header = sealed
    short = blob[: header + 200]  # the stream is cut, but every flip must fail before that
    with KmsClient(server.endpoint, token=server.admin_token, ca_file=server.pki.ca) as kms:
        for offset in range(header):
            with pytest.raises(envelope.EnvelopeInvalid):
                envelope.decrypt(io.BytesIO(_flip(short, offset)), io.BytesIO(), kms)
        opened = io.BytesIO()
        envelope.decrypt(io.BytesIO(blob), opened, kms)
        assert opened.getvalue() == data


# --- one KMS call per file ---


def _audit_events(server: KmsServer, key_id: str) -> list[dict[str, object]]:
    exported = server.cli("audit", "export").stdout
    events = [json.loads(line) for line in exported.splitlines() if line.strip()]
    return [e for e in events if e.get("key_id") == key_id]


def test_one_kms_call_per_file(server: KmsServer, tmp_path: Path) -> None:
    key = _key(server)
    plain = tmp_path / "plain.bin"
    plain.write_bytes(os.urandom(5 * SEGMENT))
    ok(run(server, "encrypt", "--key", key, str(plain), str(tmp_path / "s")))
    ok(run(server, "decrypt", str(tmp_path / "s"), str(tmp_path / "o")))
    ok(run(server, "decrypt", "--endpoint", server.endpoint, str(tmp_path / "s"), "-"))
    deadline = time.monotonic() + 15
    while True:
        crypto = [e for e in _audit_events(server, key) if "crypt" in str(e["method"]).lower()]
        if len(crypto) >= 3 or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    methods = sorted(str(e["method"]) for e in crypto)
    assert len(methods) == 3, methods
    assert sum("Decrypt" in m for m in methods) == 2
    assert sum("Encrypt" in m for m in methods) == 1


# --- 1 GiB in constant memory ---


def _peak_rss(proc: subprocess.Popen[bytes]) -> int:
    """The child's VmHWM in bytes, polled until it exits (the last reading before exit)."""
    peak = 0
    status = Path(f"/proc/{proc.pid}/status")
    while proc.poll() is None:
        try:
            for line in status.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]) * 1024)
        except (FileNotFoundError, ProcessLookupError):
            break
        time.sleep(0.02)
    return peak


def _measured(
    server: KmsServer, args: list[str], feed: Iterator[bytes], sink: object
) -> tuple[int, float]:
    """Run the CLI with ``feed`` on stdin (from a thread) and stdout to ``sink``; its peak
    RSS and wall time."""
    started = time.monotonic()
    proc = subprocess.Popen(
        [KMS_HSM, "envelope", *args, "--ca-file", str(server.pki.ca)],
        stdin=subprocess.PIPE,
        stdout=sink,  # type: ignore[arg-type]
        stderr=subprocess.PIPE,
        env=cli_env(server),
    )
    assert proc.stdin is not None

    def pump() -> None:
        assert proc.stdin is not None
        try:
            for chunk in feed:
                proc.stdin.write(chunk)
        finally:
            proc.stdin.close()

    feeder = threading.Thread(target=pump, daemon=True)
    feeder.start()
    peak = _peak_rss(proc)
    proc.wait(timeout=600)
    feeder.join(timeout=60)
    assert proc.stderr is not None
    errors = proc.stderr.read()
    assert proc.returncode == 0, errors.decode()
    return peak, time.monotonic() - started


@pytest.mark.slow
def test_one_gib_stream_constant_memory(server: KmsServer, key_id: str, tmp_path: Path) -> None:
    block = os.urandom(MiB)
    total = 1024
    digest = hashlib.sha256()

    def source() -> Iterator[bytes]:
        for i in range(total):
            chunk = block[i % 997 :] + block[: i % 997]  # not one block repeated verbatim
            digest.update(chunk)
            yield chunk

    sealed = tmp_path / "big.khe"
    with sealed.open("wb") as out:
        small_peak, _ = _measured(server, ["encrypt", "--key", key_id, "-", "-"], iter([b"x"]), out)
    with sealed.open("wb") as out:
        big_peak, seconds = _measured(server, ["encrypt", "--key", key_id, "-", "-"], source(), out)
    growth = big_peak - small_peak
    print(
        f"\nenvelope encrypt of 1 GiB via stdin: {total / seconds:.0f} MiB/s, "
        f"peak RSS {big_peak / MiB:.1f} MiB (1-byte input: {small_peak / MiB:.1f} MiB)"
    )
    assert growth < 64 * MiB, growth
    assert sealed.stat().st_size > total * MiB

    back = hashlib.sha256()
    started = time.monotonic()
    proc = subprocess.Popen(
        [KMS_HSM, "envelope", "decrypt", str(sealed), "-", "--ca-file", str(server.pki.ca)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cli_env(server),
    )
    assert proc.stdout is not None
    peak_holder: list[int] = []
    watcher = threading.Thread(target=lambda: peak_holder.append(_peak_rss(proc)), daemon=True)
    watcher.start()
    size = 0
    while chunk := proc.stdout.read(MiB):
        back.update(chunk)
        size += len(chunk)
    proc.wait(timeout=600)
    watcher.join(timeout=10)
    seconds = time.monotonic() - started
    assert proc.stderr is not None
    assert proc.returncode == 0, proc.stderr.read().decode()
    print(
        f"envelope decrypt of 1 GiB to stdout: {total / seconds:.0f} MiB/s, "
        f"peak RSS {peak_holder[0] / MiB:.1f} MiB"
    )
    assert size == total * MiB
    assert back.hexdigest() == digest.hexdigest()
    assert peak_holder[0] - small_peak < 64 * MiB


def test_old_envelopes_open_after_rotation(server: KmsServer, tmp_path: Path) -> None:
    key = _key(server)
    before = ok(run(server, "encrypt", "--key", key, "-", "-", data=b"before"))
    with server.rest(server.admin_token) as api:
        assert api.post(f"/kms/v1/keys/{key}:rotate").status_code == 200
    after = ok(run(server, "encrypt", "--key", key, "-", "-", data=b"after"))
    assert ok(run(server, "decrypt", "-", "-", data=before)) == b"before"
    assert ok(run(server, "decrypt", "-", "-", data=after)) == b"after"


def test_progress_only_on_a_terminal(server: KmsServer, key_id: str, tmp_path: Path) -> None:
    plain = tmp_path / "plain.bin"
    plain.write_bytes(os.urandom(3 * MiB))
    master, slave = os.openpty()
    try:
        args = ["encrypt", "--key", key_id, str(plain), str(tmp_path / "s")]
        result = subprocess.run(
            [KMS_HSM, "envelope", *args, "--ca-file", str(server.pki.ca)],
            stderr=slave,
            env=cli_env(server),
            timeout=120,
        )
        assert result.returncode == 0
        os.close(slave)
        shown = b""
        with contextlib.suppress(OSError):
            while chunk := os.read(master, 4096):
                shown += chunk
    finally:
        os.close(master)
    assert b"encrypted 3.0 / 3.0 MiB (100%)" in shown, shown
    assert b"MiB/s" in shown


def test_errors_that_are_not_the_file(server: KmsServer, key_id: str) -> None:
    sealed = ok(run(server, "encrypt", "--key", key_id, "-", "-", data=b"data"))
    _, stranger, _ = server.principal_with_token("envelope-stranger")
    # The server answers NOT_FOUND for a key the caller may not see: the one message.
    hidden = run(server, "decrypt", "-", "-", data=sealed, KMS_HSM_TOKEN=stranger)
    assert hidden.returncode == 1
    assert hidden.stderr.decode() == MESSAGE + "\n"
    # A token that is not valid is said to be so, and is not repeated.
    bad_token = "not-a-token-" + os.urandom(6).hex()
    refused = run(server, "decrypt", "-", "-", data=sealed, KMS_HSM_TOKEN=bad_token)
    assert refused.returncode == 1
    assert b"UNAUTHENTICATED" in refused.stderr
    assert bad_token.encode() not in refused.stderr
    assert len(refused.stderr.splitlines()) == 1
    encrypt = run(server, "encrypt", "--key", key_id, "-", "-", data=b"x", KMS_HSM_TOKEN=bad_token)
    assert encrypt.returncode == 1
    assert b"UNAUTHENTICATED" in encrypt.stderr
    assert encrypt.stdout == b""


# --- review fixes: interrupted encrypt, kills, outputs that are not plain files, --key ---


class _FailingSource(io.RawIOBase):
    """An input that breaks after ``good`` bytes, as a Ctrl-C or a read error would."""

    def __init__(self, good: int) -> None:
        super().__init__()
        self.left = good

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.left <= 0:
            raise KeyboardInterrupt
        n = min(len(buffer), self.left)
        buffer[:n] = b"\x5a" * n
        self.left -= n
        return n


def test_an_interrupted_encrypt_never_leaves_a_valid_envelope(
    server: KmsServer, key_id: str, tmp_path: Path
) -> None:
    """What an interrupted encrypt already wrote (stdout, a caller's stream) is refused."""
    written = io.BytesIO()
    with (
        KmsClient(server.endpoint, token=server.admin_token, ca_file=server.pki.ca) as kms,
        pytest.raises(KeyboardInterrupt),
    ):
        envelope.encrypt(
            io.BufferedReader(_FailingSource(2 * MiB + 5)), written, kms, key_uri(key_id)
        )
    assert len(written.getvalue()) > MiB // 2  # segments did go out before the interruption
    cut = tmp_path / "cut.khe"
    cut.write_bytes(written.getvalue())
    result = run(server, "decrypt", str(cut), str(tmp_path / "out"))
    assert result.returncode == 1
    assert result.stderr.decode().strip() == MESSAGE
    assert not (tmp_path / "out").exists()


def test_sigterm_during_decrypt_leaves_no_partial_file(
    server: KmsServer, key_id: str, tmp_path: Path
) -> None:
    sealed = ok(run(server, "encrypt", "--key", key_id, "-", "-", data=b"q" * (3 * MiB)))
    proc = subprocess.Popen(
        [KMS_HSM, "envelope", "decrypt", "--ca-file", str(server.pki.ca), "-", str(tmp_path / "o")],
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cli_env(server),
    )
    assert proc.stdin is not None
    proc.stdin.write(sealed[: 2 * MiB])  # the header and a segment: then the input stalls
    proc.stdin.flush()
    deadline = time.monotonic() + 60
    while not leftovers(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert leftovers(tmp_path), "decrypt never started writing"
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=30)
    proc.stdin.close()
    assert proc.stderr is not None
    assert code == 128 + signal.SIGTERM, proc.stderr.read().decode()
    assert leftovers(tmp_path) == []
    assert not (tmp_path / "o").exists()


def test_outputs_that_are_not_plain_files(server: KmsServer, key_id: str, tmp_path: Path) -> None:
    """A symlink is written through; a FIFO stays a FIFO (as /dev/null stays a device)."""
    sealed = tmp_path / "s.khe"
    sealed.write_bytes(ok(run(server, "encrypt", "--key", key_id, "-", "-", data=b"fifo data")))
    target = tmp_path / "real"
    link = tmp_path / "link"
    link.symlink_to(target)
    ok(run(server, "decrypt", str(sealed), str(link)))
    assert link.is_symlink() and target.read_bytes() == b"fifo data"

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    ok(run(server, "decrypt", str(sealed), str(fifo)))
    reader.join(timeout=30)
    assert got == [b"fifo data"]
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    ok(run(server, "decrypt", str(sealed), os.devnull))
    assert stat.S_ISCHR(os.stat(os.devnull).st_mode)


def test_decrypt_key_refuses_files_under_another_key(
    server: KmsServer, key_id: str, tmp_path: Path
) -> None:
    sealed = tmp_path / "s.khe"
    sealed.write_bytes(ok(run(server, "encrypt", "--key", key_id, "-", "-", data=b"k")))
    other = _key(server)
    result = run(server, "decrypt", "--key", other, str(sealed), "-")
    assert result.returncode == 1 and result.stderr.decode().strip() == MESSAGE
    assert ok(run(server, "decrypt", "--key", key_id, str(sealed), "-")) == b"k"
