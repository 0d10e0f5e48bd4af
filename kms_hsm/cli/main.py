"""The ``kms-hsm`` command: ``serve`` and administration. PINs never come from argv."""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import os
import signal
import socket
import ssl
import sys
import traceback
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from kms_hsm.cli import data, envelope, hsm
from kms_hsm.cli.admin import add_commands
from kms_hsm.config import Settings, read_secret_file
from kms_hsm.errors import InvalidArgument, KmsError
from kms_hsm.logs import configure_logging

log = logging.getLogger("kms_hsm")


def _serve(args: argparse.Namespace) -> int:
    import uvicorn
    from sqlalchemy.exc import SQLAlchemyError

    from kms_hsm.api.app import create_app
    from kms_hsm.api.protocol import HTTP_PROTOCOL, LOOP, apply_limits, freeze_heap
    from kms_hsm.cli import metrics_endpoint
    from kms_hsm.cli.asgi import services
    from kms_hsm.service.runtime import Runtime, prepare

    # Workers are spawned and read their settings from the environment.
    for name, value in (
        ("HOST", args.host),
        ("PORT", args.port),
        ("WORKERS", args.workers),
        ("TLS_CERT", args.tls_cert),
        ("TLS_KEY", args.tls_key),
        ("TLS_CLIENT_CA", args.tls_client_ca),
        ("GRPC_PORT", args.grpc_port),
    ):
        if value is not None:
            os.environ[f"KMS_HSM_{name}"] = str(value)
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    metrics_endpoint.prepare(settings)  # before any metric exists, here or in a worker
    try:
        tls = tls_options(settings)
        _rest_preflight(settings)
        grpc_port = _grpc_preflight(settings)
        metrics_endpoint.start(settings)
    except KmsError as exc:
        log.critical("cannot start: %s", exc.message)
        return 1
    try:
        prepare(settings)
        # A pre-flight: reach the HSM (through an agent of its own, stopped again), settle
        # the root key, fail with a clear message. Each worker then starts its own agent.
        runtime = Runtime.start(settings)
        runtime.preflight()
    except KmsError as exc:
        log.critical("cannot start: %s", exc.message)
        return 1
    except SQLAlchemyError as exc:  # the schema migration meets the database first
        from kms_hsm.store.engine import redacted_url

        orig = getattr(exc, "orig", None) or exc
        log.critical(
            "cannot start: the database %s: %s",
            redacted_url(settings.effective_database_url()),
            (str(orig).strip().splitlines() or [type(exc).__name__])[0],
        )
        return 1

    def listening(port: int) -> str:
        return (
            f"{'https' if tls else 'http'}://{settings.host}:{port} with {settings.workers} "
            f"worker(s), gRPC {'off' if grpc_port is None else f'on port {grpc_port}'}; "
            f"data directory {settings.data_dir.resolve()}"
        )

    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level.lower(),
        "access_log": False,
        "http": HTTP_PROTOCOL,
        "loop": LOOP,
        # Only if h11 stands in for httptools: our own budget (protocol.py) must act first.
        "h11_max_incomplete_event_size": settings.max_header_bytes,
        **tls,
    }
    if settings.log_format == "json":
        # uvicorn's own loggers then reach the root logger and its JSON lines.
        options["log_config"] = None
    if settings.workers == 1:
        apply_limits(settings)  # workers apply their own (kms_hsm.api.asgi.build)
        try:
            app = create_app(settings, runtime, services=services(settings))
            server = _announcing_server(uvicorn.Config(app, **options), listening)
            freeze_heap()
            server.run()
        except SystemExit:
            # uvicorn exits on a failed start-up (the port taken since the check); the
            # reason is logged above and "serving on" was never said.
            return 1
        finally:
            runtime.close()
        # A failed start-up (a gRPC port taken since the check) is not a clean exit.
        return 0 if server.started else 1
    runtime.close()
    from uvicorn.supervisors import Multiprocess

    config = uvicorn.Config(
        "kms_hsm.cli.asgi:build", factory=True, workers=settings.workers, **options
    )
    try:
        # Bound here, in the parent, and handed to every worker (as uvicorn.run does).
        sock = config.bind_socket()
    except SystemExit:
        return 1
    log.info("serving on %s", listening(sock.getsockname()[1]))
    try:
        Multiprocess(config, sockets=[sock]).run()
    finally:
        sock.close()
    return 0


def _announcing_server(config: Any, listening: Callable[[int], str]) -> Any:
    """A uvicorn server that says "serving on" once it has bound its port, not before."""
    import uvicorn

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if self.started:
                log.info("serving on %s", listening(self.servers[0].sockets[0].getsockname()[1]))

    return Server(config)


def _rest_preflight(settings: Settings) -> None:
    """Refuse a REST port that cannot be bound before the token and workers are started.

    Bound as uvicorn binds it (SO_REUSEADDR), so that connections of a server just stopped,
    still in TIME_WAIT, do not make a free port look taken.
    """
    if settings.port == 0:
        return
    host = settings.host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, settings.port))
        except OSError as exc:
            raise InvalidArgument(
                f"port {settings.port} on {settings.host} cannot be bound: "
                f"{exc.strerror or exc} (KMS_HSM_PORT / --port)"
            ) from None


def _grpc_preflight(settings: Settings) -> int | None:
    """The gRPC port, checked free before any worker starts; None when gRPC is off."""
    port = settings.grpc_serving_port
    if port is None:
        return None
    from kms_hsm.grpc.server import credentials, port_taken

    credentials(settings)  # unreadable or unsafe TLS files: refuse now, not per worker
    problem = port_taken(settings.host, port)
    if problem is not None:
        raise InvalidArgument(
            f"gRPC port {port} on {settings.host} cannot be bound: {problem} "
            "(KMS_HSM_GRPC_PORT / --grpc-port N|off)"
        )
    return port


def tls_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's TLS arguments; the private key file must be private (0600)."""
    if settings.tls_cert is None and settings.tls_key is None:
        if settings.tls_client_ca is not None:
            raise InvalidArgument("--tls-client-ca needs --tls-cert and --tls-key")
        return {}
    if settings.tls_cert is None or settings.tls_key is None:
        raise InvalidArgument("--tls-cert and --tls-key go together")
    read_secret_file(settings.tls_key, "TLS key file")
    options: dict[str, Any] = {
        "ssl_certfile": str(settings.tls_cert),
        "ssl_keyfile": str(settings.tls_key),
    }
    if settings.tls_client_ca is not None:
        options["ssl_ca_certs"] = str(settings.tls_client_ca)
        options["ssl_cert_reqs"] = ssl.CERT_REQUIRED
    return options


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
    parser = _Parser(prog="kms-hsm", description=__doc__)
    parser.add_argument(
        "--version", action="version", version=f"kms-hsm {importlib.metadata.version('kms-hsm')}"
    )
    sub: argparse._SubParsersAction[argparse.ArgumentParser]
    sub = parser.add_subparsers(dest="command", required=True)  # type: ignore[assignment]
    serve = sub.add_parser("serve", help="initialise what is missing and serve the REST API")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--workers", type=int, help="uvicorn worker processes")
    serve.add_argument("--tls-cert", help="PEM certificate chain: serve HTTPS")
    serve.add_argument("--tls-key", help="PEM private key (mode 0600)")
    serve.add_argument("--tls-client-ca", help="PEM CA bundle: require client certificates")
    serve.add_argument(
        "--grpc-port",
        help="gRPC port, or off (default: 50051 on the embedded token, else off)",
    )
    serve.set_defaults(handler=_serve)
    openapi = sub.add_parser("openapi", help="print the OpenAPI document")
    openapi.add_argument("--write", action="store_true", help="update kms_hsm/api/openapi.json")
    openapi.set_defaults(handler=_openapi)
    add_commands(sub)
    hsm.add_commands(sub)
    data.add_commands(sub)
    envelope.add_commands(sub)
    return parser


# Secrets are never accepted on a command line, where other users can read them in /proc.
_SECRET_NAMES = ("pin", "so-pin", "user-pin", "token", "admin-token", "password")


def _secret_flag(arg: str) -> str | None:
    """The flag of ``arg`` when it is a secret's flag or a prefix of one (``--toke``)."""
    name = arg.split("=", 1)[0]
    if not name.startswith("--") or len(name) < 3:
        return None
    return name if any(secret.startswith(name[2:]) for secret in _SECRET_NAMES) else None


class _Parser(argparse.ArgumentParser):
    """No abbreviated options: argparse would take ``--toke SECRET`` for ``--token-file`` and
    then print the secret in its error. Sub-command parsers are of this class too."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)


def _terminated(signum: int, frame: object) -> None:
    # Raised where the command is, so that its cleanup runs: a `decrypt --out` killed by
    # SIGTERM or a closed terminal leaves no partial plaintext file behind.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    argv = sys.argv[1:] if argv is None else argv
    for arg in argv:
        flag = _secret_flag(arg)
        if flag is not None:
            print(
                f"kms-hsm: {flag} refused: PINs and tokens are read from the environment "
                "(KMS_HSM_TOKEN, KMS_HSM_PIN) or 0600 files (--token-file, KMS_HSM_PIN_FILE), "
                "never from arguments",
                file=sys.stderr,
            )
            return 2
    args = build_parser().parse_args(argv)
    if args.command != "serve":  # serve's servers handle their signals themselves
        for signum in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, _terminated)
    handler = args.handler
    try:
        result: int = handler(args)
    except KmsError as exc:
        print(f"kms-hsm: {exc.message}", file=sys.stderr)
        _debug_detail(exc)
        return 1
    except ValidationError as exc:
        print(f"kms-hsm: {_settings_problem(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("kms-hsm: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (| head): nothing more to say, and no one to say it to.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"kms-hsm: {where}{exc.strerror or exc}", file=sys.stderr)
        _debug_detail(exc)
        return 1
    except Exception as exc:
        # The last resort: one line, the traceback only when asked for (KMS_HSM_DEBUG=1).
        # Only the type is named: an unexpected error's text may quote anything.
        print(
            f"kms-hsm: unexpected error ({type(exc).__name__}); run again with KMS_HSM_DEBUG=1 "
            "for the traceback",
            file=sys.stderr,
        )
        _debug_detail(exc)
        return 1
    return result


def _debug_detail(exc: BaseException) -> None:
    """The traceback, on stderr with KMS_HSM_DEBUG=1, else in the log at DEBUG."""
    if os.environ.get("KMS_HSM_DEBUG", "") not in ("", "0"):
        traceback.print_exception(exc, file=sys.stderr)
    else:
        log.debug("%s", "".join(traceback.format_exception(exc)))


def _settings_problem(exc: ValidationError) -> str:
    """A bad setting named by its environment variable; the value itself is not repeated."""
    problems = []
    for error in exc.errors():
        name = "_".join(str(part) for part in error["loc"][:1]).upper()
        problems.append(f"KMS_HSM_{name}: {error['msg']}")
    return "bad setting " + "; ".join(problems)


if __name__ == "__main__":
    sys.exit(main())
