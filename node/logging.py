"""Structured logging, configured once: JSON in production, a console renderer on a terminal.

Events are dotted verbs (``series.complete``) with keyword fields. Only keys on an allow-list
reach the output, so a patient identifier passed by mistake is dropped, not logged. UIDs are
logged as short hashes (:func:`short_uid`).
"""

from __future__ import annotations

import hashlib
import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog
from pydicom import config as pydicom_config
from pynetdicom import _config as pynetdicom_config

__all__ = ["ALLOWED_KEYS", "configure_logging", "get_logger", "short_uid"]

#: The only event fields that are ever written. Nothing here can hold a patient identifier.
ALLOWED_KEYS = frozenset(
    {
        "event", "level", "timestamp", "logger", "exc_info", "exception",
        "assoc_id", "calling_ae", "called_ae", "peer", "peer_host", "peer_port",
        "job_id", "job_uid", "series", "study", "sop", "sop_class", "transfer_syntax",
        "status", "reason", "error", "state", "attempt", "next_attempt_s",
        "rule", "pipeline", "model", "version", "destination", "destinations",
        "count", "instances", "slices", "anomalies", "duration_s", "bytes",
        "port", "http_port", "ae_title", "path", "workers", "recovered",
        "free_mb", "min_free_mb", "released", "request_id", "stored", "failed",
        "signal", "scope",
    }
)  # fmt: skip


def short_uid(uid: str) -> str:
    """A short, stable, non-reversible tag for a UID, for logs (12 hex characters)."""
    return hashlib.sha256(uid.encode("ascii", "replace")).hexdigest()[:12]


def _allow_listed(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    # Keys starting with "_" are structlog's own bookkeeping (e.g. the stdlib record).
    for key in [k for k in event_dict if k not in ALLOWED_KEYS and not k.startswith("_")]:
        del event_dict[key]
    return event_dict


def configure_logging(fmt: str = "auto", level: str = "INFO") -> None:
    """Configure structlog and route stdlib loggers (pynetdicom, SQLAlchemy) through it."""
    pynetdicom_config.LOG_REQUEST_IDENTIFIERS = False
    pynetdicom_config.LOG_RESPONSE_IDENTIFIERS = False
    pynetdicom_config.PASS_CONTEXTVARS = True
    use_console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _allow_listed,
    ]
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer() if use_console else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info if not use_console else _identity,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    # Libraries log free text that can hold UIDs or dataset values (pynetdicom dumps PDUs,
    # highdicom names the datasets it copies from): only their warnings and errors get through.
    root.setLevel(max(logging.WARNING, logging.getLevelName(level)))
    logging.getLogger("node").setLevel(level)
    # pydicom's value-validation warnings quote the value (a name, a birth date) and also go to
    # stderr as Python warnings; retrying (inside dicomweb-client) logs a traceback per failed
    # try, which the export already reports. Neither is let through.
    pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
    pydicom_config.settings.writing_validation_mode = pydicom_config.IGNORE
    for noisy in ("pydicom", "retrying"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


def _identity(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    return event_dict


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    """A structlog logger named ``name``."""
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(name)
    return logger
