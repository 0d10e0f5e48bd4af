"""The ``kms-hsm`` command: ``serve`` and administration. PINs never come from argv."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from kms_hsm.config import Settings
from kms_hsm.errors import KmsError
from kms_hsm.logs import configure_logging

log = logging.getLogger("kms_hsm")


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from kms_hsm.service.runtime import Runtime, prepare

    # Workers are spawned and read their settings from the environment.
    for name, value in (("HOST", args.host), ("PORT", args.port), ("WORKERS", args.workers)):
        if value is not None:
            os.environ[f"KMS_HSM_{name}"] = str(value)
    settings = Settings()
    configure_logging(settings.log_level)
    try:
        prepare(settings)
        # Pre-flight: reach the HSM and settle the root key once, then let go of the
        # module again; every worker initialises PKCS#11 itself after it starts.
        Runtime.start(settings).close()
    except KmsError as exc:
        log.critical("cannot start: %s", exc.message)
        return 1
    log.info(
        "serving on http://%s:%d with %d worker(s); data directory %s",
        settings.host,
        settings.port,
        settings.workers,
        settings.data_dir.resolve(),
    )
    uvicorn.run(
        "kms_hsm.api.asgi:build",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_level=settings.log_level.lower(),
        access_log=False,
    )
    return 0


def _openapi(args: argparse.Namespace) -> int:
    from kms_hsm.api.app import create_app
    from kms_hsm.api.openapi import COMMITTED, render

    text = render(create_app())
    if args.write:
        COMMITTED.write_text(text)
        print(f"wrote {COMMITTED}")
    else:
        sys.stdout.write(text)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also used by the docs test)."""
    parser = argparse.ArgumentParser(prog="kms-hsm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="initialise what is missing and serve the REST API")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--workers", type=int, help="uvicorn worker processes")
    serve.set_defaults(handler=_serve)
    openapi = sub.add_parser("openapi", help="print the OpenAPI document")
    openapi.add_argument("--write", action="store_true", help="update kms_hsm/api/openapi.json")
    openapi.set_defaults(handler=_openapi)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    args = build_parser().parse_args(argv)
    handler = args.handler
    result: int = handler(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
