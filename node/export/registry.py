"""Builds the exporter for each configured destination."""

from __future__ import annotations

from node.config import Settings
from node.errors import ConfigError
from node.export.base import Exporter
from node.export.dicomweb import DicomwebExporter
from node.export.dimse import DimseExporter

__all__ = ["build_exporter", "build_exporters"]


def build_exporters(settings: Settings) -> dict[str, Exporter]:
    """One exporter per destination named in the settings."""
    return {name: build_exporter(settings, name) for name in settings.destinations}


def build_exporter(settings: Settings, name: str) -> Exporter:
    """The exporter for the destination called ``name`` in the settings.

    Raises
    ------
    ConfigError
        No destination has that name (the message lists those that do).
    """
    destination = settings.destinations.get(name)
    if destination is None:
        known = ", ".join(sorted(settings.destinations)) or "none configured"
        raise ConfigError(f"no destination {name!r} (known: {known})", key="destinations")
    timeout_s = settings.export.timeout_s
    if destination.kind == "dimse":
        return DimseExporter(
            name, destination, calling_ae_title=settings.ae_title, timeout_s=timeout_s
        )
    if destination.kind == "dicomweb":
        return DicomwebExporter(name, destination, timeout_s=timeout_s)
    raise ConfigError(  # pragma: no cover - the config model admits no other kind
        f"destination kind {destination.kind!r} unknown", key=name
    )
