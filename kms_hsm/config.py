"""Settings: one object, read from the environment when a process starts, passed down."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from kms_hsm.errors import InvalidArgument

DEFAULT_PKCS11_LIBRARY = "/usr/lib/softhsm/libsofthsm2.so"
# The port gRPC clients expect; served by default only on the embedded default token.
DEFAULT_GRPC_PORT = 50051
# KMS_HSM_MIN_ROTATION_PERIOD: whole seconds, or a whole number of s, m, h or d.
_PERIOD = re.compile(r"([0-9]+)([smhd]?)", re.ASCII)
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86_400}


class Settings(BaseSettings):
    """Every knob of the service; environment names are ``KMS_HSM_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="KMS_HSM_", extra="ignore")

    data_dir: Path = Path("./.kms-hsm")
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    workers: int = Field(default=1, ge=1, le=64)
    pkcs11_library: str = DEFAULT_PKCS11_LIBRARY
    token_label: str = "kms-hsm"  # noqa: S105 - a label, not a secret
    pin: SecretStr | None = None
    pin_file: Path | None = None
    database_url: str | None = None
    # How long start-up keeps retrying to find the token and log in before giving up.
    hsm_startup_timeout: float = Field(default=20.0, ge=0)
    # Longest an HSM call or a readiness check may take before it answers 503.
    call_timeout: float = Field(default=5.0, gt=0)
    # Longest a key-pair generation may take (RSA-4096 takes seconds in SoftHSM2); it runs
    # in a second HSM agent of its own, so that data-plane calls never queue behind it.
    keygen_timeout: float = Field(default=60.0, gt=0)
    # Software key material is cached decrypted in process memory for this long.
    material_cache_ttl: float = Field(default=300.0, ge=0)
    material_cache_size: int = Field(default=10_000, ge=0)
    # Seconds between scheduler passes (automatic rotation, due destructions); 0 = off.
    scheduler_interval: float = Field(default=30.0, ge=0)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # Clients must present a certificate signed by this CA (mutual TLS).
    tls_client_ca: Path | None = None
    # Audit events are also appended here as JSON lines (the database keeps the chain).
    audit_log_file: Path | None = None
    # Seconds a token object must stay without a database row before it is destroyed.
    orphan_grace: float = Field(default=60.0, ge=0)
    log_level: str = "INFO"
    # "text" (one escaped line a record) or "json" (one JSON object a line, and one record
    # per API call at INFO; docs/operations.md).
    log_format: Literal["text", "json"] = "text"
    # Prometheus /metrics (docs/operations.md): off unless a port is given; plain HTTP on
    # loopback unless a host is given. One endpoint adds up every worker.
    metrics_port: Annotated[int, Field(ge=1, le=65535)] | None = None
    metrics_host: str = "127.0.0.1"
    # --- Limits on hostile clients (issue 15; README "Security") ---
    # Largest request head (request line and headers) a connection may send: 431 beyond it.
    max_header_bytes: int = Field(default=16 * 1024, ge=1024, le=1024 * 1024)
    # Seconds a connection has to send a complete request head, from its first byte or from
    # the moment it opened; a connection that runs out is closed (at a random moment
    # between 1 and 1.25 times this, so that connections opened together do not all go at
    # once): quietly if it sent nothing, with 408 if it sent part of a head. A request's
    # whole body has as long again from the end of its head (408, and the connection is
    # the first closed to make room once overdue).
    header_timeout: float = Field(default=10.0, gt=0)
    # Open client connections per worker, lowered to the open-file limit (raised to its
    # hard limit at start) minus 256 kept for the token, the database, the scheduler and
    # the logs (kms_hsm.api.protocol.FD_RESERVE). Beyond it the oldest connection that has
    # not sent a complete request head (or whose body is overdue) is closed, else the new one.
    max_connections: int = Field(default=4096, ge=1)
    # Shortest rotationPeriod a key may have, in seconds ("86400", "24h" and "1d" are equal):
    # each rotation makes a token object, so a short period fills the token.
    min_rotation_period: int = Field(default=86_400, ge=1, le=3650 * 86_400)
    # Failed authentications allowed per source address in a window of
    # seconds; beyond it the answer is 429 with Retry-After.
    auth_failure_limit: int = Field(default=20, ge=1)
    auth_failure_window: float = Field(default=60.0, gt=0)
    # Session copies of HSM keys each agent keeps; the least recently used is destroyed.
    session_cache_size: int = Field(default=1024, ge=1)
    # Most seconds between checkpoints of the audit chain's head (token and audit log file).
    audit_checkpoint_interval: float = Field(default=1.0, gt=0)
    # --- gRPC (issue 16; README "gRPC and the official SDKs") ---
    # The gRPC port (every worker serves it); "off": no gRPC; unset: 50051 on the embedded
    # default token, none with a configured HSM (``grpc_serving_port``). TLS and mutual TLS
    # come from the same tls_cert / tls_key / tls_client_ca as REST.
    grpc_port: Annotated[int, Field(ge=0, le=65535)] | Literal["off"] | None = None
    # The "host:port" ApiEndpointService answers for every service id; unset: the authority
    # the client dialled (TLS SNI), else host:grpc_port.
    grpc_advertise: str | None = None
    # Lifetime of an IAM token made by IamTokenService.Create (never past its source token).
    iam_token_ttl: float = Field(default=12 * 3600.0, gt=0)
    # /docs (Swagger UI) and /redoc: off, because their pages load scripts from a CDN
    # (they do not work offline, and an admin's browser would run third-party code).
    # /openapi.json is always served.
    docs: bool = False

    @field_validator("min_rotation_period", mode="before")
    @classmethod
    def _period_with_unit(cls, value: object) -> object:
        """Seconds, or a whole number with a unit: "90s", "30m", "24h", "1d"."""
        if not isinstance(value, str):
            return value
        match = _PERIOD.fullmatch(value.strip())
        if match is None:
            raise ValueError('a whole number of seconds, or with a unit: "86400", "24h", "1d"')
        return int(match[1]) * _UNIT_SECONDS[match[2]]

    @field_validator("log_format", mode="before")
    @classmethod
    def _format_any_case(cls, value: object) -> object:
        """ "json" or "text", in any case."""
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("grpc_port", mode="before")
    @classmethod
    def _port_or_off(cls, value: object) -> object:
        """A port number, or "off" in any case (an empty value means unset)."""
        if isinstance(value, str):
            value = value.strip()
            if value.lower() == "off":
                return "off"
            if not value:
                return None
        return value

    @property
    def grpc_serving_port(self) -> int | None:
        """The port gRPC is served on; None when it is not served."""
        if self.grpc_port == "off":
            return None
        if self.grpc_port is None:
            return DEFAULT_GRPC_PORT if self.embedded_token else None
        return self.grpc_port

    @property
    def embedded_token(self) -> bool:
        """True when no PIN is configured: the service runs its own SoftHSM2 token."""
        return self.pin is None and self.pin_file is None

    @property
    def softhsm_conf(self) -> Path:
        """SoftHSM2 config of the embedded token."""
        return self.data_dir.resolve() / "softhsm2.conf"

    @property
    def admin_token_file(self) -> Path:
        """Where the first admin bearer token is written (0600) on first start."""
        return self.data_dir.resolve() / "admin-token"

    @property
    def effective_pin_file(self) -> Path | None:
        """The PIN file in use: the configured one, or the embedded token's user-pin."""
        if self.pin_file is not None:
            return self.pin_file
        if self.pin is None:
            return self.data_dir.resolve() / "user-pin"
        return None

    def effective_database_url(self) -> str:
        """The configured database URL, or SQLite in the data directory."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.data_dir.resolve() / 'kms.db'}"

    def read_pin(self) -> str:
        """The user PIN, from KMS_HSM_PIN or a 0600 file; never logged."""
        if self.pin is not None:
            return self.pin.get_secret_value()
        path = self.effective_pin_file
        assert path is not None
        return read_secret_file(path, "PIN file")


def read_secret_file(path: Path, what: str) -> str:
    """Read a secret from a file that only its owner may read (mode 0600 or stricter)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise InvalidArgument(f"{what} {path} does not exist") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise InvalidArgument(f"{what} {path} must not be readable by group or others (chmod 600)")
    try:
        value = path.read_text(encoding="utf-8").strip()
    except UnicodeDecodeError:
        raise InvalidArgument(f"{what} {path} is not UTF-8 text") from None
    if not value:
        raise InvalidArgument(f"{what} {path} is empty")
    return value


def write_secret_file(path: Path, value: str) -> None:
    """Create ``path`` with mode 0600 and write ``value``; never widens an existing file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # Not through a symlink another user planted, and narrowed before the secret is written:
    # an existing file of mode 0644 would otherwise be readable while it holds the secret.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(value + "\n")
