"""Runs one job: assemble the volume, check it against the model card, run the pipeline (and the
shadow version, if any), write results, export them.

A series outside the model card's intended use (:func:`node.models.guard.check_intended_use`)
or refused by the pipeline's own ``check`` ends the job ``rejected`` with the reason; the model
never runs on it. When the job's rule asked for it (``explain_refusal``), an SR saying why is
sent to the destinations instead, and the job still ends ``rejected`` once they confirmed it.

A shadow version runs after the job's own result is written, on the same volume; its SEG is
kept in the spool and compared (Dice per label map) but never delivered, and nothing it does
(a refusal, a failure) changes the job's outcome.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update

from node.assembly.volume import Volume, load_volume
from node.backends.base import Backend
from node.errors import (
    AssemblyError,
    BackendError,
    BackendUnavailable,
    ConfigError,
    ModelNotFound,
    NodeError,
    NotAccepted,
    PeerRejected,
    PeerUnreachable,
    PipelineError,
    RoutingError,
)
from node.export.base import Exporter, backoff_delay
from node.faults import crash_point
from node.jobs.queue import transition
from node.jobs.results import ResultFile, write_refusal, write_results
from node.jobs.shadow import describe_shadow, run_shadow
from node.logging import get_logger
from node.models.guard import check_intended_use
from node.models.repository import ModelRepository
from node.pipelines.base import Explainer, Pipeline
from node.pipelines.findings import Findings
from node.pipelines.registry import get_pipeline
from node.store.database import Database
from node.store.index import series_instance_paths
from node.store.models import Delivery, Job, JobEvent, JobState, utcnow
from node.store.spool import Spool

__all__ = ["JobRunner"]

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class DeliveryOutcome:
    """One destination's outcome: confirmed (both None), retry later, or failed for good."""

    retry_in_s: float | None = None
    failure: str | None = None


@dataclass(frozen=True, slots=True)
class ExportRetry:
    """How deliveries, and jobs waiting for the backend, are retried (``export`` settings)."""

    max_attempts: int
    backoff_initial_s: float
    backoff_max_s: float


class JobRunner:
    """Carries a claimed job as far as it can go now."""

    def __init__(
        self,
        *,
        db: Database,
        spool: Spool,
        backend: Backend,
        exporters: dict[str, Exporter],
        retry: ExportRetry,
        series_number: int,
        models: ModelRepository,
    ) -> None:
        self._db = db
        self._models = models
        self._spool = spool
        self._backend = backend
        self._exporters = exporters
        self._retry = retry
        self._series_number = series_number

    def run(self, job: Job) -> None:
        """Advance ``job`` (claimed by the caller): infer if needed, then export."""
        state = job.state
        if state in (JobState.PENDING, JobState.RUNNING):
            state = self._infer(job)
        if state == JobState.EXPORTING:
            self._export(job.id)

    def _infer(self, job: Job) -> JobState:
        resumed = job.state == JobState.RUNNING
        transition(
            self._db,
            job.id,
            JobState.RUNNING,
            "resumed after a restart" if resumed else "started",
            count_attempt=True,
        )
        crash_point("job.after_start")
        started = time.monotonic()
        volume: Volume | None = None
        try:
            pipeline = get_pipeline(job.pipeline)
            # A study-scope job runs, for now, on its anchor series: today's pipelines take one
            # volume. Its inputs are pinned: instances that arrived after it was queued are not
            # its own (they reopen the series, and its rule's on_growth decides).
            paths = [
                self._spool.absolute(p)
                for p in series_instance_paths(self._db, job.series_id, up_to=job.inputs_up_to)
            ]
            if not self._models.has(job.model, job.version):
                raise ModelNotFound(job.model, job.version)
            volume = load_volume(paths)
            card = self._models.card(job.model, job.version)
            check_intended_use(volume, card)
            pipeline.check(volume)
            findings = pipeline.run(volume, self._backend, job.model, job.version)
            if job.explain:
                findings = self._explained(job, pipeline, volume, findings)
            results = write_results(
                findings,
                volume,
                job_uid=job.uid,
                spool=self._spool,
                series_number=self._series_number,
                explain=job.explain,
            )
        except NotAccepted as exc:
            return self._refuse(job, volume, exc.reason)
        except BackendUnavailable as exc:
            return self._wait_for_backend(job, exc)
        except (AssemblyError, PipelineError, BackendError, RoutingError, ConfigError) as exc:
            reason = f"{type(exc).__name__}: {exc}"
            transition(self._db, job.id, JobState.FAILED, reason, reason=reason)
            log.warning("job.failed", job_id=job.id, reason=reason)
            return JobState.FAILED
        except Exception as exc:  # a bug or an unexpected library error: never take the node down
            reason = f"unexpected {type(exc).__name__} during inference"
            transition(self._db, job.id, JobState.FAILED, reason, reason=reason)
            log.exception("job.failed", job_id=job.id, reason=reason)
            return JobState.FAILED
        crash_point("job.after_result")
        if job.shadow_version and volume is not None:
            outcome = run_shadow(
                job=job,
                volume=volume,
                findings=findings,
                pipeline=pipeline,
                backend=self._backend,
                models=self._models,
                spool=self._spool,
                series_number=self._series_number,
            )
            _record_shadow(self._db, job.id, outcome)
        duration = time.monotonic() - started
        transition(
            self._db,
            job.id,
            JobState.EXPORTING,
            f"{len(results)} result object(s) written in {duration:.1f} s",
            result_paths=[r.path for r in results],
            deliveries=[(d, r.sop_instance_uid) for d in job.destinations for r in results],
        )
        log.info("job.inferred", job_id=job.id, count=len(results), duration_s=round(duration, 2))
        return JobState.EXPORTING

    def _explained(
        self, job: Job, pipeline: Pipeline, volume: Volume, findings: Findings
    ) -> Findings:
        """``findings`` with the pipeline's heat maps, when it makes any.

        An explanation that fails is logged and left out: the job's results still go.
        """
        if not isinstance(pipeline, Explainer):
            return findings
        try:
            heat_maps = pipeline.explain(volume, self._backend, job.model, job.version, findings)
        except PipelineError as exc:
            log.warning("job.explanation_failed", job_id=job.id, error=type(exc).__name__)
            return findings
        return dataclasses.replace(findings, heat_maps=heat_maps)

    def _refuse(self, job: Job, volume: Volume | None, reason: str) -> JobState:
        """End ``job`` rejected with ``reason``; first send the refusal SR if its rule asked."""
        log.info("job.rejected", job_id=job.id, reason=reason)
        explained: ResultFile | None = None
        if job.explain_refusal and job.destinations and volume is not None:
            try:
                explained = write_refusal(
                    volume,
                    model=job.model,
                    version=job.version,
                    reason=reason,
                    job_uid=job.uid,
                    spool=self._spool,
                    series_number=self._series_number,
                )
            except (ValueError, OSError) as exc:  # never let the explanation hide the refusal
                # The type only: highdicom's messages may quote header values.
                log.warning("job.refusal_report_failed", job_id=job.id, error=type(exc).__name__)
        if explained is None:
            transition(
                self._db, job.id, JobState.REJECTED, f"not accepted: {reason}", reason=reason
            )
            return JobState.REJECTED
        transition(
            self._db,
            job.id,
            JobState.EXPORTING,
            f"not accepted: {reason}; sending an SR that says so",
            reason=reason,
            refused=True,
            result_paths=[explained.path],
            deliveries=[(d, explained.sop_instance_uid) for d in job.destinations],
        )
        return JobState.EXPORTING

    def _wait_for_backend(self, job: Job, error: BackendUnavailable) -> JobState:
        """The backend is down (e.g. Triton restarting): queue the job again, with backoff,
        until :attr:`ExportRetry.max_attempts` attempts, then fail it with the reason."""
        attempts = job.attempts + 1  # this attempt was counted when it started
        reason = f"inference backend unavailable: {error}"
        if attempts >= self._retry.max_attempts:
            transition(
                self._db,
                job.id,
                JobState.FAILED,
                f"{reason} (gave up after {attempts} attempts)",
                reason=reason,
            )
            log.warning("job.failed", job_id=job.id, reason=reason, attempt=attempts)
            return JobState.FAILED
        delay = backoff_delay(
            attempts, initial_s=self._retry.backoff_initial_s, max_s=self._retry.backoff_max_s
        )
        transition(
            self._db,
            job.id,
            JobState.PENDING,
            f"{reason}; retry in {delay:.0f} s",
            not_before=utcnow() + dt.timedelta(seconds=delay),
        )
        log.info("job.waiting_for_backend", job_id=job.id, attempt=attempts, next_attempt_s=delay)
        return JobState.PENDING

    def _export(self, job_id: int) -> None:
        with self._db.session() as session:
            job = session.get(Job, job_id)
            assert job is not None
            pending = [
                (d.id, d.destination, d.sop_instance_uid)
                for d in job.deliveries
                if d.confirmed_at is None
            ]
            result_paths = list(job.result_paths)
            refused = job.refused
        by_destination: dict[str, list[int]] = {}
        for delivery_id, destination, _sop in pending:
            by_destination.setdefault(destination, []).append(delivery_id)
        failures: list[str] = []
        next_wait: float | None = None
        for destination, delivery_ids in by_destination.items():
            outcome = self._deliver(job_id, destination, delivery_ids, result_paths)
            if outcome.failure is not None:
                failures.append(f"{destination}: {outcome.failure}")
            elif outcome.retry_in_s is not None:
                next_wait = min(next_wait or outcome.retry_in_s, outcome.retry_in_s)
        if failures:
            reason = "; ".join(failures)
            transition(self._db, job_id, JobState.DEAD, f"not delivered: {reason}", reason=reason)
            log.warning("job.dead", job_id=job_id, reason=reason)
        elif next_wait is not None:
            transition(
                self._db,
                job_id,
                JobState.EXPORTING,
                f"delivery will be retried in {next_wait:.0f} s",
                not_before=utcnow() + dt.timedelta(seconds=next_wait),
            )
        elif refused:
            crash_point("export.after_confirm")
            transition(
                self._db,
                job_id,
                JobState.REJECTED,
                "the SR explaining the refusal confirmed by every destination",
            )
            log.info("job.rejected", job_id=job_id, state="explained")
        else:
            crash_point("export.after_confirm")
            transition(
                self._db, job_id, JobState.DONE, "every result confirmed by every destination"
            )
            log.info("job.done", job_id=job_id)

    def _deliver(
        self, job_id: int, destination: str, delivery_ids: list[int], result_paths: list[str]
    ) -> DeliveryOutcome:
        """Send every result to one destination and record the outcome on its deliveries."""
        exporter = self._exporters.get(destination)
        if exporter is None:
            self._note_deliveries(delivery_ids, status=None)
            log.error("export.unknown_destination", job_id=job_id, destination=destination)
            return DeliveryOutcome(failure="destination not configured")
        try:
            exporter.send([self._spool.absolute(p) for p in result_paths])
        except PeerRejected as exc:
            self._note_deliveries(delivery_ids, status=exc.status)
            log.warning(
                "export.rejected",
                job_id=job_id,
                destination=destination,
                status=exc.status,
                reason=str(exc),
            )
            return DeliveryOutcome(failure=str(exc))
        except (PeerUnreachable, NodeError, OSError) as exc:
            attempts = self._note_deliveries(delivery_ids, status=None)
            if attempts >= self._retry.max_attempts:
                log.warning(
                    "export.gave_up",
                    job_id=job_id,
                    destination=destination,
                    attempt=attempts,
                    reason=str(exc),
                )
                return DeliveryOutcome(failure=f"gave up after {attempts} attempts: {exc}")
            delay = backoff_delay(
                attempts, initial_s=self._retry.backoff_initial_s, max_s=self._retry.backoff_max_s
            )
            log.info(
                "export.retry",
                job_id=job_id,
                destination=destination,
                attempt=attempts,
                next_attempt_s=delay,
                reason=str(exc),
            )
            return DeliveryOutcome(retry_in_s=delay)
        crash_point("export.after_send")
        self._confirm(delivery_ids)
        log.info(
            "export.confirmed", job_id=job_id, destination=destination, count=len(delivery_ids)
        )
        return DeliveryOutcome()

    def _note_deliveries(self, delivery_ids: list[int], *, status: int | None) -> int:
        with self._db.session() as session:
            session.execute(
                update(Delivery)
                .where(Delivery.id.in_(delivery_ids))
                .values(attempts=Delivery.attempts + 1, status=status)
            )
            return max(
                session.scalars(select(Delivery.attempts).where(Delivery.id.in_(delivery_ids)))
            )

    def _confirm(self, delivery_ids: list[int]) -> None:
        with self._db.session() as session:
            session.execute(
                update(Delivery)
                .where(Delivery.id.in_(delivery_ids))
                .values(attempts=Delivery.attempts + 1, status=0, confirmed_at=utcnow())
            )


def _record_shadow(db: Database, job_id: int, outcome: dict[str, Any]) -> None:
    """Store the shadow's outcome on the job and in its history."""
    with db.session() as session:
        job = session.get(Job, job_id)
        assert job is not None
        job.shadow_result = outcome
        session.add(
            JobEvent(job_id=job_id, at=utcnow(), state=job.state, message=describe_shadow(outcome))
        )
