"""`modelroute serve`: run a replica."""

from __future__ import annotations

import faulthandler
import logging
import os
import signal
from pathlib import Path
from typing import Annotated

import typer
from modelroute.storage.etcd import DEFAULT_PREFIX
from modelroute.storage.instance_file import remove_instance

from .discovery import DATA_DIR_ENV, DEFAULT_DATA_DIR, ETCD_PREFIX_ENV
from .output import failure

PrefixOpt = Annotated[str, typer.Option(envvar=ETCD_PREFIX_ENV, help="Key prefix.")]


def serve(
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="gRPC port (0: any free port).")] = 50051,
    etcd_endpoints: Annotated[
        str | None,
        typer.Option(envvar="MODELROUTE_ETCD_ENDPOINTS", help="etcd cluster; omit for embedded."),
    ] = None,
    etcd_prefix: PrefixOpt = DEFAULT_PREFIX,
    etcd_username: Annotated[str | None, typer.Option(envvar="MODELROUTE_ETCD_USERNAME")] = None,
    etcd_password: Annotated[str | None, typer.Option(envvar="MODELROUTE_ETCD_PASSWORD")] = None,
    database_url: Annotated[
        str | None,
        typer.Option(envvar="MODELROUTE_DATABASE_URL", help="SQLAlchemy URL; omit for SQLite."),
    ] = None,
    data_dir: Annotated[
        Path,
        typer.Option(envvar=DATA_DIR_ENV, help="Embedded etcd, SQLite and server.json location."),
    ] = DEFAULT_DATA_DIR,
    bootstrap: Annotated[Path | None, typer.Option(help="Seed config for an empty prefix.")] = None,
    seed: Annotated[
        bool | None, typer.Option(help="Seed an empty external etcd prefix from --bootstrap.")
    ] = None,
    log_level: Annotated[str, typer.Option(envvar="MODELROUTE_LOG_LEVEL")] = "INFO",
    # Security (docs/security.md). Admin tokens themselves only come from the environment
    # (MODELROUTE_ADMIN_TOKENS) or a file, never argv, which `ps` shows to every user.
    admin_token_file: Annotated[
        Path | None,
        typer.Option(envvar="MODELROUTE_ADMIN_TOKEN_FILE", help="Admin tokens, one per line."),
    ] = None,
    tls_cert: Annotated[
        Path | None, typer.Option(envvar="MODELROUTE_TLS_CERT", help="Server certificate (PEM).")
    ] = None,
    tls_key: Annotated[
        Path | None, typer.Option(envvar="MODELROUTE_TLS_KEY", help="Server private key (PEM).")
    ] = None,
    tls_client_ca: Annotated[
        Path | None,
        typer.Option(envvar="MODELROUTE_TLS_CLIENT_CA", help="Require client certs (mTLS)."),
    ] = None,
    etcd_ca: Annotated[
        Path | None, typer.Option(envvar="MODELROUTE_ETCD_CA", help="CA of etcd's certificate.")
    ] = None,
    etcd_cert: Annotated[
        Path | None, typer.Option(envvar="MODELROUTE_ETCD_CERT", help="etcd client cert.")
    ] = None,
    etcd_key: Annotated[
        Path | None, typer.Option(envvar="MODELROUTE_ETCD_KEY", help="etcd client key.")
    ] = None,
    admin_port: Annotated[
        int, typer.Option(help="Admin HTTP API + dashboard + /metrics (0: any, -1: off).")
    ] = 8081,
    workers: Annotated[
        str,
        typer.Option(
            envvar="MODELROUTE_WORKERS",
            help="Worker processes sharing the gRPC port (auto: one per core).",
        ),
    ] = "1",
    event_loop: Annotated[
        str,
        typer.Option(
            envvar="MODELROUTE_EVENT_LOOP",
            help="Event loop: uvloop (faster per call) or asyncio (the standard library's).",
        ),
    ] = "uvloop",
) -> None:
    """Run a replica: gRPC API, config hot reload from etcd, usage logging."""
    from modelroute.storage.data_dir_lock import AlreadyRunningError

    from ..api.auth import AdminTokenFileError
    from ..api.tls import TlsConfigError
    from ..app import DEFAULT_BOOTSTRAP, ServeOptions
    from ..process import (
        check_event_loop,
        publish_instance,
        run_event_loop,
        serve_until_signalled,
    )

    # `kill -USR1 <pid>` prints every thread's stack: the first tool for a stuck replica.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    options = ServeOptions(
        host=host,
        port=port,
        etcd_endpoints=etcd_endpoints,
        etcd_prefix=etcd_prefix,
        etcd_username=etcd_username,
        etcd_password=etcd_password,
        database_url=database_url,
        data_dir=data_dir,
        bootstrap=bootstrap or DEFAULT_BOOTSTRAP,
        seed=seed,
        admin_token_file=admin_token_file,
        tls_cert=tls_cert,
        tls_key=tls_key,
        tls_client_ca=tls_client_ca,
        etcd_ca=etcd_ca,
        etcd_cert=etcd_cert,
        etcd_key=etcd_key,
        admin_port=None if admin_port < 0 else admin_port,
        event_loop=event_loop,
    )
    try:
        options.etcd_tls()  # validates the etcd TLS combination before anything starts
        from ..workers import Supervisor, worker_count

        count = worker_count(workers)
        check_event_loop(event_loop)  # before an etcd or a worker starts
    except ValueError as exc:
        raise failure(f"cannot start: {exc}", code=2) from None
    if count > 1:
        raise typer.Exit(Supervisor(options, count, log_level).run())
    try:
        run_event_loop(
            serve_until_signalled(options, on_serving=publish_instance), options.event_loop
        )
    except AlreadyRunningError as exc:
        raise failure(str(exc), code=3) from None
    except (TlsConfigError, AdminTokenFileError) as exc:
        raise failure(f"cannot start: {exc}", code=2) from None
    finally:
        remove_instance(data_dir, os.getpid())
