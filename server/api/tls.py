"""TLS material for the gRPC server (and, through ServeOptions, the admin HTTP server).

Files are read once at start. Errors name the file, never its contents.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc


class TlsConfigError(ValueError):
    """Inconsistent or unreadable TLS options; the message is meant for the operator."""


@dataclass(frozen=True, slots=True)
class TlsFiles:
    cert: Path
    key: Path
    # Set: clients must present a certificate signed by this CA (mTLS).
    client_ca: Path | None = None

    @classmethod
    def from_options(
        cls, cert: Path | None, key: Path | None, client_ca: Path | None
    ) -> TlsFiles | None:
        """None when TLS is off; raises TlsConfigError for half-configured TLS."""
        if cert is None and key is None:
            if client_ca is not None:
                raise TlsConfigError("--tls-client-ca needs --tls-cert and --tls-key")
            return None
        if cert is None or key is None:
            raise TlsConfigError("--tls-cert and --tls-key must be given together")
        return cls(cert, key, client_ca)


def _read(path: Path, what: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TlsConfigError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if b"-----BEGIN" not in data:
        raise TlsConfigError(f"{what} {path} is not PEM (no -----BEGIN line)")
    return data


def server_credentials(files: TlsFiles) -> grpc.ServerCredentials:
    """gRPC server credentials; with a client CA, client certificates are required."""
    key = _read(files.key, "TLS key")
    cert = _read(files.cert, "TLS certificate")
    client_ca = _read(files.client_ca, "client CA") if files.client_ca is not None else None
    return grpc.ssl_server_credentials(
        [(key, cert)],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


def read_optional(path: Path | None, what: str) -> bytes | None:
    return None if path is None else _read(path, what)
