"""Where each version's material lives, and the one place that picks a crypto backend.

* HSM versions (``AES_256_HSM``): a token key with ``CKA_ID`` = version id; every
  operation is a PKCS#11 call and the key never leaves the token.
* Software versions (``AES_128/192/256``): material from the OS CSPRNG, stored only as
  ``nonce || AES-GCM(root key)`` computed inside the token, with AAD binding it to its key
  and version; used through ``cryptography`` once unwrapped into the material cache.
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from kms_hsm.crypto.software import MaterialCache, SoftwareKey
from kms_hsm.crypto.token import ROOT_KEY_PREFIX, Token
from kms_hsm.domain import envelope as env
from kms_hsm.domain.ids import new_id
from kms_hsm.domain.model import Algorithm, KeyVersion, VersionStatus
from kms_hsm.errors import DecryptionFailed, Internal, InvalidArgument
from kms_hsm.store import repository
from kms_hsm.store.engine import Database
from kms_hsm.store.repository import StoredVersion
from kms_hsm.store.tables import KeyVersionRow, RootKeyRow, ServiceSecretRow

log = logging.getLogger(__name__)

Rng = Callable[[int], bytes]
_MATERIAL_AAD_LABEL = b"kms-hsm software material v1"


@dataclass(frozen=True, slots=True)
class NewMaterial:
    """What a new version stores: nothing for HSM versions, a wrapped blob otherwise."""

    wrapped_material: bytes | None
    root_key_id: str | None


def _material_aad(key_id: str, version_id: str) -> bytes:
    parts = [_MATERIAL_AAD_LABEL, key_id.encode(), version_id.encode()]
    return b"".join(struct.pack(">I", len(p)) + p for p in parts)


class Keyring:
    """Creates, uses and destroys version material; knows both backends."""

    def __init__(
        self,
        token: Token,
        cache: MaterialCache,
        database: Database,
        rng: Rng = os.urandom,
    ) -> None:
        self._token = token
        self._cache = cache
        self._db = database
        # Key material and nonces, straight from the OS: a user-space buffer of random
        # bytes would repeat after a VM snapshot is restored twice (AES-GCM nonce reuse).
        self._rng = rng
        self._root_key_id: str | None = None

    # ------------------------------------------------------------------ root key

    async def ensure_root_key(self) -> str:
        """Find the root key chosen in the database, or make one and try to be the chooser.

        Several processes may start at once: each may generate a candidate, but the unique
        row decides, and a loser destroys its candidate.
        """
        with self._db.read() as session:
            chosen = repository.get_root_key_id(session)
        if chosen is None:
            candidate = new_id("abr")
            await self._token.generate_key(ROOT_KEY_PREFIX + candidate.encode())
            try:
                with self._db.write() as session:
                    session.add(RootKeyRow(name="root", key_id=candidate, created_at=_now()))
                chosen = candidate
                log.info("created HSM root key %s", candidate)
            except IntegrityError:
                await self._token.destroy_key(ROOT_KEY_PREFIX + candidate.encode())
                with self._db.read() as session:
                    chosen = repository.get_root_key_id(session)
        if chosen is None:
            raise Internal(log_detail="root key row vanished")
        await self._token.key_attributes(ROOT_KEY_PREFIX + chosen.encode())
        self._root_key_id = chosen
        return chosen

    @property
    def database(self) -> Database:
        """The metadata database this keyring reads material from."""
        return self._db

    async def self_test(self) -> None:
        """Encrypt and decrypt a fresh value under the root key in the token."""
        nonce = self._rng(env.NONCE_BYTES)
        probe = self._rng(16)
        root = self._root_object_id()
        sealed = await self._token.encrypt(root, nonce, probe, b"kms-hsm readiness")
        if await self._token.decrypt(root, nonce, sealed, b"kms-hsm readiness") != probe:
            raise Internal(log_detail="root key round-trip returned other bytes")

    def has_service_secret(self, name: str) -> bool:
        """True when the database holds the service secret ``name``."""
        with self._db.read() as session:
            return repository.get_service_secret(session, name) is not None

    async def service_secret(self, name: str, length: int = 32) -> bytes:
        """A secret of the service, kept in the database wrapped by the root key.

        Made on first use; concurrent first uses agree through the unique name.
        """
        aad = _material_aad("service-secret", name)
        with self._db.read() as session:
            row = repository.get_service_secret(session, name)
        if row is None:
            secret = self._rng(length)
            nonce = self._rng(env.NONCE_BYTES)
            sealed = await self._token.encrypt(self._root_object_id(), nonce, secret, aad)
            try:
                with self._db.write() as session:
                    session.add(
                        ServiceSecretRow(
                            name=name,
                            wrapped=nonce + sealed,
                            root_key_id=self._root_key_id,
                            created_at=_now(),
                        )
                    )
                return secret
            except IntegrityError:
                with self._db.read() as session:
                    row = repository.get_service_secret(session, name)
            if row is None:
                raise Internal(log_detail=f"service secret {name} vanished")
        try:
            return await self._token.decrypt(
                self._root_object_id(row.root_key_id),
                row.wrapped[: env.NONCE_BYTES],
                row.wrapped[env.NONCE_BYTES :],
                aad,
            )
        except DecryptionFailed:
            raise Internal(log_detail=f"service secret {name} failed to unwrap") from None

    def _root_object_id(self, root_key_id: str | None = None) -> bytes:
        chosen = root_key_id or self._root_key_id
        if chosen is None:
            raise Internal(log_detail="root key not loaded")
        return ROOT_KEY_PREFIX + chosen.encode()

    # ------------------------------------------------------------------ material

    async def create_material(
        self, key_id: str, version_id: str, algorithm: Algorithm
    ) -> NewMaterial:
        """Make material for a new version; HSM keys are born in the token."""
        if algorithm.hosted_by_hsm:
            await self._token.generate_key(version_id.encode(), self.object_label(version_id))
            return NewMaterial(None, None)
        material = self._rng(algorithm.key_bytes)
        nonce = self._rng(env.NONCE_BYTES)
        sealed = await self._token.encrypt(
            self._root_object_id(), nonce, material, _material_aad(key_id, version_id)
        )
        return NewMaterial(nonce + sealed, self._root_key_id)

    def object_label(self, object_id: str) -> str:
        """The ``CKA_LABEL`` of a token object made for a version or a key pair."""
        # The label names this deployment (its root key), so that reconciliation never
        # touches objects of another deployment that happens to share the token.
        return f"{self._label_prefix()}{object_id}"

    def _label_prefix(self) -> str:
        return f"kms-hsm/{self._root_key_id}/"

    async def orphan_objects(self) -> set[bytes]:
        """This deployment's token objects that no live database row accounts for.

        Version keys (``CKA_ID`` = version id) and key pairs (``CKA_ID`` = key id) alike.
        Versions marked DESTROYED, and pairs of deleted keys, whose objects are still there
        count as orphans too.
        """
        ours = set(await self._token.find_key_ids(self._label_prefix()))
        if not ours:
            return set()
        with self._db.read() as session:
            live = {
                v.encode()
                for v in session.scalars(
                    select(KeyVersionRow.id).where(
                        KeyVersionRow.hosted_by_hsm.is_(True),
                        KeyVersionRow.status != int(VersionStatus.DESTROYED),
                    )
                )
            }
            live |= {k.encode() for k in repository.live_key_pair_ids(session)}
        return ours - live

    async def destroy_objects(self, object_ids: set[bytes]) -> int:
        """Destroy token objects by ``CKA_ID``; returns how many existed."""
        return sum([await self._token.destroy_key(object_id) for object_id in object_ids])

    def forget(self, version_id: str) -> None:
        """Drop a version's cached software material (it was scheduled or destroyed)."""
        self._cache.evict(version_id)

    async def discard_material(self, version: KeyVersion) -> bool:
        """Destroy a version's material: the token object (False: none found), or the
        cached software key."""
        self._cache.evict(version.id)
        if version.hosted_by_hsm:
            return await self._token.destroy_key(version.id.encode())
        return True

    async def _software_key(self, key_id: str, stored: StoredVersion) -> SoftwareKey:
        cached = self._cache.lookup(stored.version.id)
        if cached is not None:
            return cached
        blob = stored.wrapped_material
        if blob is None or len(blob) < env.NONCE_BYTES + env.TAG_BYTES:
            raise Internal(log_detail=f"version {stored.version.id} has no material")
        try:
            material = await self._token.decrypt(
                self._root_object_id(stored.root_key_id),
                blob[: env.NONCE_BYTES],
                blob[env.NONCE_BYTES :],
                _material_aad(key_id, stored.version.id),
            )
        except DecryptionFailed:
            raise Internal(
                log_detail=f"stored material of {stored.version.id} failed to unwrap"
            ) from None
        return self._cache.put(stored.version.id, material)

    # ------------------------------------------------------------------ crypto

    async def encrypt(
        self, key_id: str, stored: StoredVersion, plaintext: bytes, aad_context: bytes | None
    ) -> bytes:
        """Seal ``plaintext`` under ``stored``; returns a format 0x01 envelope."""
        header = env.make_header(env.EnvelopeFormat.AES_GCM, stored.version.id)
        aad = env.authenticated_data(header, key_id, aad_context)
        nonce = self._rng(env.NONCE_BYTES)
        if stored.version.hosted_by_hsm:
            sealed = await self._token.encrypt(stored.version.id.encode(), nonce, plaintext, aad)
        else:
            software_key = await self._software_key(key_id, stored)
            sealed = software_key.encrypt(nonce, plaintext, aad)
        return header + nonce + sealed

    async def decrypt(
        self,
        key_id: str,
        stored: StoredVersion,
        envelope: env.Envelope,
        aad_context: bytes | None,
    ) -> bytes:
        """Open an envelope made by ``encrypt`` or ``generate_data_key``."""
        aad = env.authenticated_data(envelope.header(), key_id, aad_context)
        if envelope.format is env.EnvelopeFormat.HSM_WRAPPED_KEY:
            if not stored.version.hosted_by_hsm:
                raise DecryptionFailed(log_detail="wrapped-key envelope for a software version")
            return await self._token.unwrap_data_key(
                stored.version.id.encode(),
                envelope.nonce,
                envelope.tag,
                envelope.wrapped_key,
                aad,
            )
        if stored.version.hosted_by_hsm:
            return await self._token.decrypt(
                stored.version.id.encode(), envelope.nonce, envelope.body, aad
            )
        software_key = await self._software_key(key_id, stored)
        return software_key.decrypt(envelope.nonce, envelope.body, aad)

    async def generate_data_key(
        self,
        key_id: str,
        stored: StoredVersion,
        spec: Algorithm,
        aad_context: bytes | None,
        *,
        skip_plaintext: bool,
    ) -> tuple[bytes, bytes]:
        """A new data key and its envelope; the plaintext is ``b""`` when skipped.

        ``AES_256_HSM`` data keys are born in the token's RNG: on an HSM version by
        ``C_GenerateKey`` and wrapped by ``C_WrapKey`` there (format 0x02); on a software
        version by ``C_GenerateRandom``. Other specs come from the OS CSPRNG and are
        sealed like any plaintext.
        """
        if spec is Algorithm.AES_256_HSM and stored.version.hosted_by_hsm:
            header = env.make_header(env.EnvelopeFormat.HSM_WRAPPED_KEY, stored.version.id)
            aad = env.authenticated_data(header, key_id, aad_context)
            nonce = self._rng(env.NONCE_BYTES)
            plaintext, tag, wrapped = await self._token.generate_wrapped_data_key(
                stored.version.id.encode(),
                spec.key_bytes,
                nonce,
                aad,
                want_plaintext=not skip_plaintext,
            )
            return plaintext, header + nonce + tag + wrapped
        if spec is Algorithm.AES_256_HSM:
            data_key = await self._token.random(spec.key_bytes)
        else:
            data_key = self._rng(spec.key_bytes)
        ciphertext = await self.encrypt(key_id, stored, data_key, aad_context)
        return (b"" if skip_plaintext else data_key), ciphertext


def check_data_key_spec(spec: Algorithm) -> Algorithm:
    """Map UNSPECIFIED to AES_256 (documented) and refuse GOST."""
    if spec is Algorithm.SYMMETRIC_ALGORITHM_UNSPECIFIED:
        return Algorithm.AES_256
    if spec is Algorithm.GOST_R_3412_2015_K:
        raise InvalidArgument("dataKeySpec GOST_R_3412_2015_K is not supported by this service")
    return spec


def _now() -> datetime:
    return datetime.now(UTC)
