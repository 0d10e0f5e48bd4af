"""The gRPC transport: the Yandex Cloud services the official SDKs call, on ``grpc.aio``.

The servicer base classes and ``add_*_to_server`` functions are the generated modules of the
``yandexcloud`` package; what each method does is ``kms_hsm.service.handlers``' (and
``asymmetric_handlers``' for the four asymmetric-key services, in ``grpc.asymmetric``), run
through the same pipeline as REST (``kms_hsm.service.pipeline``).
"""
