"""Hands complete series and studies to routing: each becomes zero or more jobs, atomically.

A job is queued at most once per rule and set of input instances: a series that grew after
routing gets a new job only from rules with ``on_growth: reprocess``, and only if its instances
really changed. Study-scope rules run when the whole study is complete.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from node.assembly.completeness import CompleteSeries
from node.errors import ConfigError
from node.jobs.queue import create_job
from node.logging import get_logger, short_uid
from node.models.repository import ModelRepository
from node.routing.engine import SeriesFacts, route
from node.routing.rules import Rule, RuleSet
from node.store.index import input_set
from node.store.models import Job, Series, SeriesState

__all__ = ["Dispatcher", "dispatch_series", "resolve_versions"]

log = get_logger(__name__)


def _facts(series: Series) -> SeriesFacts:
    return SeriesFacts.from_attributes(
        series.attributes,
        calling_ae_title=series.calling_ae_title,
        slice_count=series.instance_count,
    )


def resolve_versions(rule: Rule, models: ModelRepository | None) -> tuple[str, str | None]:
    """The concrete version a job of ``rule`` runs now, and its shadow version (or None).

    The version is the rule's pinned one, else the model's promoted one. The shadow is the
    rule's ``shadow`` (``"none"``: no shadow), else the model's own shadow from its promotion
    state; never the same as the version. Without a repository (tests), the rule's own values.

    Raises
    ------
    ConfigError
        If the pinned or shadow version is not in the repository, or nothing is promoted.
    """
    rule_shadow = None if rule.shadow in (None, "none") else rule.shadow
    if models is None:
        return rule.version or "promoted", rule_shadow
    version = models.resolve(rule.model, rule.version)
    if rule.shadow == "none":
        shadow = None
    elif rule_shadow is not None:
        shadow = models.resolve(rule.model, rule_shadow)
    else:
        shadow = models.state(rule.model).shadow
        if shadow is not None and not models.has(rule.model, shadow):
            shadow = None
    return version, (shadow if shadow != version else None)


def _queue_once(
    session: Session,
    anchor: Series,
    rule: Rule,
    inputs: list[Series],
    models: ModelRepository | None = None,
) -> Job | None:
    """Queue ``rule``'s job on ``inputs`` unless it already ran on them (or must not rerun)."""
    digest, up_to = input_set(session, [s.id for s in inputs])
    previous = list(
        session.scalars(select(Job).where(Job.series_id == anchor.id, Job.rule_name == rule.name))
    )
    if previous and rule.on_growth == "ignore":
        log.warning(
            "series.growth_ignored",
            series=short_uid(anchor.series_instance_uid),
            rule=rule.name,
            reason="new instances after its job; the rule's on_growth is ignore",
        )
        return None
    if any(job.input_digest == digest for job in previous):
        return None  # the same instances: that result exists already
    try:
        version, shadow = resolve_versions(rule, models)
    except ConfigError as exc:
        # The repository changed under the rules (a version removed, nothing promoted): the job
        # is queued on what the rule names and fails with the reason when it runs.
        log.error("routing.version_unresolved", rule=rule.name, model=rule.model, reason=str(exc))
        version, shadow = rule.version or "promoted", None
    return create_job(
        session,
        anchor,
        rule,
        scope=rule.scope,
        input_digest=digest,
        inputs_up_to=up_to,
        version=version,
        shadow_version=shadow,
    )


def dispatch_series(
    session: Session,
    series: Series,
    rules: RuleSet,
    *,
    signal: str = "quiet",
    models: ModelRepository | None = None,
) -> list[Job]:
    """Route ``series`` and queue its series-scope jobs in the caller's transaction; mark it
    routed (and waiting for its study, when a study-scope rule matched)."""
    decision = route(rules, _facts(series))
    jobs: list[Job] = []
    for rule in decision.rules:
        if rule.scope == "study":
            series.study_pending = True
        elif (job := _queue_once(session, series, rule, [series], models)) is not None:
            jobs.append(job)
    series.state = SeriesState.ROUTED
    log.info(
        "series.routed",
        series=short_uid(series.series_instance_uid),
        instances=series.instance_count,
        signal=signal,
        rule=[rule.name for rule in decision.rules] or None,
        count=len(jobs),
    )
    return jobs


class Dispatcher:
    """Routing as the completeness watcher's handler (see :class:`CompletionHandler`).

    With ``models``, rules that follow the promoted version (or a model's shadow) are resolved
    against the repository when each job is created; without, rules must pin their version.
    """

    def __init__(self, rules: RuleSet, models: ModelRepository | None = None) -> None:
        self.rules = rules
        self.models = models
        self._counting = [rule for rule in rules.rules if rule.expected_instances is not None]

    def announced_count(self, series: Series) -> int | None:
        """The largest ``expected_instances`` among the rules that match ``series`` now."""
        if not self._counting:
            return None
        matched = route(self.rules, _facts(series)).rules
        counts = [rule.expected_instances for rule in matched if rule.expected_instances]
        return max(counts) if counts else None

    def series_complete(self, session: Session, complete: CompleteSeries) -> list[Job]:
        """Route a complete series."""
        return dispatch_series(
            session, complete.series, self.rules, signal=complete.signal, models=self.models
        )

    def study_complete(self, session: Session, study_instance_uid: str) -> list[Job]:
        """Queue each study-scope rule once for the study, anchored on its first matching series."""
        members = list(
            session.scalars(
                select(Series)
                .where(Series.study_instance_uid == study_instance_uid)
                .order_by(Series.id)
            )
        )
        anchors: dict[str, tuple[Rule, Series]] = {}
        for series in members:
            series.study_pending = False
            for rule in route(self.rules, _facts(series)).rules:
                if rule.scope == "study":
                    anchors.setdefault(rule.name, (rule, series))
        jobs = [
            job
            for rule, anchor in anchors.values()
            if (job := _queue_once(session, anchor, rule, members, self.models)) is not None
        ]
        log.info(
            "study.routed",
            study=short_uid(study_instance_uid),
            count=len(jobs),
            rule=sorted(anchors) or None,
            scope="study",
        )
        return jobs
