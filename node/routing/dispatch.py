"""Hands complete series to routing: each becomes zero or more jobs, atomically."""

from __future__ import annotations

from sqlalchemy.orm import Session

from node.jobs.queue import create_job
from node.logging import get_logger, short_uid
from node.routing.engine import SeriesFacts, route
from node.routing.rules import RuleSet
from node.store.models import Job, Series, SeriesState

__all__ = ["dispatch_series"]

log = get_logger(__name__)


def dispatch_series(session: Session, series: Series, rules: RuleSet) -> list[Job]:
    """Route ``series`` and queue its jobs in the caller's transaction; mark it routed."""
    facts = SeriesFacts.from_attributes(
        series.attributes,
        calling_ae_title=series.calling_ae_title,
        slice_count=series.instance_count,
    )
    decision = route(rules, facts)
    jobs = [create_job(session, series, rule) for rule in decision.rules]
    series.state = SeriesState.ROUTED
    log.info(
        "series.routed",
        series=short_uid(series.series_instance_uid),
        instances=series.instance_count,
        rule=[rule.name for rule in decision.rules] or None,
        count=len(jobs),
    )
    return jobs
