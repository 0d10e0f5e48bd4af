"""Asymmetric keys: the control plane of both families and their private-key operations.

A key is one key pair in the token (``CKA_ID`` = the key id, label with this deployment's
prefix, so that the orphan sweep finds pairs as it finds version keys) and one ``keys``
row whose ``family`` is not symmetric; ``default_algorithm`` holds the family's algorithm
and ``public_key`` the SubjectPublicKeyInfo read from the token at creation. No versions.

Create makes the pair first (a token call through the key-generation agent, outside any
transaction), then commits; a failed commit destroys the pair again or leaves it to the
orphan sweep. Delete commits ``deleted_at`` first, then destroys the pair in the token; a
crash or a token failure in between leaves objects that no live row accounts for, which
the orphan sweep removes after its grace period.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kms_hsm.domain.asymmetric import AsymmetricKey, AsymmetricKeyStatus, KeyFamily
from kms_hsm.service.keys import Caller, Page
from kms_hsm.store.repository import StoredOperation


@dataclass(frozen=True, slots=True)
class KeyPairSpec:
    """``CreateAsymmetric…KeyRequest``; ``algorithm``: the family's enum value."""

    folder_id: str
    name: str = ""
    description: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    algorithm: int = 0
    deletion_protection: bool = False


@dataclass(frozen=True, slots=True)
class KeyPairUpdate:
    """Values for Update; only the fields the mask names are used."""

    name: str = ""
    description: str = ""
    status: AsymmetricKeyStatus = AsymmetricKeyStatus.STATUS_UNSPECIFIED
    labels: dict[str, str] | None = None
    deletion_protection: bool = False


# updateMask paths (snake_case, what ``KeyPairService.update`` takes).
UPDATABLE_FIELDS = frozenset({"name", "description", "status", "labels", "deletion_protection"})


class KeyPairService:
    """Both asymmetric families; every call names the family its API path belongs to.

    A key of another family (symmetric included) is ``NotFound`` with the same message as a
    key that does not exist.
    """

    async def create(self, family: KeyFamily, spec: KeyPairSpec, by: Caller) -> StoredOperation:
        """Make the pair in the token, then commit the key; a done Operation (response: key)."""
        raise NotImplementedError

    def get(self, family: KeyFamily, key_id: str) -> AsymmetricKey:
        """The live key of ``family``, or NotFound."""
        raise NotImplementedError

    def check_family(self, family: KeyFamily, key_id: str) -> None:
        """NotFound unless ``key_id`` is a live key of ``family`` (access-binding methods)."""
        raise NotImplementedError

    def list_keys(self, family: KeyFamily, folder_id: str, page_size: int, page_token: str) -> Page:
        """Live keys of the family in a folder, oldest first, with a signed page token."""
        raise NotImplementedError

    def list_operations(
        self, family: KeyFamily, key_id: str, page_size: int, page_token: str
    ) -> Page:
        """Operations on a live key, oldest first."""
        raise NotImplementedError

    def update(
        self,
        family: KeyFamily,
        key_id: str,
        mask: frozenset[str],
        values: KeyPairUpdate,
        by: Caller,
    ) -> StoredOperation:
        """Apply the fields in ``mask`` (``UPDATABLE_FIELDS``); status only ACTIVE/INACTIVE."""
        raise NotImplementedError

    async def delete(self, family: KeyFamily, key_id: str, by: Caller) -> StoredOperation:
        """Refuse under deletionProtection; else hide the key, then destroy its pair."""
        raise NotImplementedError

    async def sign(self, key_id: str, message: bytes) -> bytes:
        """Hash ``message`` as the key's algorithm says and sign the digest in the token."""
        raise NotImplementedError

    async def sign_hash(self, key_id: str, digest: bytes) -> bytes:
        """Sign a digest of exactly the algorithm's length (else InvalidArgument)."""
        raise NotImplementedError

    def public_key_pem(self, family: KeyFamily, key_id: str) -> str:
        """The key's public key as PEM SubjectPublicKeyInfo."""
        raise NotImplementedError

    async def decrypt(self, key_id: str, ciphertext: bytes) -> bytes:
        """RSA-OAEP-SHA-256 with the private key; one DecryptionFailed for every failure."""
        raise NotImplementedError
