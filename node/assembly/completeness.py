"""When is a series complete? As soon as an explicit signal says so, the quiet period last.

The signals, in the order they are checked:

``count``
    The series holds the number of instances its header announces (an enhanced multi-frame
    image, NumberOfSlices x NumberOfTimeSlices, ImagesInAcquisition: see
    :mod:`node.ingest.header`), or the number a rule announces (``expected_instances``).
``release``
    The association that brought its latest instance ended with a clean A-RELEASE, and no
    association still open is sending instances of it.
``quiet``
    No association still open is sending it, and ``quiet_period_s`` passed since its latest
    instance (an aborted association, STOW-RS, or a sender that trickles).

A study is complete when every one of its series is complete and none is still being sent.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import and_, exists, select
from sqlalchemy.orm import Session

from node.store.models import Association, Instance, Series, SeriesState

__all__ = ["CompleteSeries", "Signal", "complete_series", "complete_studies"]

Signal = Literal["count", "release", "quiet"]


@dataclass(frozen=True, slots=True)
class CompleteSeries:
    """A series found complete, and the signal that said so."""

    series: Series
    signal: Signal


def complete_series(
    session: Session,
    *,
    now: dt.datetime,
    quiet_period_s: float,
    announced_count: Callable[[Series], int | None] | None = None,
) -> list[CompleteSeries]:
    """The series still receiving that are complete at ``now``, loaded in ``session``.

    ``announced_count`` gives the instance count a rule announces for a series, if any.
    """
    open_sender = exists(
        select(Instance.id)
        .join(Association, Instance.association_id == Association.id)
        .where(Instance.series_id == Series.id, Association.closed_at.is_(None))
    )
    latest_released = exists(
        select(Instance.id)
        .join(Association, Instance.association_id == Association.id)
        .where(
            Instance.series_id == Series.id,
            Instance.received_at == Series.last_received_at,
            Association.released.is_(True),
        )
    )
    rows = session.execute(
        select(Series, open_sender.label("sending"), latest_released.label("released"))
        .where(Series.state == SeriesState.RECEIVING)
        .order_by(Series.last_received_at)
    ).all()
    quiet_since = now - dt.timedelta(seconds=quiet_period_s)
    found: list[CompleteSeries] = []
    for series, sending, released in rows:
        expected = series.expected_count or (announced_count(series) if announced_count else None)
        if expected is not None and series.instance_count >= expected:
            found.append(CompleteSeries(series, "count"))
        elif not sending and released:
            found.append(CompleteSeries(series, "release"))
        elif not sending and series.last_received_at <= quiet_since:
            found.append(CompleteSeries(series, "quiet"))
    return found


def complete_studies(session: Session) -> list[str]:
    """Study Instance UIDs with a series waiting for study-scope rules, now complete: no series
    of the study is receiving and no open association is sending any of them."""
    pending = select(Series.study_instance_uid).where(Series.study_pending.is_(True)).distinct()
    incomplete = select(Series.study_instance_uid).where(Series.state == SeriesState.RECEIVING)
    sending = (
        select(Series.study_instance_uid)
        .join(Instance, Instance.series_id == Series.id)
        .join(Association, Instance.association_id == Association.id)
        .where(Association.closed_at.is_(None))
    )
    return list(
        session.scalars(
            pending.where(
                and_(
                    Series.study_instance_uid.not_in(incomplete),
                    Series.study_instance_uid.not_in(sending),
                )
            )
        )
    )
