"""docker-compose.yml, softhsm/Dockerfile and softhsm/init-token.sh, checked without a Docker
engine: the compose file validates with the real docker-compose, carries no PIN, wires the
token volume from the one-shot initialiser into the services, and the init script it runs
makes a usable token with 0600 PIN files (run here for real, outside Docker)."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "softhsm" / "Dockerfile"
INIT_SCRIPT = REPO / "softhsm" / "init-token.sh"
SOFTHSM_MODULE = os.environ.get("KMS_HSM_PKCS11_LIBRARY", "/usr/lib/softhsm/libsofthsm2.so")
KMS_SERVICES = ("kms", "kms-replica")
PIN_FLAGS = re.compile(r"--(so-|user-)?pin(?![-\w])", re.IGNORECASE)


# ----------------------------------------------------------------------------- helpers


def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def services() -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = compose()["services"]
    return result


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment in dict form (compose accepts a list or a mapping)."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        pairs = (item.split("=", 1) if "=" in item else (item, "") for item in env)
        return {name: value for name, value in pairs}
    return {str(name): "" if value is None else str(value) for name, value in env.items()}


def command_text(service: dict[str, Any]) -> str:
    parts = []
    for field in ("entrypoint", "command"):
        value = service.get(field)
        if value is None:
            continue
        parts.append(" ".join(map(str, value)) if isinstance(value, list) else str(value))
    return " ".join(parts)


def volume_targets(service: dict[str, Any]) -> dict[str, str]:
    """Named volume -> mount target for a service's short- or long-syntax volumes."""
    mounts: dict[str, str] = {}
    for entry in service.get("volumes", []):
        if isinstance(entry, str):
            source, target = entry.split(":")[:2]
        else:
            source, target = entry.get("source", ""), entry["target"]
        mounts[source] = target
    return mounts


def strings(node: Any) -> list[str]:
    """Every key and scalar in a parsed YAML document, as text."""
    if isinstance(node, dict):
        return [s for key, value in node.items() for s in (str(key), *strings(value))]
    if isinstance(node, list):
        return [s for item in node for s in strings(item)]
    return [] if node is None else [str(node)]


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    if pending:
        logical.append(pending)
    pairs = []
    for line in logical:
        instruction, _, args = line.partition(" ")
        pairs.append((instruction.upper(), args.strip()))
    return pairs


def run_init(data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "SOFTHSM2_CONF"}
    env.update(PYTHON=sys.executable, KMS_HSM_TOKEN_LABEL="kms-hsm")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return subprocess.run(
        ["bash", str(INIT_SCRIPT), str(data_dir)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


# --------------------------------------------------------- (a) docker-compose validates


@pytest.mark.parametrize("profile", [None, "replicas"], ids=["default", "replicas-profile"])
def test_docker_compose_config_validates(profile: str | None) -> None:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose binary not installed (apt-get install -y docker-compose)")
    args = [binary, "-f", str(COMPOSE_FILE)]
    if profile:
        args += ["--profile", profile]
    env = {k: v for k, v in os.environ.items() if k != "KMS_HSM_DATABASE_URL"}
    result = subprocess.run(
        [*args, "config"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    normalised = yaml.safe_load(result.stdout)
    assert {"softhsm-init", "kms", "postgres", "kms-replica"} <= set(normalised["services"])
    # 1.29 keeps the conditions it understands; an older tool would reject or drop them.
    depends = normalised["services"]["kms"]["depends_on"]
    assert depends["softhsm-init"]["condition"] == "service_completed_successfully"
    assert normalised["services"]["kms-replica"]["profiles"] == ["replicas"]


# ------------------------------------------------------ (b) compose: PINs and the volume


def test_compose_holds_no_pin() -> None:
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    assert not PIN_FLAGS.search(text), "a PIN flag appears in docker-compose.yml"
    for value in strings(compose()):
        assert not PIN_FLAGS.search(value), value
        # Names like KMS_HSM_PIN / SO_PIN / USER_PIN carry a PIN; *_PIN_FILE only a path.
        for name in re.findall(r"[A-Z0-9_]*PIN[A-Z0-9_]*", value):
            assert name.endswith("_PIN_FILE"), f"PIN-valued variable {name} in compose"
        # Nothing that looks like a generated PIN (init-token.sh writes 48 hex digits).
        assert not re.search(r"\b[0-9a-f]{16,}\b", value), value
    for name, service in services().items():
        env = environment(service)
        assert "KMS_HSM_PIN" not in env, name
        for variable, value in env.items():
            if "PIN" in variable.upper():
                assert variable.endswith("_PIN_FILE"), (name, variable)
                assert value.startswith("/"), (name, variable, value)


def test_no_pin_on_any_command_line() -> None:
    for name, service in services().items():
        cmd = command_text(service)
        assert not PIN_FLAGS.search(cmd), (name, cmd)
        assert "PIN" not in cmd.upper().replace("-PIN-FILE", ""), (name, cmd)
        health = (service.get("healthcheck") or {}).get("test", [])
        assert "pin" not in " ".join(map(str, health)).lower(), name


def test_init_service_runs_the_init_script_into_the_token_volume() -> None:
    svc = services()
    init = svc["softhsm-init"]
    cmd = init["command"]
    cmd_list = cmd if isinstance(cmd, list) else cmd.split()
    assert any(part.endswith("softhsm/init-token.sh") for part in cmd_list), cmd
    data_dir = cmd_list[-1]
    mounts = volume_targets(init)
    assert "softhsm-tokens" in compose()["volumes"]
    assert mounts.get("softhsm-tokens") == data_dir, (mounts, data_dir)
    assert init.get("restart", "no") in ("no", False)


@pytest.mark.parametrize("name", KMS_SERVICES)
def test_kms_services_share_the_token_and_read_the_pin_from_its_file(name: str) -> None:
    svc = services()
    service = svc[name]
    init_cmd = svc["softhsm-init"]["command"]
    data_dir = (init_cmd if isinstance(init_cmd, list) else init_cmd.split())[-1]

    assert volume_targets(service).get("softhsm-tokens") == data_dir
    env = environment(service)
    assert "KMS_HSM_PIN" not in env
    assert env["KMS_HSM_PIN_FILE"] == f"{data_dir}/user-pin"
    assert env["SOFTHSM2_CONF"] == f"{data_dir}/softhsm2.conf"
    assert env["KMS_HSM_HOST"] == "0.0.0.0"
    assert env["KMS_HSM_DATA_DIR"] in volume_targets(service).values()
    assert env["KMS_HSM_DATA_DIR"] != data_dir
    assert service["depends_on"]["softhsm-init"]["condition"] == ("service_completed_successfully")
    assert "kms-hsm serve" in command_text(service)
    for port in service.get("ports", []):
        assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"


def test_each_kms_service_has_its_own_data_volume() -> None:
    svc = services()
    data_volumes = []
    for name in KMS_SERVICES:
        data_dir = environment(svc[name])["KMS_HSM_DATA_DIR"]
        mounts = volume_targets(svc[name])
        data_volumes.append([src for src, target in mounts.items() if target == data_dir])
    assert all(len(v) == 1 for v in data_volumes), data_volumes
    assert data_volumes[0] != data_volumes[1]
    assert "softhsm-tokens" not in data_volumes[0] + data_volumes[1]


def test_replicas_profile_uses_postgres() -> None:
    svc = services()
    assert svc["postgres"]["profiles"] == ["replicas"]
    assert svc["postgres"]["image"].startswith("postgres:15")
    assert "ports" not in svc["postgres"], "the database must not be published"
    replica = svc["kms-replica"]
    assert replica["profiles"] == ["replicas"]
    assert (
        environment(replica)["KMS_HSM_DATABASE_URL"] == "postgresql+psycopg://kms@postgres:5432/kms"
    )
    assert replica["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "profiles" not in svc["kms"] and "profiles" not in svc["softhsm-init"]


def test_services_build_the_dockerfile_from_the_repo_root() -> None:
    for name in ("softhsm-init", *KMS_SERVICES):
        build = services()[name]["build"]
        assert build["context"] == "."
        assert build["dockerfile"] == "softhsm/Dockerfile"
        assert (REPO / build["context"] / build["dockerfile"]).is_file()


# ------------------------------------------------- (c) the init script, run for real


def test_init_script_creates_a_usable_token_and_is_idempotent(tmp_path: Path) -> None:
    if not Path(SOFTHSM_MODULE).exists():
        pytest.fail(f"SoftHSM2 is not installed ({SOFTHSM_MODULE}): apt-get install -y softhsm2")
    data_dir = tmp_path / "token"

    first = run_init(data_dir)
    assert first.returncode == 0, first.stderr
    assert "initialised" in first.stdout

    conf = data_dir / "softhsm2.conf"
    so_pin, user_pin = data_dir / "so-pin", data_dir / "user-pin"
    for path in (so_pin, user_pin):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        assert re.fullmatch(r"[0-9a-f]{48}", path.read_text().strip()), path
    assert so_pin.read_text() != user_pin.read_text()
    assert stat.S_IMODE((data_dir / "tokens").stat().st_mode) & 0o077 == 0
    assert f"directories.tokendir = {data_dir.resolve()}/tokens" in conf.read_text()
    assert any((data_dir / "tokens").iterdir()), "no token directory was written"
    pins = (so_pin.read_text().strip(), user_pin.read_text().strip())
    for output in (first.stdout, first.stderr):
        assert not any(pin in output for pin in pins)

    second = run_init(data_dir)
    assert second.returncode == 0, second.stderr
    assert "already present" in second.stdout
    assert (so_pin.read_text().strip(), user_pin.read_text().strip()) == pins

    # SOFTHSM2_CONF is read once per process and this test session has its own token,
    # so log in from a fresh interpreter, the way a compose service does: PIN from the file.
    probe = (
        "import sys\n"
        "from pathlib import Path\n"
        "from kms_hsm.config import read_secret_file\n"
        "from kms_hsm.crypto.pkcs11.sessions import SessionManager\n"
        "module, label, pin_file = sys.argv[1:4]\n"
        "manager = SessionManager(module, label, read_secret_file(Path(pin_file), 'PIN file'),"
        " startup_timeout=15)\n"
        "manager.start()\n"
        "manager.close()\n"
        "print('token usable')\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("KMS_HSM_PIN")}
    env["SOFTHSM2_CONF"] = str(conf)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, "-c", probe, SOFTHSM_MODULE, "kms-hsm", str(user_pin)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "token usable" in result.stdout


# ------------------------------------------------------------------- (d) the Dockerfile


def test_dockerfile_installs_softhsm2_and_runs_kms_hsm_without_pins() -> None:
    instructions = dockerfile_instructions()
    by_kind: dict[str, list[str]] = {}
    for kind, args in instructions:
        by_kind.setdefault(kind, []).append(args)

    assert by_kind["FROM"] == ["python:3.11-slim-bookworm"]
    runs = " ".join(by_kind.get("RUN", []))
    assert re.search(r"apt-get install\b[^&;]*\bsofthsm2\b", runs), runs
    assert "pip install" in runs and "/app" in runs

    for kind in ("ENV", "ARG", "LABEL"):
        for args in by_kind.get(kind, []):
            for name in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=", args) or args.split()[:1]:
                assert "PIN" not in name.upper(), f"{kind} {args}"

    copies = " ".join(by_kind.get("COPY", []) + by_kind.get("ADD", []))
    assert "/app" in copies

    user = by_kind.get("USER", [])
    assert user, "the image must not run as root"
    assert user[-1].split(":")[0] not in ("root", "0")

    assert "8080" in " ".join(by_kind.get("EXPOSE", []))
    entry = " ".join(by_kind.get("ENTRYPOINT", []) + by_kind.get("CMD", [])[-1:])
    assert "kms-hsm" in entry and "serve" in entry, entry


def test_dockerignore_keeps_local_secrets_and_the_venv_out_of_the_image() -> None:
    ignored = {
        line.strip()
        for line in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv", ".kms-hsm", "**/so-pin", "**/user-pin"} <= ignored
    for needed in ("kms_hsm", "softhsm", "pyproject.toml", "README.md"):
        assert needed not in ignored and f"/{needed}" not in ignored, needed


# --------------------------------------------- (e) health, start order, the image's contents


@pytest.mark.parametrize("name", KMS_SERVICES)
def test_kms_services_are_healthy_only_when_ready(name: str) -> None:
    """The healthcheck asks /readyz (database and a token round-trip), not "port open"."""
    service = services()[name]
    test = service["healthcheck"]["test"]
    assert test[0] == "CMD", test  # no shell: the image's python3 does the request
    probe = " ".join(map(str, test[1:]))
    env = environment(service)
    assert f"http://127.0.0.1:{env['KMS_HSM_PORT']}/readyz" in probe, probe
    assert "urlopen" in test[test.index("-c") + 1]  # run for real in the next test


def test_the_healthcheck_program_fails_unless_readyz_answers_200(tmp_path: Path) -> None:
    import http.server
    import threading

    program = services()["kms"]["healthcheck"]["test"][-1]

    class Ready(http.server.BaseHTTPRequestHandler):
        status = 200

        def do_GET(self) -> None:
            self.send_response(Ready.status if self.path == "/readyz" else 404)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    def probe(port: int) -> int:
        text = program.replace("127.0.0.1:8080", f"127.0.0.1:{port}")
        return subprocess.run(
            [sys.executable, "-c", text], capture_output=True, timeout=30
        ).returncode

    server = http.server.HTTPServer(("127.0.0.1", 0), Ready)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        assert probe(port) == 0
        Ready.status = 503
        assert probe(port) != 0
    finally:
        server.shutdown()
        server.server_close()
    assert probe(port) != 0  # nothing listens


def test_replicas_start_after_kms_and_postgres_are_healthy() -> None:
    svc = services()
    depends = svc["kms-replica"]["depends_on"]
    assert depends["kms"]["condition"] == "service_healthy"
    assert depends["postgres"]["condition"] == "service_healthy"
    assert depends["softhsm-init"]["condition"] == "service_completed_successfully"
    assert "healthcheck" in svc["postgres"]


def test_dockerignore_keeps_tests_and_benchmarks_out_of_the_image() -> None:
    ignored = {
        line.strip()
        for line in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {"tests", "bench"} <= ignored
