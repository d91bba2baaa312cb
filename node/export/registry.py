"""Builds the exporter for each configured destination."""

from __future__ import annotations

from node.config import Settings
from node.errors import ConfigError
from node.export.base import Exporter
from node.export.dimse import DimseExporter

__all__ = ["build_exporters"]


def build_exporters(settings: Settings) -> dict[str, Exporter]:
    """One exporter per destination named in the settings."""
    exporters: dict[str, Exporter] = {}
    for name, destination in settings.destinations.items():
        if destination.kind == "dimse":
            exporters[name] = DimseExporter(
                name,
                destination,
                calling_ae_title=settings.ae_title,
                timeout_s=settings.export.timeout_s,
            )
        else:  # pragma: no cover - the config model admits no other kind yet
            raise ConfigError(f"destination kind {destination.kind!r} unknown", key=name)
    return exporters
