"""The HTTP listener (admin API, dashboard, /metrics, OFREP, Connect) inside the gRPC
server's event loop, over HTTP/1.1 and HTTP/2: h2 by ALPN with TLS, h2c by prior knowledge
or `Upgrade` without. Hypercorn serves it because Connect clients (browsers, connect-web,
connect-node with `httpVersion: "2"`) use HTTP/2, which uvicorn does not speak.

`start()` binds and listens on the socket itself, so a busy port raises OSError here (not a
sys.exit inside the server library) and the port (for port 0) is known at once;
connections made before hypercorn accepts wait in the backlog.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from pathlib import Path
from typing import Any

from hypercorn.asyncio import serve
from hypercorn.config import Config, Sockets

log = logging.getLogger("modelroute.http")
BACKLOG = 1024


class _BoundConfig(Config):
    """Hypercorn config serving an already bound, listening socket."""

    def __init__(self, sock: socket.socket, secure: bool) -> None:
        super().__init__()
        self._sock, self._secure = sock, secure

    def create_sockets(self) -> Sockets:
        return Sockets(
            secure_sockets=[self._sock] if self._secure else [],
            insecure_sockets=[] if self._secure else [self._sock],
            quic_sockets=[],
        )


class HttpListener:
    def __init__(
        self,
        app: Any,
        host: str,
        port: int,
        *,
        tls_cert: Path | None = None,
        tls_key: Path | None = None,
        tls_client_ca: Path | None = None,
    ) -> None:
        self._app = app
        self._host, self._port = host, port
        self._tls = (tls_cert, tls_key, tls_client_ca) if tls_cert and tls_key else None
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.port = 0
        self.socket: socket.socket | None = None

    def _config(self, sock: socket.socket) -> Config:
        config = _BoundConfig(sock, secure=self._tls is not None)
        config.accesslog = None
        config.errorlog = log
        config.graceful_timeout = 3.0
        config.include_server_header = False
        if self._tls is not None:
            cert, key, client_ca = self._tls
            config.certfile, config.keyfile = str(cert), str(key)
            if client_ca is not None:  # mutual TLS, as on the gRPC port
                config.ca_certs = str(client_ca)
                config.verify_mode = ssl.CERT_REQUIRED
        return config

    async def start(self) -> int:
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say TCP, and
        # without it Nagle + delayed ACK add ~40 ms to every response (headers, then body).
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock.bind((self._host, self._port))
            sock.listen(BACKLOG)
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        self.socket = sock
        config = self._config(sock)
        if self._tls is not None:
            config.create_ssl_context()  # a bad certificate fails the start, not a request
        self.port = sock.getsockname()[1]
        self._task = asyncio.create_task(
            serve(self._app, config, shutdown_trigger=self._stop.wait, mode="asgi"),
            name="http-listener",
        )
        return self.port

    async def stop(self) -> None:
        if self._task is None:
            return
        self._stop.set()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(self._task, timeout=5)
