"""Issue 18 §5: /metrics of a real `kms-hsm serve --workers 2` (SoftHSM2, TLS, REST and gRPC).

Load is spread over both workers by many connections; the scrape (one endpoint, in the serve
parent) must add up what each worker counted, show the HSM and audit counters moving, count
keys by state from the database, and never carry a key, folder or principal id.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from yandex.cloud.kms.v1 import symmetric_crypto_service_pb2 as crypto_pb2
from yandex.cloud.kms.v1.symmetric_crypto_service_pb2_grpc import SymmetricCryptoServiceStub

from tests.conftest import (
    KMS_HSM,
    SOFTHSM_MODULE,
    create_key,
    free_port,
    init_token,
    serve_env,
    stop,
    wait_until_serving,
)
from tests.grpc_support import KmsServer, running_server

FOLDER = "b1gtestfolder"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture(scope="module")
def metrics_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, metrics_port: int) -> Iterator[KmsServer]:
    directory = tmp_path_factory.mktemp("metrics-w2")
    # A directory left by an earlier start (another pid's counts) must not be added up.
    stale = directory / "data" / "metrics"
    stale.mkdir(parents=True)
    (stale / "counter_999999.db").write_bytes(b"left over from an earlier start")
    with running_server(
        directory,
        workers=2,
        KMS_HSM_METRICS_PORT=str(metrics_port),
        KMS_HSM_LOG_FORMAT="json",
    ) as s:
        yield s


def scrape(port: int) -> tuple[str, Samples]:
    """The exposition text and its samples by (name, sorted labels)."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return text, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """A sample's value, 0 when absent (a series appears with its first count)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum over every series of ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= set(ls))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def call_records(server: KmsServer) -> list[dict[str, object]]:
    """The per-call JSON records the server logged so far."""
    records = []
    for line in server.log.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if record["logger"] == "kms_hsm.calls":
                records.append(record)
    return records


def listening(pids: set[int]) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket in LISTEN state that one of ``pids`` holds."""
    inodes: set[str] = set()
    for pid in pids:
        with_fd = Path(f"/proc/{pid}/fd")
        for fd in with_fd.iterdir() if with_fd.exists() else ():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    found = set()
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A" or fields[9] not in inodes:  # 0A: LISTEN
                continue
            address, port = fields[1].split(":")
            raw = bytes.fromhex(address)
            # /proc prints each 32-bit word in host (little-endian) order.
            raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            found.add((socket.inet_ntop(family, raw), int(port, 16)))
    return found


def process_tree(pid: int) -> set[int]:
    """``pid`` and every process below it."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    tree = {pid}
    while True:
        more = {p for p, parent in parents.items() if parent in tree} - tree
        if not more:
            return tree
        tree |= more


# --- the tests ---


def test_requests_add_up_across_workers_and_hsm_counters_move(
    server: KmsServer, metrics_port: int
) -> None:
    with server.rest(server.admin_token) as api:
        hsm_key = create_key(api, "AES_256_HSM")["id"]
        soft_key = create_key(api, "AES_256")["id"]
    time.sleep(0.3)  # workers write their counts every 50 ms: these calls are in `before`
    _, before = scrape(metrics_port)
    records_before = len(call_records(server))

    threads, per_connection, connections = 12, 4, 3
    failures: list[str] = []
    in_flight_seen: list[float] = []
    loaded = threading.Event()

    def load() -> None:
        try:
            for _ in range(connections):
                # A fresh connection each time: the kernel hands it to either worker.
                with server.rest(server.admin_token) as api:
                    for i in range(per_connection):
                        key = hsm_key if i % 2 == 0 else soft_key
                        r = api.post(
                            f"/kms/v1/keys/{key}:encrypt", json={"plaintext": b64(b"metrics")}
                        )
                        if r.status_code != 200:
                            failures.append(r.text)
        except Exception as exc:
            failures.append(repr(exc))

    def watch() -> None:
        # The in-flight gauge, scraped while the load runs (how high it gets is not
        # asserted: a scrape may fall between HSM calls).
        while not loaded.is_set():
            _, samples = scrape(metrics_port)
            in_flight_seen.append(value(samples, "kms_hsm_hsm_calls_in_flight"))

    watcher = threading.Thread(target=watch)
    watcher.start()
    workers = [threading.Thread(target=load) for _ in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    loaded.set()
    watcher.join()
    assert not failures, failures[:3]

    # Failures are counted by code; gRPC by its transport.
    with server.rest(server.admin_token) as api:
        assert (
            api.post(
                "/kms/v1/keys/abjnosuchkey0000000x:encrypt", json={"plaintext": ""}
            ).status_code
            == 404
        )
        r = api.post(f"/kms/v1/keys/{soft_key}:decrypt", json={"ciphertext": b64(b"x" * 40)})
        assert r.status_code == 400
    assert (
        httpx.post(
            f"{server.rest_url}/kms/v1/keys/{soft_key}:encrypt",
            json={"plaintext": ""},
            verify=server.ssl_context(),
        ).status_code
        == 401
    )
    crypto = server.sdk().client(SymmetricCryptoServiceStub)
    for _ in range(3):
        crypto.Encrypt(
            crypto_pb2.SymmetricEncryptRequest(key_id=hsm_key, plaintext=b"g"), timeout=30
        )

    made = threads * connections * per_connection
    encrypt = "SymmetricCrypto.Encrypt"
    deadline = time.monotonic() + 10
    failed = {
        ("SymmetricCrypto.Encrypt", "NOT_FOUND"),
        ("SymmetricCrypto.Encrypt", "UNAUTHENTICATED"),
        ("SymmetricCrypto.Decrypt", "INVALID_ARGUMENT"),
    }
    while True:  # each worker writes its counts every 50 ms: either may still be due
        text, after = scrape(metrics_port)
        got = value(after, "kms_hsm_requests_total", method=encrypt, transport="rest", code="OK")
        grpc_got = value(
            after, "kms_hsm_requests_total", method=encrypt, transport="grpc", code="OK"
        )
        delta = got - value(
            before, "kms_hsm_requests_total", method=encrypt, transport="rest", code="OK"
        )
        failures_seen = all(
            value(after, "kms_hsm_requests_total", method=m, transport="rest", code=c) == 1
            for m, c in failed
        )
        if (delta, grpc_got, failures_seen) == (made, 3, True) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert delta == made
    assert grpc_got == 3
    for code, count in (("NOT_FOUND", 1), ("UNAUTHENTICATED", 1)):
        assert (
            value(after, "kms_hsm_requests_total", method=encrypt, transport="rest", code=code)
            == count
        )
    assert (
        value(
            after,
            "kms_hsm_requests_total",
            method="SymmetricCrypto.Decrypt",
            transport="rest",
            code="INVALID_ARGUMENT",
        )
        == 1
    )
    # The latency histogram counts the same calls.
    assert (
        value(after, "kms_hsm_request_seconds_count", method=encrypt, transport="rest")
        - value(before, "kms_hsm_request_seconds_count", method=encrypt, transport="rest")
        == made + 2
    )

    # Both workers served, and each logged one record per call (JSON format).
    records = [r for r in call_records(server)[records_before:] if r["method"] == encrypt]
    served_by = {r["pid"] for r in records if r["outcome"] == "OK" and r["transport"] == "rest"}
    assert len(served_by) == 2, f"the load reached only worker(s) {served_by}"
    assert sum(r["outcome"] == "OK" and r["transport"] == "rest" for r in records) == made

    # HSM: one encrypt call per AES_256_HSM request, each with its latency; none in flight.
    hsm_encrypts = value(after, "kms_hsm_hsm_call_seconds_count", operation="encrypt") - value(
        before, "kms_hsm_hsm_call_seconds_count", operation="encrypt"
    )
    assert hsm_encrypts == made // 2 + 3
    assert value(after, "kms_hsm_hsm_call_seconds_sum", operation="encrypt") > 0
    # Nothing left in flight once the load is over (the audit checkpoint writes to the
    # token every second: a scrape may catch that one call, the next one not).
    deadline = time.monotonic() + 10
    while value(scrape(metrics_port)[1], "kms_hsm_hsm_calls_in_flight") != 0:
        assert time.monotonic() < deadline, "HSM calls stay in flight"
        time.sleep(0.05)
    assert in_flight_seen and min(in_flight_seen) >= 0
    assert value(after, "kms_hsm_hsm_agent_starts_total", kind="first") >= 2  # one per worker
    assert total(after, "kms_hsm_hsm_call_failures_total", reason="unavailable") == 0
    # Audit group commits: every call's event, in batches.
    committed = value(after, "kms_hsm_audit_commit_events_sum") - value(
        before, "kms_hsm_audit_commit_events_sum"
    )
    assert committed >= made + 3
    assert value(after, "kms_hsm_audit_commit_seconds_count") > 0
    # Software key material: one lookup per AES_256 encrypt; unwrapped by the first calls
    # of each worker (those that arrive together all miss), then found in the cache.
    lookups = total(after, "kms_hsm_material_cache_lookups_total") - total(
        before, "kms_hsm_material_cache_lookups_total"
    )
    assert lookups >= made // 2
    assert value(after, "kms_hsm_material_cache_lookups_total", result="hit") >= made // 4
    assert value(after, "kms_hsm_material_cache_lookups_total", result="miss") >= 1
    # The leftover file of an earlier start was removed, not added up.
    assert not (server.data_dir / "metrics" / "counter_999999.db").exists()
    assert hsm_key not in text and soft_key not in text


def test_keys_and_versions_by_state(server: KmsServer, metrics_port: int) -> None:
    _, before = scrape(metrics_port)
    with server.rest(server.admin_token) as api:
        made = [create_key(api, "AES_256")["id"] for _ in range(3)]
        r = api.post(f"/kms/v1/keys/{made[0]}:rotate")
        assert r.status_code == 200, r.text
        r = api.delete(f"/kms/v1/keys/{made[1]}")
        assert r.status_code == 200, r.text
    _, after = scrape(metrics_port)

    def change(kind: str, state: str) -> float:
        return value(after, "kms_hsm_objects", kind=kind, state=state) - value(
            before, "kms_hsm_objects", kind=kind, state=state
        )

    assert change("symmetric_key", "ACTIVE") == 2
    assert change("symmetric_key", "DELETED") == 1
    # Three keys, one rotated (two versions); the deleted key's version awaits destruction.
    assert change("symmetric_key_version", "ACTIVE") == 3
    assert change("symmetric_key_version", "SCHEDULED_FOR_DESTRUCTION") == 1


def test_no_id_in_any_label(server: KmsServer, metrics_port: int) -> None:
    principal_id, token, _ = server.principal_with_token("metrics-reader")
    with server.rest(server.admin_token) as api:
        key = create_key(api, "AES_256_HSM")
        version = key["primaryVersion"]["id"]  # type: ignore[index]
        api.post(f"/kms/v1/keys/{key['id']}:encrypt", json={"plaintext": b64(b"p")})
    with server.rest(token) as stranger:  # denied: its event names the key and principal
        assert stranger.post(
            f"/kms/v1/keys/{key['id']}:encrypt", json={"plaintext": b64(b"p")}
        ).status_code in (403, 404)
    text, samples = scrape(metrics_port)
    for secret in (key["id"], version, FOLDER, principal_id, token, server.admin_token):
        assert secret not in text
    # Every label is one of the bounded enumerations.
    names = {name for name, ls in samples for name, _ in ls}
    assert names <= {
        "method",
        "transport",
        "code",
        "operation",
        "reason",
        "kind",
        "result",
        "state",
        "le",
    }


def test_bound_to_loopback_by_default(server: KmsServer, metrics_port: int) -> None:
    ports = listening(process_tree(server.proc.pid))
    assert ("127.0.0.1", metrics_port) in ports
    assert not any(port == metrics_port and address != "127.0.0.1" for address, port in ports)


def test_off_by_default(tmp_path: Path) -> None:
    port = free_port()
    env = serve_env(tmp_path / "data", port)
    proc = subprocess.Popen([KMS_HSM, "serve", "--workers", "2"], env=env)
    try:
        wait_until_serving(proc, f"http://127.0.0.1:{port}")
        ports = {p for _, p in listening(process_tree(proc.pid))}
        assert ports == {port}  # REST only: no metrics port (gRPC is off here)
        assert not (tmp_path / "data" / "metrics").exists()
    finally:
        stop(proc)


def test_a_killed_agent_is_counted_as_restarted(server: KmsServer, metrics_port: int) -> None:
    agents = [
        pid
        for pid in process_tree(server.proc.pid)
        if b"kms_hsm.crypto.pkcs11.agent" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]
    assert len(agents) >= 2  # one per worker
    with server.rest(server.admin_token) as api:
        key = create_key(api, "AES_256_HSM")["id"]
    time.sleep(0.3)
    _, before = scrape(metrics_port)
    for pid in agents:
        os.kill(pid, signal.SIGKILL)
    with server.rest(server.admin_token) as api:  # 503s until the workers start new agents
        deadline = time.monotonic() + 30
        answered = 0
        while answered < 10 and time.monotonic() < deadline:
            r = api.post(f"/kms/v1/keys/{key}:encrypt", json={"plaintext": b64(b"again")})
            answered += r.status_code == 200
    assert answered == 10
    deadline = time.monotonic() + 10
    while True:
        _, after = scrape(metrics_port)
        restarts = value(after, "kms_hsm_hsm_agent_starts_total", kind="restart") - value(
            before, "kms_hsm_hsm_agent_starts_total", kind="restart"
        )
        if restarts >= 1 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert restarts >= 1


def test_one_worker_counts_and_any_host_can_be_given(tmp_path: Path) -> None:
    port, metrics_port = free_port(), free_port()
    env = serve_env(
        tmp_path / "data",
        port,
        KMS_HSM_METRICS_PORT=str(metrics_port),
        KMS_HSM_METRICS_HOST="0.0.0.0",
    )
    proc = subprocess.Popen([KMS_HSM, "serve"], env=env)
    try:
        base_url = f"http://127.0.0.1:{port}"
        wait_until_serving(proc, base_url)
        assert ("0.0.0.0", metrics_port) in listening(process_tree(proc.pid))
        token = (tmp_path / "data" / "admin-token").read_text().strip()
        with httpx.Client(
            base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=30
        ) as api:
            key = create_key(api, "AES_256")["id"]
            for _ in range(5):
                r = api.post(f"/kms/v1/keys/{key}:encrypt", json={"plaintext": b64(b"one")})
                assert r.status_code == 200
        deadline = time.monotonic() + 10
        while True:  # the serving process is the scraped one: same counts, same files
            _, samples = scrape(metrics_port)
            got = value(
                samples,
                "kms_hsm_requests_total",
                method="SymmetricCrypto.Encrypt",
                transport="rest",
                code="OK",
            )
            if got == 5 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert got == 5
        assert value(samples, "kms_hsm_objects", kind="symmetric_key", state="ACTIVE") == 1
    finally:
        stop(proc)


def test_a_taken_metrics_port_refuses_to_start(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        metrics_port = taken.getsockname()[1]
        env = serve_env(tmp_path / "data", free_port(), KMS_HSM_METRICS_PORT=str(metrics_port))
        done = subprocess.run(
            [KMS_HSM, "serve"], env=env, capture_output=True, text=True, timeout=120
        )
    assert done.returncode == 1
    problem = [line for line in done.stderr.splitlines() if "cannot start" in line]
    assert len(problem) == 1 and f"metrics port {metrics_port}" in problem[0], done.stderr
    assert "Traceback" not in done.stderr


def test_an_hsm_outage_shows_as_failures_and_a_reinitialisation(
    fault_shim: Path, tmp_path: Path
) -> None:
    """Through the fault-injecting PKCS#11 module of tests/test_outage.py."""
    init_token(tmp_path / "token")
    fault = tmp_path / "fault"
    port, metrics_port = free_port(), free_port()
    env = serve_env(
        tmp_path / "data",
        port,
        KMS_HSM_PKCS11_LIBRARY=str(fault_shim),
        KMS_HSM_FAULT_REAL_MODULE=SOFTHSM_MODULE,
        KMS_HSM_FAULT_FILE=str(fault),
        KMS_HSM_PIN_FILE=str(tmp_path / "token" / "user-pin"),
        KMS_HSM_CALL_TIMEOUT="2",
        SOFTHSM2_CONF=str(tmp_path / "token" / "softhsm2.conf"),
        KMS_HSM_METRICS_PORT=str(metrics_port),
    )
    proc = subprocess.Popen([KMS_HSM, "serve"], env=env)
    try:
        base_url = f"http://127.0.0.1:{port}"
        wait_until_serving(proc, base_url)
        token = (tmp_path / "data" / "admin-token").read_text().strip()
        with httpx.Client(
            base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=30
        ) as api:
            key = create_key(api, "AES_256_HSM")["id"]

            def encrypt() -> int:
                body = {"plaintext": b64(b"outage")}
                return api.post(f"/kms/v1/keys/{key}:encrypt", json=body).status_code

            assert encrypt() == 200
            fault.write_text("0x32")  # CKR_DEVICE_REMOVED
            try:
                assert encrypt() == 503
            finally:
                fault.unlink()
            deadline = time.monotonic() + 10
            while encrypt() != 200:
                assert time.monotonic() < deadline, "not recovered"
                time.sleep(0.05)
        time.sleep(0.3)
        _, samples = scrape(metrics_port)
        assert value(samples, "kms_hsm_pkcs11_reinitialisations_total", result="ok") >= 1
        assert total(samples, "kms_hsm_hsm_call_failures_total", operation="encrypt") >= 1
        assert (
            value(
                samples,
                "kms_hsm_requests_total",
                method="SymmetricCrypto.Encrypt",
                transport="rest",
                code="UNAVAILABLE",
            )
            >= 1
        )
    finally:
        stop(proc)


def test_a_dead_database_costs_a_scrape_only_its_key_counts(tmp_path: Path) -> None:
    """The scrape-time count is the one metric that reads the database: when the database is
    gone or refuses connections it is left out at once, never an error or a hang."""
    import time

    from kms_hsm.cli.metrics_endpoint import _StateCounts
    from kms_hsm.config import Settings

    dead_pg = f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/none"
    not_a_db = tmp_path / "kms.db"
    not_a_db.mkdir()  # exists, but no database can be opened there
    for url in (dead_pg, f"sqlite:///{not_a_db}"):
        started = time.monotonic()
        assert list(_StateCounts(Settings(database_url=url))()) == []
        assert time.monotonic() - started < 5
