"""Everything one serving process holds, built from Settings and torn down in reverse.

``prepare`` runs once in the parent before any worker starts (data directory, embedded
token, schema, first admin token). ``Runtime.start`` runs in each worker process (after
the fork or spawn), and ``Runtime.open`` on its event loop starts the worker's HSM agent,
the only process that initialises the PKCS#11 module for that worker.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from sqlalchemy import Engine, select, text

from kms_hsm.audit.batcher import AuditBatcher
from kms_hsm.audit.chain import CHAIN_KEY_NAME
from kms_hsm.audit.checkpoints import AuditCheckpoints
from kms_hsm.audit.store import AuditLog
from kms_hsm.config import Settings, write_secret_file
from kms_hsm.crypto.agent import AgentConfig, AgentPool, AgentToken
from kms_hsm.crypto.software import MaterialCache
from kms_hsm.domain.ids import PRINCIPAL_PREFIX, new_id
from kms_hsm.errors import BackendUnavailable, FailedPrecondition, LoginRefused
from kms_hsm.service.access import AccessService
from kms_hsm.service.auth import IAM_KEY_NAME, AuthService, new_token, token_hash
from kms_hsm.service.crypto import CryptoService
from kms_hsm.service.key_pairs import KeyPairService
from kms_hsm.service.keyring import Keyring
from kms_hsm.service.keys import Clock, KeyService, utc_now
from kms_hsm.service.scheduler import Scheduler
from kms_hsm.store.engine import (
    Database,
    make_engine,
    serialize_with_migrations,
    upgrade_schema,
)
from kms_hsm.store.state import StateWatch
from kms_hsm.store.tables import AccessBindingRow, PrincipalRow, TokenRow

log = logging.getLogger(__name__)

# Seconds between attempts to reach the token at start-up.
_OPEN_RETRY = 0.5
# Seconds one readiness round-trip through the token answers for.
_HSM_PROBE_TTL = 1.0


def init_script() -> Path:
    """``softhsm/init-token.sh``: from the source tree, or the copy inside the wheel."""
    override = os.environ.get("KMS_HSM_INIT_TOKEN_SCRIPT")
    candidates = [Path(override)] if override else []
    package_dir = Path(__file__).resolve().parent.parent
    candidates += [
        package_dir.parent / "softhsm" / "init-token.sh",
        package_dir / "_softhsm" / "init-token.sh",
    ]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise BackendUnavailable("softhsm/init-token.sh not found; set KMS_HSM_INIT_TOKEN_SCRIPT")


def use_embedded_token_env(settings: Settings) -> None:
    """Point SoftHSM2 at the data directory's config (embedded default only)."""
    if settings.embedded_token:
        os.environ["SOFTHSM2_CONF"] = str(settings.softhsm_conf)


def prepare(settings: Settings) -> None:
    """One-time set-up before serving: token, schema, first admin token. No PKCS#11 here."""
    data_dir = settings.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(data_dir, 0o700)
    if settings.embedded_token:
        env = dict(os.environ)
        env.update(
            PYTHON=sys.executable,
            KMS_HSM_TOKEN_LABEL=settings.token_label,
            KMS_HSM_PKCS11_LIBRARY=settings.pkcs11_library,
        )
        result = subprocess.run(
            ["bash", str(init_script()), str(data_dir)],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise BackendUnavailable(
                f"initialising the embedded SoftHSM2 token failed: {result.stderr.strip()}"
            )
        log.info("embedded SoftHSM2 token: %s", result.stdout.strip())
        use_embedded_token_env(settings)
    engine = make_engine(settings.effective_database_url())
    try:
        upgrade_schema(engine)
        bootstrap_admin(settings, engine)
    finally:
        engine.dispose()


def bootstrap_admin(settings: Settings, engine: Engine) -> None:
    """On first start, create an admin principal and write its token to a 0600 file.

    One transaction under the migration lock, so that replicas starting together create
    exactly one admin.
    """
    db = Database(engine)
    with db.write() as session:
        serialize_with_migrations(session)
        if session.scalars(select(PrincipalRow.id).limit(1)).first() is not None:
            return
        now = utc_now()
        admin = PrincipalRow(id=new_id(PRINCIPAL_PREFIX), name="admin", created_at=now)
        session.add(admin)
        session.flush()
        session.add(
            AccessBindingRow(
                resource_type="instance",
                resource_id="*",
                role_id="kms.admin",
                subject_type="serviceAccount",
                subject_id=admin.id,
                created_at=now,
            )
        )
        token = new_token()
        session.add(
            TokenRow(
                id=new_id("tok"),
                principal_id=admin.id,
                token_sha256=token_hash(token),
                created_at=now,
            )
        )
        write_secret_file(settings.admin_token_file, token)
    log.info("first admin token written to %s (mode 0600)", settings.admin_token_file)


@dataclass
class Runtime:
    """The services of one process and the resources behind them.

    The process itself never loads PKCS#11: every token call goes to the HSM agent of the
    running event loop (``AgentToken``), which alone logs in to the token.
    """

    settings: Settings
    engine: Engine
    keyring: Keyring
    keys: KeyService
    key_pairs: KeyPairService
    crypto: CryptoService
    auth: AuthService
    access: AccessService
    audit: AuditLog
    audit_batcher: AuditBatcher
    watch: StateWatch
    agents: AgentPool
    scheduler: Scheduler
    audit_checkpoints: AuditCheckpoints
    # The last token round-trip of readiness: (its loop, the task, when it started).
    _hsm_probe: tuple[asyncio.AbstractEventLoop, asyncio.Future[None], float] | None = field(
        default=None, repr=False
    )
    hsm_probes: int = 0  # token round-trips readiness has made

    @classmethod
    def start(cls, settings: Settings, clock: Clock = utc_now) -> Runtime:
        """Open the database and build the services; ``open`` then reaches the token."""
        use_embedded_token_env(settings)
        engine = make_engine(settings.effective_database_url())
        db = Database(engine)
        agents = AgentPool(
            AgentConfig(
                library=settings.pkcs11_library,
                token_label=settings.token_label,
                pin=settings.read_pin(),
                # Half the wait for its answer: an agent that keeps finding no token says
                # why before the worker gives up on it.
                startup_timeout=settings.call_timeout / 2,
                log_level=settings.log_level.upper(),
                session_cache_size=settings.session_cache_size,
                log_format=settings.log_format,
            ),
            settings.call_timeout,
            keygen_timeout=settings.keygen_timeout,
        )
        token = AgentToken(agents)
        keyring = Keyring(
            token,
            MaterialCache(settings.material_cache_size, settings.material_cache_ttl),
            db,
        )
        audit = AuditLog(db, settings.audit_log_file)
        watch = StateWatch(engine)
        keys = KeyService(
            db,
            keyring,
            clock,
            audit,
            min_rotation_period=timedelta(seconds=settings.min_rotation_period),
        )
        checkpoints = AuditCheckpoints(
            audit,
            token,
            settings.audit_checkpoint_interval,
            stop_timeout=2 * settings.call_timeout,
        )
        return cls(
            settings=settings,
            engine=engine,
            keyring=keyring,
            keys=keys,
            key_pairs=KeyPairService(db, token, keyring, keys, audit, watch),
            crypto=CryptoService(db, keyring, watch),
            auth=AuthService(
                db,
                clock,
                watch,
                audit,
                failure_limit=settings.auth_failure_limit,
                failure_window=settings.auth_failure_window,
            ),
            access=AccessService(db, audit, clock, watch),
            audit=audit,
            audit_batcher=AuditBatcher(audit, db),
            watch=watch,
            agents=agents,
            scheduler=Scheduler(
                keys,
                keyring,
                settings.scheduler_interval,
                settings.orphan_grace,
                checkpoints=checkpoints,
            ),
            audit_checkpoints=checkpoints,
        )

    async def open(self) -> None:
        """Start this loop's HSM agent and settle the root key and the service secrets.

        The audit chain key is one of them: until it is unwrapped nothing can be audited.

        Retried until the start-up deadline (``KMS_HSM_HSM_STARTUP_TIMEOUT``): a token that
        another process is logging in to, or that is not there yet, may refuse for a while.
        """
        deadline = time.monotonic() + self.settings.hsm_startup_timeout
        while True:
            try:
                root_key_id = await self.keyring.ensure_root_key()
                await self.keys.load_secrets()
                self.auth.set_iam_key(await self.keyring.service_secret(IAM_KEY_NAME))
                self.audit_checkpoints.set_root_key(root_key_id)
                await self._refuse_a_new_chain_key()
                self.audit.set_chain_key(await self.keyring.service_secret(CHAIN_KEY_NAME))
                return
            except LoginRefused:
                raise  # another try would burn another PIN attempt
            except BackendUnavailable as exc:
                if time.monotonic() >= deadline:
                    raise BackendUnavailable(exc.log_detail or exc.message) from None
                await asyncio.sleep(_OPEN_RETRY)

    async def _refuse_a_new_chain_key(self) -> None:
        """Fail when the chain key is gone from a database whose chain (or token) used one.

        Making a new key then would let whoever deleted the row rewrite the chain and have
        it verify (the old checkpoints would merely look foreign), so start-up stops.
        """
        if self.keyring.has_service_secret(CHAIN_KEY_NAME):
            return
        if self.audit.has_mac_events() or await self.audit_checkpoints.in_token():
            raise FailedPrecondition(
                "the audit chain key is missing from the database, but MAC'd events or the "
                "token's audit checkpoints show that one was in use: the database was "
                "altered or restored from the wrong copy; refusing to start a new chain"
            )

    def preflight(self) -> None:
        """Before serving: reach the token through an agent of its own, then stop that agent."""

        async def check() -> None:
            try:
                await self.open()
            finally:
                self.agents.close_current()

        asyncio.run(check())

    def check_database(self) -> None:
        """A query round-trip to the metadata database."""
        with self.keyring.database.read() as session:
            session.execute(text("SELECT 1"))

    async def check_hsm(self) -> None:
        """A real AES-GCM round-trip under the root key, inside the token.

        One at a time, shared by every caller while it runs, and a success answers for
        ``_HSM_PROBE_TTL`` seconds: ``/readyz`` needs no credentials, and a flood of it
        must not become a flood of token calls. A failure is not kept: the next caller
        probes again (and fails at once while the HSM agent is down).
        """
        loop = asyncio.get_running_loop()
        probe = self._hsm_probe
        if probe is None or probe[0] is not loop or not _still_answers(probe[1], probe[2]):
            self.hsm_probes += 1
            probe = self._hsm_probe = (
                loop,
                asyncio.ensure_future(self.keyring.self_test()),
                time.monotonic(),
            )
        # Shielded: a caller that gives up (its deadline) leaves the probe to the others.
        await asyncio.shield(probe[1])

    def close(self) -> None:
        """Stop the HSM agents, the audit writer, then the database."""
        self.audit_batcher.close()
        self.agents.close()
        self.engine.dispose()


def _still_answers(probe: asyncio.Future[None], started: float) -> bool:
    if not probe.done():
        return True
    ok = not probe.cancelled() and probe.exception() is None
    return ok and time.monotonic() - started <= _HSM_PROBE_TTL
