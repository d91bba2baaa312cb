"""``pacs-ai-node jobs``: the job queue, as the index holds it."""

from __future__ import annotations

from typing import Annotated

import typer

from node.admin.common import ConfigOption, fail, settings_or_exit
from node.jobs.queue import get_job, list_jobs, retry_job
from node.jobs.shadow import summarize_shadow
from node.logging import short_uid
from node.store.database import Database
from node.store.models import JobState

__all__ = ["app"]

app = typer.Typer(help="See the jobs and their history.", no_args_is_help=True)


def _database(config: ConfigOption) -> Database:
    settings = settings_or_exit(config)
    if settings.database_url is None and not (settings.data_dir / "index.sqlite").exists():
        raise fail(f"no index at {settings.data_dir / 'index.sqlite'}: has the node run yet?")
    return Database(settings.index_url)


@app.command("list")
def list_(
    config: ConfigOption = None,
    state: Annotated[
        JobState | None, typer.Option(help="Only jobs in this state.", case_sensitive=False)
    ] = None,
    limit: Annotated[int, typer.Option(help="How many, newest first.", min=1)] = 50,
) -> None:
    """List jobs, newest first: id, state, rule, model@version, series (hashed), updated."""
    jobs = list_jobs(_database(config), state=state, limit=limit)
    if not jobs:
        typer.echo("no jobs")
        return
    typer.echo(f"{'ID':>5}  {'STATE':<10} {'RULE':<20} {'MODEL':<18} {'SERIES':<12}  UPDATED")
    for job in jobs:
        typer.echo(
            f"{job.id:>5}  {job.state.value:<10} {job.rule_name[:20]:<20} "
            f"{(job.model + '@' + job.version)[:18]:<18} "
            f"{short_uid(job.series.series_instance_uid):<12}  "
            f"{job.updated_at:%Y-%m-%d %H:%M:%S}Z"
        )


@app.command("retry")
def retry(
    job_id: Annotated[int, typer.Argument(help="A dead or failed job's id.")],
    config: ConfigOption = None,
) -> None:
    """Send a dead job's results again, or run a failed job again.

    The running node picks the job up within a second; results keep their SOP Instance UIDs, so
    the PACS never gets a second copy.
    """
    try:
        state = retry_job(_database(config), job_id)
    except KeyError:
        raise fail(f"no job {job_id}") from None
    except ValueError as exc:
        raise fail(str(exc)) from exc
    typer.echo(f"job {job_id} is {state.value} again")


@app.command("show")
def show(
    job_id: Annotated[int, typer.Argument(help="The job's id (see `jobs list`).")],
    config: ConfigOption = None,
) -> None:
    """Show one job: state, reason, which model version made each result, the shadow's
    comparison, deliveries and history."""
    job = get_job(_database(config), job_id)
    if job is None:
        raise fail(f"no job {job_id}")
    typer.echo(f"job {job.id}  uid {job.uid}")
    typer.echo(f"  state        {job.state.value}" + (f" ({job.reason})" if job.reason else ""))
    typer.echo(f"  rule         {job.rule_name}: {job.pipeline} {job.model}@{job.version}")
    typer.echo(
        f"  series       {short_uid(job.series.series_instance_uid)} "
        f"({job.series.instance_count} instances)"
    )
    typer.echo(f"  attempts     {job.attempts}")
    made_by = f"{job.model}@{job.version}"
    for path in job.result_paths:
        kind = "refusal SR" if job.refused else "result"
        typer.echo(f"  {kind:<12} {path} (by {made_by})")
    if job.shadow_version:
        outcome = job.shadow_result
        typer.echo(
            f"  shadow       {job.model}@{job.shadow_version}: "
            + (summarize_shadow(outcome) if outcome else "not run (yet)")
        )
        for path in (outcome or {}).get("paths", []):
            typer.echo(f"  shadow file  {path} (by {job.model}@{job.shadow_version}, never sent)")
    for delivery in job.deliveries:
        confirmed = (
            f"confirmed {delivery.confirmed_at:%Y-%m-%d %H:%M:%S}Z"
            if delivery.confirmed_at
            else "not confirmed"
        )
        typer.echo(
            f"  delivery     {delivery.destination}: {confirmed}, {delivery.attempts} attempt(s)"
        )
    typer.echo("  history")
    for event in job.events:
        typer.echo(f"    {event.at:%Y-%m-%d %H:%M:%S}Z  {event.state.value:<10} {event.message}")
