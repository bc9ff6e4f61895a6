"""What the workers did, bucket by bucket, for the console's charts: events applied (processed
or ignored), dead-lettered, and the lag from received to committed, read from the tables.

Each is one ``GROUP BY`` over an indexed range: dead letters by ``failed_at``; applied events
by ``received_at`` (indexed) from :data:`HORIZON` before the window, and ``processed_at`` in
it. An event committed more than :data:`HORIZON` after it was received (a replay of an old
event) is therefore not drawn: the price of not indexing ``processed_at`` as well, on the
table every event writes.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, Float, Integer, and_, cast, func, select
from sqlalchemy.sql import ColumnElement

from shared.db import dead_letters, webhook_events

#: how long before a window an applied event may have been received and still be drawn in
#: it: well past the longest retry schedule (the default backoff adds up to about 3.6 hours)
HORIZON = dt.timedelta(hours=24)


@dataclass(frozen=True)
class Activity:
    """Per bucket (oldest first): events applied, dead-lettered, and the lag of the applied
    ones, mean and max, in seconds (``None`` where none was applied)."""

    applied: list[int]
    dead: list[int]
    lag_mean: list[float | None]
    lag_max: list[float | None]


def _epoch(dialect: str, column: Any) -> ColumnElement[Any]:
    if dialect == "postgresql":
        return cast(func.extract("epoch", column), Float)
    # SQLite keeps times as ISO text: julianday reads it (with its UTC offset)
    return (func.julianday(column) - 2440587.5) * 86400.0


def activity(engine: Engine, starts: list[float], width: int) -> Activity:
    """The buckets of ``width`` seconds beginning at ``starts`` (consecutive, oldest first)."""
    count = len(starts)
    first, end = starts[0], starts[-1] + width
    since = dt.datetime.fromtimestamp(first, dt.UTC)
    until = dt.datetime.fromtimestamp(end, dt.UTC)
    applied, dead = [0] * count, [0] * count
    lag_mean: list[float | None] = [None] * count
    lag_max: list[float | None] = [None] * count
    dialect = engine.dialect.name
    ev = webhook_events.c
    done_at = _epoch(dialect, ev.processed_at)
    bucket = cast(func.floor((done_at - first) / width), Integer).label("bucket")
    lag = done_at - _epoch(dialect, ev.received_at)
    applied_q = (
        select(bucket, func.count(), func.avg(lag), func.max(lag))
        .where(
            and_(
                ev.received_at >= since - HORIZON,
                ev.received_at < until,
                ev.processed_at >= since,
                ev.processed_at < until,
                ev.status.in_(("processed", "ignored")),
            )
        )
        .group_by(bucket)
    )
    dl = dead_letters.c
    dead_bucket = cast(func.floor((_epoch(dialect, dl.failed_at) - first) / width), Integer).label(
        "bucket"
    )
    dead_q = (
        select(dead_bucket, func.count())
        .where(and_(dl.failed_at >= since, dl.failed_at < until))
        .group_by(dead_bucket)
    )
    with engine.connect() as conn:
        for i, n, mean, most in conn.execute(applied_q):
            if i is not None and 0 <= i < count:
                applied[i] = int(n)
                lag_mean[i] = max(0.0, float(mean))
                lag_max[i] = max(0.0, float(most))
        for i, n in conn.execute(dead_q):
            if i is not None and 0 <= i < count:
                dead[i] = int(n)
    return Activity(applied, dead, lag_mean, lag_max)
