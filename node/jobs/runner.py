"""Runs one job: assemble the volume, check and run the pipeline, write results, export them."""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass

from sqlalchemy import select, update

from node.assembly.volume import load_volume
from node.backends.base import Backend
from node.errors import (
    AssemblyError,
    BackendError,
    BackendUnavailable,
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
from node.jobs.results import write_results
from node.logging import get_logger
from node.pipelines.registry import get_pipeline
from node.store.database import Database
from node.store.index import series_instance_paths
from node.store.models import Delivery, Job, JobState, utcnow
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
    ) -> None:
        self._db = db
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
        try:
            pipeline = get_pipeline(job.pipeline)
            # A study-scope job runs, for now, on its anchor series: today's pipelines take one
            # volume. Its inputs are pinned: instances that arrived after it was queued are not
            # its own (they reopen the series, and its rule's on_growth decides).
            paths = [
                self._spool.absolute(p)
                for p in series_instance_paths(self._db, job.series_id, up_to=job.inputs_up_to)
            ]
            volume = load_volume(paths)
            pipeline.check(volume)
            findings = pipeline.run(volume, self._backend, job.model, job.version)
            results = write_results(
                findings,
                volume,
                job_uid=job.uid,
                spool=self._spool,
                series_number=self._series_number,
            )
        except NotAccepted as exc:
            transition(
                self._db,
                job.id,
                JobState.REJECTED,
                f"not accepted: {exc.reason}",
                reason=exc.reason,
            )
            log.info("job.rejected", job_id=job.id, reason=exc.reason)
            return JobState.REJECTED
        except BackendUnavailable as exc:
            return self._wait_for_backend(job, exc)
        except (AssemblyError, PipelineError, BackendError, RoutingError) as exc:
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
