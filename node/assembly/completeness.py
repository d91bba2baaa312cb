"""When is a series complete? Its announced count is reached, or every association that brought
it has ended and a quiet period has passed since its last instance."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import and_, exists, or_, select
from sqlalchemy.orm import Session

from node.store.models import Association, Instance, Series, SeriesState

__all__ = ["complete_series"]


def complete_series(session: Session, *, now: dt.datetime, quiet_period_s: float) -> list[Series]:
    """The series still receiving that are complete at ``now``, locked in ``session``."""
    open_sender = exists(
        select(Instance.id)
        .join(Association, Instance.association_id == Association.id)
        .where(Instance.series_id == Series.id, Association.closed_at.is_(None))
    )
    quiet = and_(
        ~open_sender,
        Series.last_received_at <= now - dt.timedelta(seconds=quiet_period_s),
    )
    count_reached = and_(
        Series.expected_count.is_not(None), Series.instance_count >= Series.expected_count
    )
    return list(
        session.scalars(
            select(Series)
            .where(Series.state == SeriesState.RECEIVING, or_(quiet, count_reached))
            .order_by(Series.last_received_at)
        )
    )
