"""What is measured: the scenarios, their request bodies, and one measurement's record."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from apiclient import ApiClient, b64

# Scenario names, also the keys of the JSON results and of the ratios.
ENC_SW = "encrypt sw-key"
ENC_HSM = "encrypt hsm-key"
DEC_SW = "decrypt sw-key"
DEC_HSM = "decrypt hsm-key"
GDK_SW = "gdk AES_256 sw-key"
GDK_HSM = "gdk AES_256 hsm-key"
GDKH_SW = "gdk AES_256_HSM sw-key"
GDKH_HSM = "gdk AES_256_HSM hsm-key"
BASE_F = "F encrypt (FastAPI)"
BASE_R = "R encrypt (raw ASGI)"
GRPC_SW = "gRPC encrypt AES_256 (software)"
GRPC_HSM = "gRPC encrypt AES_256_HSM"
BASE_G = "gRPC baseline (bare grpc.aio AES-GCM)"
GRPC = (GRPC_SW, GRPC_HSM, BASE_G)

SMOKE = (ENC_SW, ENC_HSM, BASE_F, BASE_R, *GRPC)
ALL = (ENC_SW, ENC_HSM, DEC_SW, DEC_HSM, GDK_SW, GDK_HSM, GDKH_SW, GDKH_HSM, BASE_F, BASE_R, *GRPC)
PLAINTEXT = bytes(range(32))
BASELINE_PATH = "/kms/v1/keys/baseline:encrypt"


@dataclass(frozen=True)
class Scenario:
    """One endpoint with one body, on one server: ``kms``, ``F``, ``R`` or ``G``.

    A gRPC scenario (``grpc_key`` set) is an Encrypt of ``PLAINTEXT`` under that key id;
    ``path`` and ``body`` are empty.
    """

    name: str
    server: str
    path: str
    body: bytes
    grpc_key: str | None = None

    @property
    def is_grpc(self) -> bool:
        """True for the SymmetricCryptoService/Encrypt scenarios."""
        return self.grpc_key is not None


@dataclass
class Measurement:
    """The result of one scenario at one worker count and concurrency."""

    scenario: str
    server: str
    workers: int
    concurrency: int
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    requests: int
    errors: int
    error_detail: dict[str, int] = field(default_factory=dict)
    # CPU of the load generator (wrk, or the gRPC client processes) in cores: it runs on
    # the same cores as the server under test.
    client_cores: float = 0.0
    # CPU of the server under test per request (its whole process tree), in microseconds:
    # what the server costs even where the load generator is the limit.
    server_us: float = 0.0


def _json(message: dict[str, object]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode()


def encrypt_body() -> bytes:
    """The :encrypt body every encrypt scenario sends (32-byte plaintext)."""
    return _json({"plaintext": b64(PLAINTEXT)})


def _decrypt_body(kms: ApiClient, key_id: str) -> bytes:
    sealed = kms.post(f"/kms/v1/keys/{key_id}:encrypt", encrypt_body())["ciphertext"]
    return _json({"ciphertext": sealed})


def build(
    kms: ApiClient, sw_key: str, hsm_key: str, names: tuple[str, ...] | None = None
) -> list[Scenario]:
    """Every scenario, or only ``names``; decrypt bodies are encrypted once, here."""

    def wanted(name: str) -> bool:
        return names is None or name in names

    keys = {"sw-key": sw_key, "hsm-key": hsm_key}
    scenarios = [
        Scenario(f"encrypt {kind}", "kms", f"/kms/v1/keys/{key_id}:encrypt", encrypt_body())
        for kind, key_id in keys.items()
    ]
    for kind, key_id in keys.items():
        if wanted(f"decrypt {kind}"):
            path = f"/kms/v1/keys/{key_id}:decrypt"
            scenarios.append(Scenario(f"decrypt {kind}", "kms", path, _decrypt_body(kms, key_id)))
    for spec in ("AES_256", "AES_256_HSM"):
        for kind, key_id in keys.items():
            path = f"/kms/v1/keys/{key_id}:generateDataKey"
            body = _json({"dataKeySpec": spec})
            scenarios.append(Scenario(f"gdk {spec} {kind}", "kms", path, body))
    scenarios.append(Scenario(BASE_F, "F", BASELINE_PATH, encrypt_body()))
    scenarios.append(Scenario(BASE_R, "R", BASELINE_PATH, encrypt_body()))
    scenarios.append(Scenario(GRPC_SW, "kms", "", b"", grpc_key=sw_key))
    scenarios.append(Scenario(GRPC_HSM, "kms", "", b"", grpc_key=hsm_key))
    scenarios.append(Scenario(BASE_G, "G", "", b"", grpc_key="baseline"))
    return [s for s in scenarios if wanted(s.name)]
