"""What the workers did, bucket by bucket, for the console's charts: events applied (processed
or ignored), dead-lettered, and the lag from received to committed, read from the tables.

``webhook_events`` rows are inserted when their event is committed, so their ids follow
``processed_at`` (within the seconds concurrent workers overlap): the first row of a window is
found by a binary search on the primary key (:func:`first_row_since`, some twenty lookups),
and the window's rows are one ``GROUP BY`` over that id range, without an index on
``processed_at`` on the table every event writes. A replay that takes over an older event's
row (its id from before the window) is therefore not drawn. Dead letters are counted by
``failed_at``, which has an index.

A bucket that ended more than :data:`SETTLED_SECONDS` ago no longer changes: its figures are
kept in this process for :data:`CACHE_SECONDS`, so the console's refresh every 5 s reads only
the last buckets again.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, Float, Integer, and_, cast, func, select
from sqlalchemy.sql import ColumnElement

from shared.db import as_utc, dead_letters, webhook_events

#: a bucket that ended this long ago is complete: its events' transactions have committed
#: (a batch commits within its job timeout, 60 s by default)
SETTLED_SECONDS = 180
#: how long a settled bucket's figures are kept before being read again (a replay's row may
#: change them meanwhile)
CACHE_SECONDS = 600
#: rows of overlap the id search allows for workers committing out of order
OVERLAP = dt.timedelta(minutes=10)


@dataclass(frozen=True)
class Activity:
    """Per bucket (oldest first): events applied, dead-lettered, and the lag of the applied
    ones, mean and max, in seconds (``None`` where none was applied)."""

    applied: list[int]
    dead: list[int]
    lag_mean: list[float | None]
    lag_max: list[float | None]


@dataclass(frozen=True)
class _Bucket:
    applied: int = 0
    dead: int = 0
    lag_mean: float | None = None
    lag_max: float | None = None


_lock = threading.Lock()
#: (database URL, width, bucket start) -> (when stored, the bucket's figures)
_cache: dict[tuple[str, int, float], tuple[float, _Bucket]] = {}


def clear_cache() -> None:
    """Forget every cached bucket (tests; a database emptied under a running console)."""
    with _lock:
        _cache.clear()


def _epoch(dialect: str, column: Any) -> ColumnElement[Any]:
    if dialect == "postgresql":
        return cast(func.extract("epoch", column), Float)
    # SQLite keeps times as ISO text: julianday reads it (with its UTC offset)
    return (func.julianday(column) - 2440587.5) * 86400.0


def first_row_since(conn: Connection, when: dt.datetime) -> int | None:
    """The id from which ``webhook_events`` rows were committed at or after ``when`` (a
    binary search on the primary key, ids following commit order); ``None``: no such row."""
    ev = webhook_events.c
    top = conn.execute(select(func.max(ev.id))).scalar()
    if top is None:
        return None
    lo, hi = 1, int(top) + 1
    while lo < hi:
        mid = (lo + hi) // 2
        row = conn.execute(
            select(ev.id, ev.processed_at).where(ev.id >= mid).order_by(ev.id).limit(1)
        ).first()
        if row is None or as_utc(row.processed_at) >= when:
            hi = mid
        else:
            lo = int(row.id) + 1
    return lo if lo <= int(top) else None


def _read(conn: Connection, first: float, width: int, count: int) -> list[_Bucket]:
    """The buckets from ``first``, read from the tables."""
    dialect = conn.dialect.name
    since = dt.datetime.fromtimestamp(first, dt.UTC)
    until = dt.datetime.fromtimestamp(first + width * count, dt.UTC)
    found: dict[int, dict[str, Any]] = {}
    start_id = first_row_since(conn, since - OVERLAP)
    ev = webhook_events.c
    if start_id is not None:
        done_at = _epoch(dialect, ev.processed_at)
        bucket = cast(func.floor((done_at - first) / width), Integer).label("bucket")
        lag = done_at - _epoch(dialect, ev.received_at)
        query = (
            select(bucket, func.count(), func.avg(lag), func.max(lag))
            .where(
                and_(
                    ev.id >= start_id,
                    ev.processed_at >= since,
                    ev.processed_at < until,
                    ev.status.in_(("processed", "ignored")),
                )
            )
            .group_by(bucket)
        )
        for i, n, mean, most in conn.execute(query):
            found.setdefault(int(i), {}).update(
                applied=int(n), lag_mean=max(0.0, float(mean)), lag_max=max(0.0, float(most))
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
    for i, n in conn.execute(dead_q):
        found.setdefault(int(i), {})["dead"] = int(n)
    return [_Bucket(**found.get(i, {})) for i in range(count)]


def activity(engine: Engine, starts: list[float], width: int) -> Activity:
    """The buckets of ``width`` seconds beginning at ``starts`` (consecutive, oldest first):
    the settled ones from this process's cache where it has them, the rest from the tables."""
    now = time.time()
    url = str(engine.url)
    with _lock:
        for key in [k for k, (at, _) in _cache.items() if now - at > CACHE_SECONDS]:
            del _cache[key]
        cached = [_cache.get((url, width, start)) for start in starts]
    # read from the first bucket not cached on (one range; usually the last few)
    missing = next((i for i, c in enumerate(cached) if c is None), len(starts))
    buckets = [c[1] for c in cached[:missing] if c is not None]
    if missing < len(starts):
        with engine.connect() as conn:
            fresh = _read(conn, starts[missing], width, len(starts) - missing)
        buckets += fresh
        with _lock:
            for start, bucket in zip(starts[missing:], fresh, strict=True):
                if start + width <= now - SETTLED_SECONDS:
                    _cache[(url, width, start)] = (now, bucket)
    return Activity(
        applied=[b.applied for b in buckets],
        dead=[b.dead for b in buckets],
        lag_mean=[b.lag_mean for b in buckets],
        lag_max=[b.lag_max for b in buckets],
    )
