"""README stays true: the walk-through runs as written, the test command is CI's."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.conftest import KMS_HSM, REPO, free_port, serve_env, stop, wait_until_serving

README = (REPO / "README.md").read_text()


def _block(start: str, end: str) -> str:
    section = README.split(start, 1)[1].split(end, 1)[0]
    match = re.search(r"```bash\n(.*?)```", section, re.S)
    assert match, "no bash block"
    return match.group(1)


def test_ci_runs_the_readme_test_command() -> None:
    commands = re.findall(r"```bash\n(.*?)\n```", README, re.S)
    test_command = next(c for c in commands if "pytest" in c)
    assert test_command in (REPO / ".ci" / "run").read_text().splitlines()


def _run_against_a_real_server(tmp_path: Path, start: str, end: str) -> str:
    """Run README's bash block between the markers against ``kms-hsm serve``; its stdout."""
    port = free_port()
    data_dir = tmp_path / ".kms-hsm"
    env = serve_env(data_dir, port)
    proc = subprocess.Popen([KMS_HSM, "serve"], env=env, cwd=tmp_path, stderr=subprocess.DEVNULL)
    try:
        wait_until_serving(proc, f"http://127.0.0.1:{port}")
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", _block(start, end)],
            env={**env, "KMS": f"http://127.0.0.1:{port}"},
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout
    finally:
        stop(proc)


def test_walkthrough_runs_against_a_real_server(tmp_path: Path) -> None:
    out = _run_against_a_real_server(
        tmp_path, "<!-- walkthrough:start -->", "<!-- walkthrough:end -->"
    )
    assert "data key round trip OK" in out


def test_asymmetric_walkthrough_signs_and_decrypts(tmp_path: Path) -> None:
    """OpenSSL verifies the HSM's ECDSA signature and makes the ciphertext the HSM opens."""
    out = _run_against_a_real_server(
        tmp_path, "<!-- asymmetric:start -->", "<!-- asymmetric:end -->"
    )
    assert "Verified OK" in out
    assert out.rstrip().endswith("db password")


def test_every_setting_is_documented() -> None:
    from kms_hsm.config import Settings

    for name in Settings.model_fields:
        assert f"`KMS_HSM_{name.upper()}`" in README, name


def _python_block(start: str) -> str:
    section = README.split(start, 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "no python block"
    return match.group(1)


def test_use_it_from_your_application_runs_as_written(tmp_path: Path) -> None:
    """Every block of "Use it from your application": the CLI, Tink, kms_hsm.client, the SDK."""
    import os
    import sys

    from kms_hsm.client import Client

    port, grpc_port = free_port(), free_port()
    data_dir = tmp_path / ".kms-hsm"
    env = serve_env(data_dir, port, KMS_HSM_GRPC_PORT=str(grpc_port))
    # The block puts ./.venv/bin first, as from a checkout; here the tests' own venv stands in.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    proc = subprocess.Popen([KMS_HSM, "serve"], env=env, cwd=tmp_path, stderr=subprocess.DEVNULL)
    try:
        endpoint = f"http://127.0.0.1:{port}"
        wait_until_serving(proc, endpoint)
        shell = subprocess.run(
            [
                "bash",
                "-euo",
                "pipefail",
                "-c",
                _block("<!-- apps-cli:start -->", "<!-- apps-cli:end -->"),
            ],
            env={**env, "KMS_HSM_ENDPOINT": endpoint},
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert shell.returncode == 0, shell.stderr
        assert "db password" in shell.stdout
        assert shell.stdout.rstrip().endswith("envelope round trip OK")
        assert (tmp_path / "datakey.kms").stat().st_size > 0

        token = (data_dir / "admin-token").read_text().strip()
        with Client(endpoint, token=token) as kms:
            key_id = kms.create_key("b1g-apps", name="readme").id
        for marker in ("apps-tink", "apps-client", "apps-sdk"):
            program = subprocess.run(
                [sys.executable, "-c", _python_block(f"<!-- {marker}:start -->")],
                env={
                    **env,
                    "KMS_HSM_ENDPOINT": endpoint,
                    "KMS_HSM_TOKEN": token,
                    "KEY_ID": key_id,
                    "KMS_HSM_GRPC": f"127.0.0.1:{grpc_port}",
                },
                cwd=tmp_path,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert program.returncode == 0, (marker, program.stderr)
    finally:
        stop(proc)
