"""Several receiving processes on the node's DICOM port(s), so ingest is not bound to one GIL.

The node binds the plain (and TLS) listening sockets itself, so a port that is taken fails at start,
then starts ``receivers`` processes (``multiprocessing`` spawn: a fresh interpreter, nothing of
the parent's threads). Each one runs a :class:`~node.ingest.dimse.DimseListener` on the same
sockets, with its own index connection and group commit, and accepts whenever it is free: the
kernel hands each new connection to one process blocked in ``accept``.

- The association limit holds for the node: the processes share one counter
  (:class:`~node.ingest.admission.SharedAdmission`).
- Crash points (:mod:`node.faults`) fire in the process that stores the instance.
- A receiving process dies with the node (``PR_SET_PDEATHSIG``), and the node dies with a
  receiving process: one killed by a signal takes the node down by the same signal (a SIGKILL at
  a crash point is a SIGKILL of the node, as if it had been one process); one that exits is
  logged and the node exits with status 70. A service manager restarts it; start-up recovery
  does the rest (docs/reliability.md).
"""

from __future__ import annotations

import ctypes
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import sys
import threading
from typing import Any

from node.config import Settings
from node.ingest.admission import SharedAdmission
from node.ingest.dimse import DimseListener
from node.ingest.server import BACKLOG, listening_socket
from node.ingest.tls import server_context
from node.logging import configure_logging, get_logger
from node.store.database import Database
from node.store.spool import Spool

__all__ = ["ReceiverPool", "dicom_receivers", "listener_settings"]

#: Seconds a receiving process has to start listening.
START_TIMEOUT_S = 60.0
#: Seconds a receiving process has to end its associations and exit when told to stop.
STOP_TIMEOUT_S = 10.0
#: Exit status of the node when a receiving process exited unexpectedly (EX_SOFTWARE).
RECEIVER_EXITED = 70
_PR_SET_PDEATHSIG = 1

log = get_logger(__name__)


def listener_settings(settings: Settings) -> dict[str, Any]:
    """The :class:`DimseListener` arguments that come from the settings (not spool, index,
    sockets)."""
    tls = settings.tls
    ssl_context = None
    if tls.port is not None:
        assert tls.certificate is not None  # TlsSettings validated both
        assert tls.private_key is not None
        ssl_context = server_context(
            certificate=tls.certificate,
            private_key=tls.private_key,
            ca_certificates=tls.ca_certificates,
            require_client_certificate=tls.require_client_certificate,
        )
    return {
        "ae_title": settings.ae_title,
        "bind_address": settings.bind_address,
        "port": settings.dicom_port,
        "allowed_calling_ae_titles": settings.allowed_calling_ae_titles,
        "require_called_ae_title": settings.require_called_ae_title,
        "max_associations": settings.max_associations,
        "min_free_disk_bytes": settings.min_free_disk_mb * 1024 * 1024,
        "max_image_pixels": settings.max_image_pixels,
        "tls_port": tls.port,
        "ssl_context": ssl_context,
    }


def dicom_receivers(settings: Settings, spool: Spool, db: Database) -> DimseListener | ReceiverPool:
    """What serves the DICOM port(s): ``settings.receivers`` processes, or with 0 a listener in
    this process (over ``spool`` and ``db``)."""
    if settings.receivers == 0:
        return DimseListener(**listener_settings(settings), spool=spool, db=db)
    return ReceiverPool(settings, count=settings.receivers)


class ReceiverPool:
    """``count`` receiving processes serving the node's DICOM port(s)."""

    def __init__(self, settings: Settings, *, count: int) -> None:
        self._settings = settings
        self._count = count
        self._context = multiprocessing.get_context("spawn")
        self._processes: list[Any] = []
        self._sockets: list[socket.socket] = []
        self._stopping = threading.Event()
        self._port = settings.dicom_port
        self._tls_port = settings.tls.port

    @property
    def port(self) -> int:
        """The DICOM port listened on."""
        return self._port

    @property
    def tls_port(self) -> int | None:
        """The DICOM TLS port listened on; None without TLS."""
        return self._tls_port

    def start(self) -> None:
        """Bind the port(s), start the processes, and return once every one is listening.

        Raises
        ------
        OSError
            If a port is taken.
        RuntimeError
            If a process did not start listening.
        """
        settings = self._settings
        # Bound now (a taken port fails here), listening once every process is ready to accept:
        # until then a sender is refused rather than kept waiting by a process still starting.
        plain = listening_socket((settings.bind_address, settings.dicom_port), listen=False)
        self._sockets.append(plain)
        secure = None
        if settings.tls.port is not None:
            secure = listening_socket((settings.bind_address, settings.tls.port), listen=False)
            self._sockets.append(secure)
        self._port = int(plain.getsockname()[1])
        self._tls_port = int(secure.getsockname()[1]) if secure is not None else None
        admission = SharedAdmission(settings.max_associations, self._context)
        pipes = []
        for number in range(self._count):
            ours, theirs = self._context.Pipe()
            process = self._context.Process(
                target=_receive,
                args=(settings, plain, secure, admission, theirs, os.getpid()),
                name=f"receiver-{number}",
            )
            process.start()
            theirs.close()
            self._processes.append(process)
            pipes.append(ours)
        try:
            for process, pipe in zip(self._processes, pipes, strict=True):
                if not pipe.poll(START_TIMEOUT_S):
                    raise RuntimeError(f"{process.name} did not start (exit {process.exitcode})")
                pipe.recv()
        except (EOFError, OSError, RuntimeError) as exc:
            self.stop()
            raise RuntimeError(f"a receiving process did not start: {exc}") from exc
        for sock in self._sockets:
            sock.listen(BACKLOG)
        for pipe in pipes:
            pipe.send("accept")
            pipe.close()
        threading.Thread(target=self._supervise, name="receivers", daemon=True).start()
        log.info("dimse.listening", port=self._port, ae_title=settings.ae_title)
        if self._tls_port is not None:
            log.info("dimse.listening_tls", port=self._tls_port, ae_title=settings.ae_title)
        log.info("ingest.receivers", workers=self._count)

    def stop(self) -> None:
        """Stop every process (each ends its associations) and close the sockets."""
        self._stopping.set()
        for process in self._processes:
            if process.is_alive():
                process.terminate()  # SIGTERM: the process stops its listener and exits
        for process in self._processes:
            process.join(STOP_TIMEOUT_S)
            if process.is_alive():
                process.kill()
                process.join(5)
        self._processes = []
        for sock in self._sockets:
            sock.close()
        self._sockets = []

    def _supervise(self) -> None:
        """Take the node down with a receiving process that dies (see the module's docstring)."""
        sentinels = {process.sentinel: process for process in self._processes}
        ended = multiprocessing.connection.wait(list(sentinels))
        if self._stopping.is_set():
            return
        process = sentinels[ended[0]]
        process.join(1)
        code = process.exitcode if process.exitcode is not None else 1
        log.error("ingest.receiver_died", reason=process.name, status=code)
        sys.stdout.flush()
        sys.stderr.flush()
        if code < 0:
            os.kill(os.getpid(), -code)
            if -code != signal.SIGKILL:
                return  # e.g. SIGTERM: the node stops cleanly through its own handler
        os._exit(RECEIVER_EXITED)


def _die_with_parent(parent_pid: int) -> None:
    """SIGKILL this process when the node's process ends, however it ends (Linux)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the parent check below still ends it
        pass
    if os.getppid() != parent_pid:
        os._exit(0)  # the node ended before the request took effect


def _receive(
    settings: Settings,
    plain: socket.socket,
    secure: socket.socket | None,
    admission: SharedAdmission,
    ready: Any,
    parent_pid: int,
) -> None:
    """A receiving process: serve the sockets until SIGTERM or the node's end."""
    _die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the node, which stops us
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda _signum, _frame: stop.set())
    configure_logging(settings.log_format, settings.log_level)
    db = Database(settings.index_url)
    listener = DimseListener(
        **listener_settings(settings),
        spool=Spool(settings.data_dir / "spool"),
        db=db,
        sockets=(plain, secure),
        admission=admission,
        announce=False,
    )
    ready.send("ready")
    ready.recv()  # the node listens on the sockets once every receiving process is ready
    ready.close()
    listener.start()
    while not stop.wait(1.0):
        if os.getppid() != parent_pid:
            break
    listener.stop()
    db.dispose()
