"""ASGI entry of each ``--workers`` process: REST and, when enabled, gRPC on one loop.

``uvicorn --factory kms_hsm.cli.asgi:build``. It lives in the cli layer because it composes
the two transports, which do not know each other (``kms_hsm.api.asgi`` serves REST alone).
"""

from __future__ import annotations

from kms_hsm import metrics
from kms_hsm.api.app import KmsApp, Service, create_app
from kms_hsm.api.protocol import apply_limits, freeze_heap
from kms_hsm.config import Settings
from kms_hsm.logs import configure_logging


def services(settings: Settings) -> list[Service]:
    """What serves beside REST: gRPC unless its port is off."""
    if settings.grpc_serving_port is None:
        return []
    from kms_hsm.grpc.server import grpc_service

    return [grpc_service(settings)]


def build() -> KmsApp:
    """An app configured from the environment; PKCS#11 and gRPC start in its lifespan."""
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    metrics.enable()  # when `serve` set up the metrics directory (cli.metrics_endpoint)
    apply_limits(settings)
    app = create_app(settings, services=services(settings))
    freeze_heap()
    return app
