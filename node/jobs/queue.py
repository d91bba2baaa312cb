"""The durable job queue in the index: creation, claiming, state changes with history, recovery."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session, selectinload

from node.routing.rules import Rule
from node.store.database import Database
from node.store.models import Delivery, Job, JobEvent, JobState, Series, utcnow

__all__ = [
    "LEASE",
    "claim_next",
    "create_job",
    "get_job",
    "list_jobs",
    "recover_jobs",
    "release",
    "retry_job",
    "transition",
]

#: How long a claim holds a job before another worker may take it.
LEASE = dt.timedelta(minutes=30)


def create_job(
    session: Session,
    series: Series,
    rule: Rule,
    *,
    scope: str = "series",
    input_digest: str = "",
    inputs_up_to: int | None = None,
    version: str | None = None,
    shadow_version: str | None = None,
) -> Job:
    """Queue one job for ``series`` as ``rule`` says, inside the caller's transaction.

    ``input_digest`` and ``inputs_up_to`` pin the instances it runs on (see
    :func:`node.store.index.input_set`). ``version`` is the concrete model version (resolved
    from the rule and the promotion state by the caller; the rule's own when not given), and
    ``shadow_version`` the version run beside it, if any.
    """
    now = utcnow()
    version = version or rule.version or "promoted"
    job = Job(
        uid=str(uuid.uuid4()),
        series_id=series.id,
        rule_name=rule.name,
        scope=scope,
        input_digest=input_digest,
        inputs_up_to=inputs_up_to,
        pipeline=rule.pipeline,
        model=rule.model,
        version=version,
        shadow_version=shadow_version,
        explain_refusal=rule.explain_refusal,
        explain=rule.explain,
        destinations=list(rule.destinations),
        state=JobState.PENDING,
        attempts=0,
        result_paths=[],
        created_at=now,
        updated_at=now,
    )
    session.add(job)
    session.flush()
    session.add(
        JobEvent(
            job_id=job.id,
            at=now,
            state=JobState.PENDING,
            message=f"queued by rule {rule.name}: {rule.pipeline} {rule.model}@{version}"
            + (" (promoted)" if rule.follows_promoted else "")
            + (f", shadow @{shadow_version}" if shadow_version else ""),
        )
    )
    return job


def claim_next(db: Database, *, exclude: Sequence[int] = ()) -> Job | None:
    """Take the oldest runnable job (pending, or exporting and due) under a lease, or None."""
    now = utcnow()
    with db.session() as session:
        candidates = session.scalars(
            select(Job.id)
            .where(
                Job.state.in_([JobState.PENDING, JobState.RUNNING, JobState.EXPORTING]),
                or_(Job.not_before.is_(None), Job.not_before <= now),
                or_(Job.leased_until.is_(None), Job.leased_until < now),
                Job.id.not_in(list(exclude)),
            )
            .order_by(Job.id)
            .limit(8)
        ).all()
        for job_id in candidates:
            taken = session.execute(
                update(Job)
                .where(
                    Job.id == job_id,
                    or_(Job.leased_until.is_(None), Job.leased_until < now),
                )
                .values(leased_until=now + LEASE)
            )
            if getattr(taken, "rowcount", 0) == 1:
                return session.get(Job, job_id)
    return None


def release(db: Database, job_id: int) -> None:
    """Give up the lease on a job."""
    with db.session() as session:
        session.execute(update(Job).where(Job.id == job_id).values(leased_until=None))


def transition(
    db: Database,
    job_id: int,
    state: JobState,
    message: str,
    *,
    reason: str | None = None,
    result_paths: list[str] | None = None,
    deliveries: list[tuple[str, str]] | None = None,
    not_before: dt.datetime | None = None,
    count_attempt: bool = False,
    refused: bool | None = None,
) -> None:
    """Move a job to ``state``, appending ``message`` to its history, in one transaction.

    ``deliveries`` are ``(destination, sop_instance_uid)`` pairs to create (idempotently).
    """
    now = utcnow()
    with db.session() as session:
        job = session.get(Job, job_id)
        if job is None:
            raise KeyError(job_id)
        job.state = state
        job.updated_at = now
        job.not_before = not_before
        if count_attempt:
            job.attempts += 1
        if reason is not None:
            job.reason = reason
        if result_paths is not None:
            job.result_paths = result_paths
        if refused is not None:
            job.refused = refused
        if state.is_final:
            job.leased_until = None
        existing = {(d.destination, d.sop_instance_uid) for d in job.deliveries}
        for destination, sop_uid in deliveries or []:
            if (destination, sop_uid) not in existing:
                session.add(
                    Delivery(job_id=job.id, destination=destination, sop_instance_uid=sop_uid)
                )
        session.add(JobEvent(job_id=job.id, at=now, state=state, message=message))


def recover_jobs(db: Database) -> int:
    """At start-up: clear leases a crashed process left; return how many jobs were resumed."""
    with db.session() as session:
        result = session.execute(
            update(Job).where(Job.leased_until.is_not(None)).values(leased_until=None)
        )
        return int(getattr(result, "rowcount", 0) or 0)


def get_job(db: Database, job_id: int) -> Job | None:
    """A job with its history and deliveries loaded."""
    with db.session() as session:
        return session.scalars(
            select(Job)
            .where(Job.id == job_id)
            .options(
                selectinload(Job.events), selectinload(Job.deliveries), selectinload(Job.series)
            )
        ).one_or_none()


def list_jobs(db: Database, *, state: JobState | None = None, limit: int = 50) -> list[Job]:
    """The newest jobs first, optionally only those in ``state``."""
    with db.session() as session:
        query = select(Job).options(selectinload(Job.series)).order_by(Job.id.desc()).limit(limit)
        if state is not None:
            query = query.where(Job.state == state)
        return list(session.scalars(query))


def retry_job(db: Database, job_id: int) -> JobState:
    """Send a dead job's results again, or run a failed job again; return its new state.

    Dead jobs keep their results (same SOP Instance UIDs): their unconfirmed deliveries start
    over with a fresh attempt count. Failed jobs go back to the queue and infer again.

    Raises
    ------
    KeyError
        If there is no such job.
    ValueError
        If the job is not dead or failed.
    """
    with db.session() as session:
        job = session.get(Job, job_id)
        if job is None:
            raise KeyError(job_id)
        if job.state not in (JobState.DEAD, JobState.FAILED):
            raise ValueError(f"job {job_id} is {job.state.value}; only dead or failed jobs retry")
        was = job.state
        for delivery in job.deliveries:
            if delivery.confirmed_at is None:
                delivery.attempts = 0
        job.state = JobState.EXPORTING if was == JobState.DEAD else JobState.PENDING
        job.not_before = None
        job.leased_until = None
        job.reason = None
        job.updated_at = utcnow()
        session.add(
            JobEvent(
                job_id=job.id,
                at=job.updated_at,
                state=job.state,
                message=f"retried by an administrator (was {was.value})",
            )
        )
        return job.state
