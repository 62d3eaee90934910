"""The CLI's one way to reach a server: options, credentials and the channel factory.

Every command that talks to the server is decorated with `@connected`; it then accepts
the same connection options (`--server`, `--data-dir`, `--tls-ca/--tls-cert/--tls-key`,
`--admin-token-file`) and receives a `Connection` whose `channel()` is the only place a
gRPC channel is made.
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import grpc
import typer
from modelroute.admin.v1 import admin_pb2_grpc
from modelroute.v1 import router_pb2_grpc

from ..api.errors import decode_details
from .discovery import (
    DATA_DIR_ENV,
    SERVER_ENV,
    DiscoveryError,
    ServerLocation,
    find_server,
)
from .output import failure

R = TypeVar("R")
ErrorHandler = Callable[[grpc.Call], None]
ADMIN_TOKEN_ENV = "MODELROUTE_ADMIN_TOKEN"
# Shared with `serve`: an operator on the server's machine can use the server's file.
ADMIN_TOKEN_FILE_ENV = "MODELROUTE_ADMIN_TOKEN_FILE"
API_KEY_ENV = "MODELROUTE_API_KEY"
CALL_TIMEOUT_SECONDS = 10.0
PANEL = "Connection"


@dataclass(frozen=True)
class Connection:
    """How to reach the server (the values of the connection options)."""

    server: str | None = None
    data_dir: Path | None = None
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    admin_token_file: Path | None = None

    @functools.cached_property
    def located(self) -> ServerLocation:
        """The server, by the discovery rule (flag, env, data dir); exits when unknown."""
        try:
            return find_server(self.server, self.data_dir)
        except DiscoveryError as exc:
            raise failure(str(exc), code=2) from None

    def credentials(self, location: ServerLocation) -> grpc.ChannelCredentials | None:
        """TLS credentials when any TLS option is set or the server is known to use TLS
        (system roots then); None for plaintext."""
        if self.tls_cert is None and self.tls_key is None and self.tls_ca is None:
            return grpc.ssl_channel_credentials() if location.tls else None
        if (self.tls_cert is None) != (self.tls_key is None):
            raise failure("--tls-cert and --tls-key must be given together (client certificate)", 2)
        return grpc.ssl_channel_credentials(
            root_certificates=_read_pem(self.tls_ca, "--tls-ca"),
            private_key=_read_pem(self.tls_key, "--tls-key"),
            certificate_chain=_read_pem(self.tls_cert, "--tls-cert"),
        )

    def channel(self) -> grpc.Channel:
        """The channel factory: every CLI call to the server goes through here."""
        location = self.located
        credentials = self.credentials(location)
        if credentials is None:
            return grpc.insecure_channel(location.address)
        return grpc.secure_channel(location.address, credentials)

    def admin_token(self) -> str | None:
        """--admin-token-file, else MODELROUTE_ADMIN_TOKEN, else MODELROUTE_ADMIN_TOKEN_FILE
        (the first token of a file; `#` starts a comment line, as for the server)."""
        if self.admin_token_file is not None:
            return _first_token(self.admin_token_file)
        if token := os.environ.get(ADMIN_TOKEN_ENV, "").strip():
            return token
        if file := os.environ.get(ADMIN_TOKEN_FILE_ENV, "").strip():
            return _first_token(Path(file))
        return None

    def admin(
        self,
        method: str,
        request: Any,
        on_error: ErrorHandler | None = None,
        timeout: float = CALL_TIMEOUT_SECONDS,
    ) -> Any:
        """Call AdminService.`method` with the admin token. A failed call goes to
        `on_error` first (it may exit with its own message), then is printed; exits."""
        token = self.admin_token()
        metadata = [("authorization", f"Bearer {token}")] if token else []
        with self.channel() as channel:
            stub = admin_pb2_grpc.AdminServiceStub(channel)
            return self._call(getattr(stub, method), request, metadata, on_error, timeout)

    def router(self, method: str, request: Any) -> Any:
        """Call ModelRouterService.`method` with the API key (MODELROUTE_API_KEY)."""
        key = os.environ.get(API_KEY_ENV, "").strip()
        metadata = [("x-api-key", key)] if key else []
        with self.channel() as channel:
            stub = router_pb2_grpc.ModelRouterServiceStub(channel)
            return self._call(getattr(stub, method), request, metadata, None, CALL_TIMEOUT_SECONDS)

    def _call(
        self,
        method: Any,
        request: Any,
        metadata: list[tuple[str, str]],
        on_error: ErrorHandler | None,
        timeout: float,
    ) -> Any:
        try:
            return method(request, timeout=timeout, metadata=metadata)
        except grpc.RpcError as error:
            assert isinstance(error, grpc.Call)
            if on_error is not None:
                on_error(error)
            rpc_failure(error, self)


def rpc_failure(error: grpc.RpcError, via: Connection | None = None) -> NoReturn:
    """Print a failed call once: code, message, then the details the message lacks."""
    assert isinstance(error, grpc.Call)
    message = error.details() or ""
    lines = [f"{error.code().name}: {message}"]
    for name, detail in decode_details(error).items():
        if name == "BadRequest":
            for violation in detail.field_violations:  # type: ignore[attr-defined]
                line = f"{violation.field}: {violation.description}"
                if line not in message:
                    lines.append(f"  {line}")
        elif name == "RetryInfo":
            lines.append(f"  retry after {detail.retry_delay.ToTimedelta()}")  # type: ignore[attr-defined]
    if error.code() == grpc.StatusCode.UNAVAILABLE and via is not None:
        lines.append(_unavailable_hint(via))
    raise failure("\n".join(lines))


def _unavailable_hint(via: Connection) -> str:
    location = via.located
    tls_given = via.tls_ca is not None or via.tls_cert is not None
    hint = f"  (server {location.address} from {location.source}"
    if location.tls and not tls_given:
        hint += "; it uses TLS: pass its CA with --tls-ca or MODELROUTE_TLS_CA"
    return hint + ")"


def _read_pem(path: Path | None, option: str) -> bytes | None:
    if path is None:
        return None
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise failure(f"{option}: cannot read {path}: {exc.strerror or exc}", 2) from None
    if b"-----BEGIN" not in data:
        raise failure(f"{option}: {path} is not PEM (no -----BEGIN line)", 2)
    return data


def _first_token(path: Path) -> str:
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise failure(
            f"cannot read the admin token file {path}: {exc.strerror or exc}", 2
        ) from None
    for line in lines:
        if (token := line.strip()) and not token.startswith("#"):
            return token
    raise failure(f"the admin token file {path} holds no token", 2)


def _option(
    name: str, annotation: Any, *flags: str, envvar: str | None, help: str
) -> inspect.Parameter:
    return inspect.Parameter(
        name,
        inspect.Parameter.KEYWORD_ONLY,
        default=None,
        annotation=Annotated[
            annotation, typer.Option(*flags, envvar=envvar, help=help, rich_help_panel=PANEL)
        ],
    )


CONNECTION_OPTIONS = (
    _option(
        "server",
        str | None,
        "--server",
        "--target",
        envvar=None,  # MODELROUTE_TARGET is read by discovery (it also knows the old name)
        help=f"gRPC address host:port. Default: ${SERVER_ENV}, else the server of --data-dir.",
    ),
    _option(
        "data_dir",
        Path | None,
        "--data-dir",
        envvar=DATA_DIR_ENV,
        help="Data dir of a running `modelroute serve` to connect to. Default: .modelroute",
    ),
    _option(
        "tls_ca",
        Path | None,
        "--tls-ca",
        envvar="MODELROUTE_TLS_CA",
        help="CA certificate (PEM) that signed the server's certificate.",
    ),
    _option(
        "tls_cert",
        Path | None,
        "--tls-cert",
        envvar="MODELROUTE_TLS_CERT",
        help="Client certificate (PEM) for servers requiring mTLS.",
    ),
    _option(
        "tls_key",
        Path | None,
        "--tls-key",
        envvar="MODELROUTE_TLS_KEY",
        help="Client private key (PEM) for --tls-cert.",
    ),
    _option(
        "admin_token_file",
        Path | None,
        "--admin-token-file",
        envvar=None,
        help=f"File whose first line is the admin token. Default: ${ADMIN_TOKEN_ENV}.",
    ),
)
_NAMES = tuple(field.name for field in fields(Connection))


def connected(command: Callable[..., R]) -> Callable[..., R]:
    """Give a command the connection options; it receives them as `connection=`."""
    signature = inspect.signature(command, eval_str=True)
    own = [p for p in signature.parameters.values() if p.name != "connection"]

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> R:
        options = {name: kwargs.pop(name) for name in _NAMES}
        return command(*args, connection=Connection(**options), **kwargs)

    combined = signature.replace(parameters=[*own, *CONNECTION_OPTIONS])
    run.__signature__ = combined  # type: ignore[attr-defined]
    run.__annotations__ = {p.name: p.annotation for p in combined.parameters.values()}
    return run
