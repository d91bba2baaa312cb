"""Accepting DICOM connections: a listening socket, one thread per connection, TLS if configured.

The listening socket may be shared by several receiving processes (:mod:`node.ingest.receivers`):
each process runs an :class:`AcceptLoop` on the same socket and the kernel hands every new
connection to one of them, the first to call ``accept`` (a busy process is slower to, so the
load spreads by itself).

A TLS handshake runs in the connection's own thread with a deadline, never in the accept loop: a
client that connects and then says nothing (a port scanner, a plain-TCP peer waiting for the
server to speak) blocks nobody.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from collections.abc import Callable
from typing import Any

from node.ingest.tls import handshake
from node.logging import get_logger

__all__ = ["BACKLOG", "AcceptLoop", "listening_socket"]

#: How often the accept loop looks whether it should stop.
_POLL_S = 0.5

log = get_logger(__name__)

Serve = Callable[[socket.socket, tuple[str, int] | None], None]


#: Connections the kernel queues for ``accept``.
BACKLOG = 128


def listening_socket(address: tuple[str, int], *, listen: bool = True) -> socket.socket:
    """A TCP socket bound to ``address`` (raises OSError if the port is taken), listening unless
    ``listen`` is False (the caller then calls ``listen(BACKLOG)`` when it is ready to serve)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        if listen:
            sock.listen(BACKLOG)
    except BaseException:
        sock.close()
        raise
    return sock


class AcceptLoop:
    """Accepts connections on ``sock`` and serves each in its own thread.

    Parameters
    ----------
    serve
        Serves one connection until it ends (the socket is then closed by it).
    max_connections
        Connections served at once by this loop; more are closed as soon as accepted.
    ssl_context
        With a context, each connection is a TLS server socket after its handshake.
    """

    def __init__(
        self,
        sock: socket.socket,
        serve: Serve,
        *,
        max_connections: int,
        ssl_context: ssl.SSLContext | None = None,
        name: str = "dimse",
    ) -> None:
        self.sock = sock
        self._serve = serve
        self._max_connections = max_connections
        self._ssl_context = ssl_context
        self._name = name
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port the socket is bound to."""
        return int(self.sock.getsockname()[1])

    def start(self) -> None:
        """Start accepting in a background thread."""
        self.sock.settimeout(_POLL_S)
        self._thread = threading.Thread(target=self._accept_forever, name=self._name, daemon=True)
        self._thread.start()

    def stop(self, *, close_socket: bool = True) -> None:
        """Stop accepting, end the open connections, and wait for the loop to finish."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(5 * _POLL_S)
        with self._lock:
            open_now = list(self._open)
        for connection in open_now:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        if close_socket:
            self.sock.close()

    def _accept_forever(self) -> None:
        while not self._stopping.is_set():
            try:
                connection, address = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stopping.is_set():
                    return
                continue  # e.g. ECONNABORTED, EMFILE: keep serving the others
            connection.settimeout(None)
            with self._lock:
                admitted = len(self._open) < self._max_connections
                if admitted:
                    self._open.add(connection)
            if not admitted:
                log.warning("connection.refused", reason="too many connections")
                connection.close()
                continue
            threading.Thread(
                target=self._run, args=(connection, address), name=f"{self._name}-conn", daemon=True
            ).start()

    def _run(self, connection: socket.socket, address: Any) -> None:
        peer = address if isinstance(address, tuple) else None
        served: socket.socket | None = connection
        try:
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._ssl_context is not None:
                served = handshake(self._ssl_context, connection, peer)
                with self._lock:  # the plain socket is detached from here on
                    self._open.discard(connection)
                    if served is not None:
                        self._open.add(served)
            if served is not None:
                self._serve(served, peer)
        except Exception:
            log.exception("connection.failed")
        finally:
            with self._lock:
                self._open.discard(connection)
                if served is not None:
                    self._open.discard(served)
            (served or connection).close()
