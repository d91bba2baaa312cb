"""``pacs-ai-node config``: check and show the configuration."""

from __future__ import annotations

import json

import typer

from node.admin.common import ConfigOption, fail, settings_or_exit
from node.errors import NodeError
from node.routing.rules import load_rules

__all__ = ["app"]

app = typer.Typer(help="Check and show the node's configuration.", no_args_is_help=True)


@app.command("check")
def check(config: ConfigOption = None) -> None:
    """Validate the configuration and the rules it names; exit 1 naming the first problem."""
    from node.service import check_rules_against_settings

    settings = settings_or_exit(config)
    try:
        rules = load_rules(settings.rules_file)
        check_rules_against_settings(rules, settings)
    except NodeError as exc:
        raise fail(exc) from exc
    typer.echo(
        f"configuration OK: {len(rules.rules)} rule(s), {len(settings.destinations)} destination(s)"
    )


@app.command("show")
def show(config: ConfigOption = None) -> None:
    """Print the effective configuration (file plus environment) as JSON."""
    settings = settings_or_exit(config)
    typer.echo(json.dumps(settings.model_dump(mode="json"), indent=2))
