"""``pacs-ai-node serve``: run the node."""

from __future__ import annotations

import typer

from node.admin.common import ConfigOption, fail, settings_or_exit
from node.errors import NodeError
from node.logging import configure_logging

__all__ = ["serve"]


def serve(config: ConfigOption = None) -> None:
    """Run the node: DICOM listener, series assembly, routing, inference and export.

    Stops cleanly on Ctrl-C or SIGTERM; anything acknowledged is on disk and is picked up again
    at the next start.
    """
    settings = settings_or_exit(config)
    configure_logging(settings.log_format, settings.log_level)
    from node.service import Node  # imports torch-backed parts only when serving

    try:
        node = Node(settings)
    except NodeError as exc:
        raise fail(exc) from exc
    except OSError as exc:
        raise fail(f"cannot start: {exc}") from exc
    typer.echo(
        f"pacs-ai-node: AE {settings.ae_title} on port {settings.dicom_port}, "
        f"data in {settings.data_dir}, rules from {settings.rules_file}",
        err=True,
    )
    try:
        node.serve_forever()
    except OSError as exc:
        node.stop()
        raise fail(
            f"cannot listen on {settings.bind_address} (DICOM port {settings.dicom_port}, "
            f"HTTP port {settings.http_port}): {exc.strerror}"
        ) from exc
