"""The ``pacs-ai-node`` command line: one Typer app, one module per command group."""

from __future__ import annotations

import typer

from node.admin import config_cmd, jobs, models_cmd, rules_cmd
from node.admin.send import send
from node.admin.serve import serve

__all__ = ["app"]

app = typer.Typer(
    name="pacs-ai-node",
    help="A PACS-connected AI node: receives DICOM series, runs AI models on them, and sends "
    "the results (DICOM-SEG, ...) back to the PACS.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
app.command("serve")(serve)
app.command("send")(send)
app.add_typer(config_cmd.app, name="config")
app.add_typer(rules_cmd.app, name="rules")
app.add_typer(jobs.app, name="jobs")
app.add_typer(models_cmd.app, name="models")


if __name__ == "__main__":
    app()
