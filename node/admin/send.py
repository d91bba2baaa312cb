"""``pacs-ai-node send``: send DICOM files to a configured destination, as the node does."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from node.admin.common import ConfigOption, fail, settings_or_exit
from node.config import Settings
from node.errors import NodeError
from node.export.bulk import BulkPolicy, BulkReport, files_under, send_files
from node.export.registry import build_exporter
from node.logging import configure_logging

__all__ = ["send"]

# Without a terminal (a pipe, a log file), progress is written at most this often.
_PROGRESS_EVERY_S = 10.0


def send(
    path: Annotated[
        Path,
        typer.Argument(
            help="A DICOM file, or a folder searched recursively. Files that are not DICOM "
            "(and DICOMDIRs) are skipped and counted.",
            exists=True,
        ),
    ],
    to: Annotated[
        str,
        typer.Option(
            "--to",
            help="Name of the destination, as under `destinations:` in the configuration "
            "(DICOM C-STORE or DICOMweb STOW-RS).",
        ),
    ],
    config: ConfigOption = None,
    batch_size: Annotated[
        int,
        typer.Option(
            help="Files per association (DICOM) or per request (DICOMweb); a batch also ends "
            "at 64 MB.",
            min=1,
            max=64,
        ),
    ] = 32,
    attempts: Annotated[
        int,
        typer.Option(
            help="Tries per batch while the destination cannot be reached, with the "
            "configured backoff (export.backoff_initial_s, capped at 30 s) between them.",
            min=1,
        ),
    ] = 3,
) -> None:
    """Send every DICOM file under PATH to the destination named by --to.

    It uses the node's own exporters, in batches: a file counts as sent only
    once the destination confirmed it (C-STORE status, or the STOW-RS answer
    listing it). A batch the destination refuses is sent again file by file,
    so only the refused files fail. Sending again is safe: files keep their
    SOP Instance UIDs.

    Progress goes to stderr, the summary (sent, failed, skipped) to stdout.
    Exit code 0 only when every DICOM file was sent; 1 otherwise (a refused
    file, an unknown or unreachable destination, no DICOM file under PATH).
    """
    settings = settings_or_exit(config)
    configure_logging(settings.log_format, "WARNING")
    try:
        exporter = build_exporter(settings, to)
    except NodeError as exc:
        raise fail(exc) from exc
    progress = _Progress()
    report = send_files(
        exporter,
        files_under(path),
        policy=_policy(settings, batch_size, attempts),
        progress=progress,
    )
    progress.close()
    for failed, reason in report.failed:
        typer.echo(f"failed: {failed}: {reason}", err=True)
    typer.echo(_summary(report, to))
    if report.stopped is not None:
        raise fail(f"stopped, {to!r} cannot be reached: {report.stopped}")
    if report.sent == 0 and not report.failed:
        raise fail(f"no DICOM files under {path}")
    if not report.complete:
        raise typer.Exit(code=1)


def _policy(settings: Settings, batch_size: int, attempts: int) -> BulkPolicy:
    return BulkPolicy(
        batch_files=batch_size,
        attempts=attempts,
        backoff_initial_s=settings.export.backoff_initial_s,
        backoff_max_s=min(settings.export.backoff_max_s, 30.0),
    )


def _summary(report: BulkReport, destination: str) -> str:
    skipped = [
        f"{count} {what}"
        for count, what in ((report.not_dicom, "not DICOM"), (report.dicomdir, "DICOMDIR"))
        if count
    ]
    line = (
        f"{destination}: sent {report.sent}, failed {len(report.failed)}, "
        f"skipped {report.skipped}" + (f" ({', '.join(skipped)})" if skipped else "")
    )
    if report.not_attempted:
        line += f", not attempted {report.not_attempted}"
    return line


class _Progress:
    """Writes ``files N/M: sent, failed, skipped`` to stderr: rewritten in place on a terminal,
    otherwise a line at most every ``_PROGRESS_EVERY_S`` seconds."""

    def __init__(self) -> None:
        self._tty = sys.stderr.isatty()
        self._last = time.monotonic()
        self._open_line = False

    def __call__(self, report: BulkReport) -> None:
        line = (
            f"files {report.done}/{report.total}: sent {report.sent}, "
            f"failed {len(report.failed)}, skipped {report.skipped}"
        )
        if self._tty:
            typer.echo(f"\r{line}", err=True, nl=False)
            self._open_line = True
        elif time.monotonic() - self._last >= _PROGRESS_EVERY_S:
            typer.echo(line, err=True)
            self._last = time.monotonic()

    def close(self) -> None:
        """End the line rewritten in place, so that what follows starts on its own."""
        if self._open_line:
            typer.echo("", err=True)
            self._open_line = False
