"""``pacs-ai-node rules``: check rules against real DICOM files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from node.admin.common import ConfigOption, fail, settings_or_exit
from node.errors import IngestError, NodeError
from node.ingest.dimse import read_record
from node.logging import short_uid
from node.routing.engine import SeriesFacts, route
from node.routing.rules import load_rules

__all__ = ["app"]

app = typer.Typer(help="Check routing rules.", no_args_is_help=True)


@app.command("test")
def explain_rules(
    path: Annotated[
        Path,
        typer.Argument(
            help="A folder of DICOM files (searched recursively) or one file.", exists=True
        ),
    ],
    config: ConfigOption = None,
    rules_file: Annotated[
        Path | None,
        typer.Option(
            "--rules",
            help="Rules file to test instead of the configured one.",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    calling_ae_title: Annotated[
        str, typer.Option("--calling-ae", help="Pretend the series came from this AE title.")
    ] = "",
) -> None:
    """For each series under PATH, print which rule matches and why every rule does or not."""
    rules_path = rules_file or settings_or_exit(config).rules_file
    try:
        rules = load_rules(rules_path)
    except NodeError as exc:
        raise fail(exc) from exc
    files = [p for p in ([path] if path.is_file() else sorted(path.rglob("*"))) if p.is_file()]
    series: dict[str, tuple[dict[str, object], int]] = {}
    skipped = 0
    for file in files:
        try:
            record = read_record(file.read_bytes())
        except IngestError:
            skipped += 1
            continue
        attributes, count = series.get(record.series_instance_uid, (record.routing_attributes, 0))
        series[record.series_instance_uid] = (attributes, count + 1)
    if not series:
        raise fail(f"no DICOM instances under {path} ({skipped} file(s) skipped)")
    for uid, (attributes, count) in series.items():
        facts = SeriesFacts.from_attributes(
            dict(attributes), calling_ae_title=calling_ae_title, slice_count=count
        )
        decision = route(rules, facts)
        chosen = ", ".join(r.name for r in decision.rules) or "none (ignored)"
        suffix = " (fallback)" if decision.used_fallback else ""
        typer.echo(
            f"series {short_uid(uid)}: {facts.modality or '?'} {count} instance(s) "
            f"→ {chosen}{suffix}"
        )
        for item in decision.explanations:
            mark = "✓" if item.matched else "✗"
            typer.echo(f"  {mark} {item.rule.name} (priority {item.rule.priority}): {item.reason}")
    if skipped:
        typer.echo(f"{skipped} file(s) were not DICOM instances with valid UIDs and were skipped")
