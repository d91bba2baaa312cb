"""DICOM over TLS (PS3.15 Annex B): the server's TLS context, and the handshake of a connection.

The handshake runs in the connection's own thread (:mod:`node.ingest.server`), with a deadline: a
handshake inside the accept loop, as pynetdicom's TLS server does it, lets a single client that
connects and then says nothing (a port scanner, a plain-TCP DICOM peer that waits for the server
to speak) stop the TLS port from accepting anyone else.
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path
from typing import Any

from node.errors import ConfigError
from node.logging import get_logger

__all__ = ["HANDSHAKE_TIMEOUT_S", "handshake", "server_context"]

#: Seconds a client has to complete the TLS handshake.
HANDSHAKE_TIMEOUT_S = 30.0

log = get_logger(__name__)


def server_context(
    *,
    certificate: Path,
    private_key: Path,
    ca_certificates: Path | None = None,
    require_client_certificate: bool = False,
) -> ssl.SSLContext:
    """A server-side TLS context: TLS 1.2 or later, OpenSSL's default cipher suites.

    Client certificates are checked against ``ca_certificates`` only (never the system's trust
    store, which would let any publicly issued certificate in): required when
    ``require_client_certificate``, otherwise checked when a client presents one.

    Raises
    ------
    ConfigError
        If a file cannot be read or the key does not match the certificate.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(certfile=certificate, keyfile=private_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"cannot load tls.certificate {certificate} with tls.private_key {private_key}: "
            f"{_reason(exc)}",
            key="tls.certificate",
        ) from exc
    if ca_certificates is not None:
        try:
            context.load_verify_locations(cafile=ca_certificates)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"cannot load tls.ca_certificates {ca_certificates}: {_reason(exc)}",
                key="tls.ca_certificates",
            ) from exc
        context.verify_mode = ssl.CERT_REQUIRED if require_client_certificate else ssl.CERT_OPTIONAL
    elif require_client_certificate:
        raise ConfigError(
            "tls.require_client_certificate needs tls.ca_certificates to check them against",
            key="tls.require_client_certificate",
        )
    return context


def _reason(exc: OSError) -> str:
    reason = getattr(exc, "reason", None) or exc.strerror
    return str(reason or type(exc).__name__)


def handshake(
    context: ssl.SSLContext, connection: socket.socket, peer: Any
) -> ssl.SSLSocket | None:
    """The TLS server side of ``connection`` once its handshake is done within
    :data:`HANDSHAKE_TIMEOUT_S`; None (logged, and the socket closed) if it failed."""
    try:
        connection.settimeout(HANDSHAKE_TIMEOUT_S)
        secure = context.wrap_socket(connection, server_side=True)
        secure.settimeout(None)  # blocking, as a plain connection
    except (OSError, ValueError) as exc:
        log.warning(
            "tls.handshake_failed",
            peer_host=_host(peer),
            error=_reason(exc) if isinstance(exc, OSError) else type(exc).__name__,
        )
        connection.close()
        return None
    return secure


def _host(address: Any) -> str:
    return str(address[0]) if isinstance(address, tuple) and address else str(address)
