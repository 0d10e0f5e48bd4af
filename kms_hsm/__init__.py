"""kms-hsm: the Yandex Cloud KMS v1 API on premises, with keys kept in a PKCS#11 HSM."""

__version__ = "0.1.0"
