"""ASGI entry for uvicorn workers: ``uvicorn --factory kms_hsm.api.asgi:build``."""

from __future__ import annotations

from fastapi import FastAPI

from kms_hsm.api.app import create_app
from kms_hsm.config import Settings


def build() -> FastAPI:
    """An app configured from the environment; PKCS#11 starts in its lifespan."""
    return create_app(Settings())
