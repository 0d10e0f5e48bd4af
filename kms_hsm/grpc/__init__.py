"""The gRPC transport: the Yandex Cloud services the official SDKs call, on ``grpc.aio``.

The servicer base classes and ``add_*_to_server`` functions are the generated modules of the
``yandexcloud`` package; what each method does is ``kms_hsm.service.handlers``' (and
``asymmetric_handlers``' for the four asymmetric-key services, in ``grpc.asymmetric``), run
through the same pipeline as REST (``kms_hsm.service.pipeline``).
"""

import os

# Must happen before grpc initialises (its first import, through this package). Every
# process that serves or calls gRPC here also starts children by fork + exec (HSM agents,
# the key-generation agent, replacements of a hung agent). gRPC's fork handlers skip their
# work when another thread is inside gRPC at the fork, and the child can then abort
# (SIGABRT) before its exec (grpc/grpc#31885; seen here as a `kms-hsm serve` started by a
# process holding SDK channels, dead with -6). We never use a channel or a server across a
# fork, only exec: turning the handlers off is gRPC's documented remedy for that case.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")
