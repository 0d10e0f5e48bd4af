"""ASGI entry for uvicorn workers: ``uvicorn --factory kms_hsm.api.asgi:build``."""

from __future__ import annotations

from kms_hsm.api.app import KmsApp, create_app
from kms_hsm.api.protocol import apply_limits, freeze_heap
from kms_hsm.config import Settings
from kms_hsm.logs import configure_logging


def build() -> KmsApp:
    """An app configured from the environment; PKCS#11 starts in its lifespan."""
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    apply_limits(settings)
    app = create_app(settings)
    freeze_heap()
    return app
