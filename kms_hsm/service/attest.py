"""Custody attestation of one key (``kms-hsm hsm attest``), read from the token itself.

The database says which token objects belong to a key; the token says how each is held:

* a symmetric key: one AES-256 token object per ``AES_256_HSM`` version (``CKA_ID`` = the
  version id). Software versions have no token object: their material is stored wrapped
  by the root key, so the root key that wraps them is attested instead. Destroyed
  versions have nothing left to attest.
* an asymmetric key (signature or encryption): its private key (``CKA_ID`` = the key id),
  and the SHA-256 fingerprint of the public key's DER SubjectPublicKeyInfo as the token
  returns it, compared with the one the database stored when the pair was made.

For each private or secret key object: CKA_SENSITIVE, CKA_ALWAYS_SENSITIVE,
CKA_EXTRACTABLE, CKA_NEVER_EXTRACTABLE, CKA_LOCAL and CKA_PRIVATE, and whether each is
what custody requires (``REQUIRED``). Nothing here changes the token or the database.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from sqlalchemy import select

from kms_hsm.crypto.token import ROOT_KEY_PREFIX, Token
from kms_hsm.domain.asymmetric import EncryptionAlgorithm, KeyFamily, SignatureAlgorithm
from kms_hsm.domain.model import Algorithm, VersionStatus
from kms_hsm.errors import KeyMaterialMissing, NotFound
from kms_hsm.store.engine import Database
from kms_hsm.store.tables import KeyRow, KeyVersionRow

# What custody requires of every private or secret key object, in the order printed.
REQUIRED: dict[str, bool] = {
    "SENSITIVE": True,
    "ALWAYS_SENSITIVE": True,
    "EXTRACTABLE": False,
    "NEVER_EXTRACTABLE": True,
    "LOCAL": True,
    "PRIVATE": True,
}


@dataclass(frozen=True)
class ObjectAttestation:
    """One token key object: what it is, whether the token has it, its custody flags."""

    object_id: str
    role: str
    present: bool
    attributes: dict[str, bool] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Present, with every flag as ``REQUIRED`` says."""
        return self.present and all(self.attributes.get(n) is v for n, v in REQUIRED.items())

    def as_json(self) -> dict[str, object]:
        """A JSON-ready dict."""
        return {
            "objectId": self.object_id,
            "role": self.role,
            "present": self.present,
            "attributes": {f"CKA_{n}": v for n, v in self.attributes.items()},
            "ok": self.ok,
        }


@dataclass(frozen=True)
class KeyAttestation:
    """Everything ``hsm attest`` reports about one key."""

    key_id: str
    family: KeyFamily
    algorithm: str
    objects: list[ObjectAttestation]
    notes: list[str]
    # Key pairs only: SHA-256 (hex) of the DER SPKI read from the token / stored.
    public_key_sha256: str | None = None
    stored_public_key_sha256: str | None = None

    @property
    def public_key_matches(self) -> bool | None:
        """Key pairs: whether the token's public key is the stored one; None otherwise."""
        if self.family is KeyFamily.SYMMETRIC:
            return None
        return (
            self.public_key_sha256 is not None
            and self.public_key_sha256 == self.stored_public_key_sha256
        )

    @property
    def ok(self) -> bool:
        """Every object present and held as required, and the public key the stored one."""
        return all(o.ok for o in self.objects) and self.public_key_matches is not False

    def as_json(self) -> dict[str, object]:
        """A JSON-ready dict (``--json``)."""
        return {
            "keyId": self.key_id,
            "family": self.family.service,
            "algorithm": self.algorithm,
            "objects": [o.as_json() for o in self.objects],
            "publicKeySha256": self.public_key_sha256,
            "storedPublicKeySha256": self.stored_public_key_sha256,
            "publicKeyMatches": self.public_key_matches,
            "notes": self.notes,
            "ok": self.ok,
        }


async def attest_key(db: Database, token: Token, key_id: str) -> KeyAttestation:
    """Attest ``key_id`` from the token's own attributes; NotFound for an unknown key."""
    with db.read() as session:
        key = session.get(KeyRow, key_id)
        if key is None or key.deleted_at is not None:
            raise NotFound(f"key {key_id} not found")
        family = KeyFamily(key.family)
        stored_public = key.public_key
        algorithm = key.default_algorithm
        versions = list(
            session.scalars(
                select(KeyVersionRow)
                .where(KeyVersionRow.key_id == key_id)
                .order_by(KeyVersionRow.created_at, KeyVersionRow.id)
            )
        )
        wanted = [(v.id, v.algorithm, v.status, v.hosted_by_hsm, v.root_key_id) for v in versions]
    if family is KeyFamily.SYMMETRIC:
        return await _symmetric(token, key_id, Algorithm(algorithm).name, wanted)
    name = (
        SignatureAlgorithm(algorithm).name
        if family is KeyFamily.ASYMMETRIC_SIGNATURE
        else EncryptionAlgorithm(algorithm).name
    )
    private = await _object(token, key_id.encode(), "private key")
    try:
        public_der: bytes | None = await token.public_key(key_id.encode())
    except KeyMaterialMissing:
        public_der = None
    notes = [] if public_der is not None else ["the token holds no public key with this id"]
    return KeyAttestation(
        key_id,
        family,
        name,
        [private],
        notes,
        public_key_sha256=_sha256(public_der),
        stored_public_key_sha256=_sha256(stored_public),
    )


async def _symmetric(
    token: Token,
    key_id: str,
    algorithm: str,
    versions: list[tuple[str, int, int, bool, str | None]],
) -> KeyAttestation:
    objects: list[ObjectAttestation] = []
    notes: list[str] = []
    roots: dict[str, list[str]] = {}
    for version_id, version_algorithm, status, hosted_by_hsm, root_key_id in versions:
        label = f"version {version_id} ({Algorithm(version_algorithm).name})"
        if status == VersionStatus.DESTROYED:
            notes.append(f"{label} is destroyed: nothing left to attest")
        elif hosted_by_hsm:
            objects.append(await _object(token, version_id.encode(), label))
        elif root_key_id is None:
            notes.append(f"{label} is software material with no root key recorded")
        else:
            roots.setdefault(root_key_id, []).append(version_id)
    for root_key_id, version_ids in roots.items():
        notes.append(
            f"{', '.join(version_ids)}: software material (no token object), stored wrapped "
            f"by root key {root_key_id}, which is attested instead"
        )
        objects.append(
            await _object(token, ROOT_KEY_PREFIX + root_key_id.encode(), f"root key {root_key_id}")
        )
    return KeyAttestation(key_id, KeyFamily.SYMMETRIC, algorithm, objects, notes)


async def _object(token: Token, object_id: bytes, role: str) -> ObjectAttestation:
    printable = object_id.decode("utf-8", "replace")
    try:
        found = await token.key_attributes(object_id, tuple(REQUIRED))
    except KeyMaterialMissing:
        return ObjectAttestation(printable, role, present=False)
    return ObjectAttestation(printable, role, True, {n: bool(found[n]) for n in REQUIRED})


def _sha256(der: bytes | None) -> str | None:
    return None if der is None else hashlib.sha256(der).hexdigest()
