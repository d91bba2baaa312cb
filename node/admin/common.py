"""Options and helpers shared by the CLI's command groups."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from node.config import Settings, load_settings
from node.errors import NodeError

__all__ = ["ConfigOption", "fail", "settings_or_exit"]

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="The node's YAML configuration file. Environment variables NODE_* override it.",
        exists=True,
        dir_okay=False,
        envvar="PACS_AI_NODE_CONFIG",
    ),
]


def fail(error: NodeError | str) -> typer.Exit:
    """Print ``error`` to stderr and return the Exit to raise (code 1)."""
    typer.secho(f"error: {error}", fg=typer.colors.RED, err=True)
    return typer.Exit(code=1)


def settings_or_exit(config: Path | None) -> Settings:
    """Load and validate the settings, or exit 1 naming the bad key."""
    try:
        return load_settings(config)
    except NodeError as exc:
        raise fail(exc) from exc
