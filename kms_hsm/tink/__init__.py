"""Tink integration: a ``tink.KmsClient`` for ``yc-kms://<keyId>`` URIs; see issue 18 §1."""
