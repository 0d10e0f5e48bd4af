"""What is measured: the scenarios, their request bodies, and one measurement's record."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from apiclient import ApiClient, b64
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

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
# Asymmetric keys (issue 17): the same three calls over REST and gRPC; each is compared
# with the token's own rate for its mechanism (bench/asym_raw.py, whose row names are the
# REST scenarios' names).
SIGN_EC = "sign ECDSA P-256"
SIGN_RSA = "sign RSA-2048 PSS SHA-256"
DEC_OAEP = "decrypt RSA-2048 OAEP-SHA256"
GRPC_SIGN_EC = "gRPC sign ECDSA P-256"
GRPC_SIGN_RSA = "gRPC sign RSA-2048 PSS SHA-256"
GRPC_DEC_OAEP = "gRPC decrypt RSA-2048 OAEP-SHA256"
ASYMMETRIC_REST = (SIGN_EC, SIGN_RSA, DEC_OAEP)
ASYMMETRIC_GRPC = (GRPC_SIGN_EC, GRPC_SIGN_RSA, GRPC_DEC_OAEP)
ASYMMETRIC = ASYMMETRIC_REST + ASYMMETRIC_GRPC
# scenario -> the asym_raw.py row of the same mechanism
RAW_ROW = {s: s for s in ASYMMETRIC_REST}
RAW_ROW.update(zip(ASYMMETRIC_GRPC, ASYMMETRIC_REST, strict=True))

GRPC = (GRPC_SW, GRPC_HSM, BASE_G, *ASYMMETRIC_GRPC)

SMOKE = (ENC_SW, ENC_HSM, BASE_F, BASE_R, GRPC_SW, GRPC_HSM, BASE_G, *ASYMMETRIC)
ALL = (
    ENC_SW,
    ENC_HSM,
    DEC_SW,
    DEC_HSM,
    GDK_SW,
    GDK_HSM,
    GDKH_SW,
    GDKH_HSM,
    BASE_F,
    BASE_R,
    GRPC_SW,
    GRPC_HSM,
    BASE_G,
    *ASYMMETRIC,
)
PLAINTEXT = bytes(range(32))
BASELINE_PATH = "/kms/v1/keys/baseline:encrypt"
SIGNATURE_KEYS = "/kms/v1/asymmetricSignatureKeys"
ENCRYPTION_KEYS = "/kms/v1/asymmetricEncryptionKeys"


@dataclass(frozen=True)
class Scenario:
    """One endpoint with one body, on one server: ``kms``, ``F``, ``R`` or ``G``.

    A gRPC scenario (``grpc_key`` set) is a ``grpc_method`` call (grpc_client.CALLS:
    Encrypt, Sign or Decrypt) with ``grpc_payload`` under that key id; ``path`` and
    ``body`` are empty.
    """

    name: str
    server: str
    path: str
    body: bytes
    grpc_key: str | None = None
    grpc_method: str = "encrypt"
    grpc_payload: bytes = PLAINTEXT

    @property
    def is_grpc(self) -> bool:
        """True for the scenarios driven by the gRPC load clients."""
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


def build_asymmetric(kms: ApiClient, names: tuple[str, ...] | None = None) -> list[Scenario]:
    """The asymmetric scenarios (or those among ``names``), their keys created through the API.

    One ECDSA P-256 and one RSA-2048 PSS SHA-256 signature key and one RSA-2048 OAEP
    encryption key; Sign sends the 32-byte ``PLAINTEXT`` as the message, Decrypt one
    OAEP-SHA256 ciphertext of it, made once with the key's served public key.
    """
    wanted = [n for n in ASYMMETRIC if names is None or n in names]
    if not wanted:
        return []
    ec_key = kms.create_key_pair(
        SIGNATURE_KEYS, "bench-ecdsa-p256", "signatureAlgorithm", "ECDSA_NIST_P256_SHA_256"
    )
    pss_key = kms.create_key_pair(
        SIGNATURE_KEYS, "bench-rsa2048-pss", "signatureAlgorithm", "RSA_2048_SIGN_PSS_SHA_256"
    )
    oaep_key = kms.create_key_pair(
        ENCRYPTION_KEYS, "bench-rsa2048-oaep", "encryptionAlgorithm", "RSA_2048_ENC_OAEP_SHA_256"
    )
    ciphertext = _oaep_ciphertext(kms, oaep_key)
    sign_body = _json({"message": b64(PLAINTEXT)})
    scenarios = [
        Scenario(SIGN_EC, "kms", f"{SIGNATURE_KEYS}/{ec_key}:sign", sign_body),
        Scenario(SIGN_RSA, "kms", f"{SIGNATURE_KEYS}/{pss_key}:sign", sign_body),
        Scenario(
            DEC_OAEP,
            "kms",
            f"{ENCRYPTION_KEYS}/{oaep_key}:decrypt",
            _json({"ciphertext": b64(ciphertext)}),
        ),
        Scenario(GRPC_SIGN_EC, "kms", "", b"", ec_key, "sign"),
        Scenario(GRPC_SIGN_RSA, "kms", "", b"", pss_key, "sign"),
        Scenario(GRPC_DEC_OAEP, "kms", "", b"", oaep_key, "decrypt", ciphertext),
    ]
    return [s for s in scenarios if s.name in wanted]


def _oaep_ciphertext(kms: ApiClient, key_id: str) -> bytes:
    pem = kms.get(f"{ENCRYPTION_KEYS}/{key_id}/publicKey")["publicKey"]
    public = serialization.load_pem_public_key(pem.encode())
    if not isinstance(public, rsa.RSAPublicKey):
        raise TypeError(f"{key_id}: the served public key is not RSA")
    oaep = padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), None)
    return public.encrypt(PLAINTEXT, oaep)
