"""Tink integration: a ``tink.KmsClient`` for ``yc-kms://<keyId>`` URIs; see issue 18 §1.

from kms_hsm.tink import KmsClient, key_uri
client = KmsClient("https://kms.example:8443", token=token)
envelope = tink.aead.KmsEnvelopeAead(
    tink.aead.aead_key_templates.AES256_GCM, client.get_aead(key_uri(key_id))
)
"""

from kms_hsm.tink._client import KmsCallError, KmsClient, key_id_of, key_uri

__all__ = ["KmsCallError", "KmsClient", "key_id_of", "key_uri"]
