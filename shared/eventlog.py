"""The event log: every event a worker finished (processed, ignored or dead-lettered), read back
for operators (``hookline events``, the console), its bodies pruned after ``[archive]
retention_days``, and the replay of events ignored because no handler existed yet.

Lists are newest first with keyset pagination on the row id (``before``): a page costs the same
at the millionth row as at the first, and each filter has an index of its own (see
``shared.db.webhook_events``). Nothing here locks what the workers write: reads are plain
SELECTs, prunes delete bounded chunks, each in its own short transaction.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from redis import Redis
from rq import Queue
from sqlalchemy import Engine, Select, and_, delete, desc, select

from shared.db import as_utc, dead_letters, event_bodies, utcnow, webhook_events
from shared.enqueue import JobSpec, build_job
from shared.envelope import Envelope
from shared.rqcompat import JobSerializer

STATUSES = ("processed", "ignored", "dead")
#: rows deleted per transaction when pruning: small enough never to hold locks for long
PRUNE_CHUNK = 1000
#: a page holds at most this many rows
MAX_LIMIT = 1000


class FilterError(ValueError):
    """A filter value that cannot be understood; the message names the filter."""


def parse_when(text: str, name: str = "since") -> dt.datetime:
    """An ISO 8601 time (UTC unless it says otherwise), or a number of days ago."""
    text = text.strip()
    try:
        days = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(days) or days < 0:
            raise FilterError(f"{name}: {text!r} is not a number of days")
        return utcnow() - dt.timedelta(days=days)
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as err:
        raise FilterError(f"{name}: {text!r} is neither an ISO 8601 time nor days") from err
    return as_utc(when)


@dataclass(frozen=True)
class Filter:
    """What an operator asks for; every field optional."""

    source: str | None = None
    type: str | None = None
    status: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    event_id: str | None = None

    def __post_init__(self) -> None:
        if self.status is not None and self.status not in STATUSES:
            raise FilterError(f"status: {self.status!r} is not one of {', '.join(STATUSES)}")

    @classmethod
    def parse(cls, values: dict[str, str | None]) -> Filter:
        """From text (query string, command line): empty values are no filter."""
        given = {k: v for k, v in values.items() if v not in (None, "")}
        unknown = sorted(set(given) - {"source", "type", "status", "since", "until", "event_id"})
        if unknown:
            raise FilterError(f"unknown filter {unknown[0]!r}")
        since = given.get("since")
        until = given.get("until")
        return cls(
            source=given.get("source"),
            type=given.get("type"),
            status=given.get("status"),
            since=parse_when(since, "since") if since else None,
            until=parse_when(until, "until") if until else None,
            event_id=given.get("event_id"),
        )


#: no filter at all
EVERYTHING = Filter()


@dataclass
class Page:
    rows: list[dict[str, Any]]
    #: the ``before`` of the next page, or None when this is the last
    next_before: int | None = None


_LIST_COLUMNS = [
    webhook_events.c.id,
    webhook_events.c.source,
    webhook_events.c.event_id,
    webhook_events.c.event_type,
    webhook_events.c.status,
    webhook_events.c.attempts,
    webhook_events.c.received_at,
    webhook_events.c.processed_at,
    webhook_events.c.remote,
]


def _where(query: Select[Any], flt: Filter) -> Select[Any]:
    t = webhook_events.c
    conditions = []
    if flt.source:
        conditions.append(t.source == flt.source)
    if flt.type:
        conditions.append(t.event_type == flt.type)
    if flt.status:
        conditions.append(t.status == flt.status)
    if flt.since:
        conditions.append(t.received_at >= flt.since)
    if flt.until:
        conditions.append(t.received_at < flt.until)
    if flt.event_id:
        conditions.append(t.event_id == flt.event_id)
    return query.where(and_(*conditions)) if conditions else query


def _clamp(limit: int) -> int:
    return max(1, min(int(limit), MAX_LIMIT))


def list_events(
    engine: Engine, flt: Filter = EVERYTHING, *, limit: int = 50, before: int | None = None
) -> Page:
    """Events matching ``flt``, newest first, without bodies."""
    limit = _clamp(limit)
    query = _where(select(*_LIST_COLUMNS), flt)
    if before is not None:
        query = query.where(webhook_events.c.id < before)
    query = query.order_by(desc(webhook_events.c.id)).limit(limit)
    with engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(query)]
    return Page(rows, rows[-1]["id"] if len(rows) == limit else None)


@dataclass
class EventDetail:
    """One event: its row, its body and headers while kept, its dead letter if it died, and
    its timeline."""

    row: dict[str, Any]
    headers: list[list[str]] | None = None
    body: bytes | None = None
    dead_letter: dict[str, Any] | None = None
    timeline: list[dict[str, Any]] = field(default_factory=list)

    @property
    def replayable(self) -> str | None:
        """What a replay would do: ``"ignored"`` / ``"dead"``, or None (already applied, or
        no body left to replay)."""
        status = self.row["status"]
        if status == "ignored" and self.body is not None:
            return "ignored"
        if status == "dead" and self.dead_letter is not None:
            return "dead"
        return None


def get_event(engine: Engine, source: str, event_id: str) -> EventDetail | None:
    with engine.connect() as conn:
        row = conn.execute(
            select(webhook_events).where(
                webhook_events.c.source == source, webhook_events.c.event_id == event_id
            )
        ).first()
        if row is None:
            return None
        detail = EventDetail(dict(row._mapping))
        kept = conn.execute(
            select(event_bodies.c.headers, event_bodies.c.body).where(
                event_bodies.c.event_pk == row.id
            )
        ).first()
        if kept is not None:
            detail.headers, detail.body = list(kept.headers), bytes(kept.body)
        dead = conn.execute(
            select(dead_letters).where(
                dead_letters.c.source == source, dead_letters.c.event_id == event_id
            )
        ).first()
    if dead is not None:
        detail.dead_letter = dict(dead._mapping)
        if detail.body is None:
            detail.headers, detail.body = list(dead.headers), bytes(dead.body)
    detail.timeline = _timeline(detail)
    return detail


def _timeline(detail: EventDetail) -> list[dict[str, Any]]:
    row = detail.row
    steps: list[dict[str, Any]] = [{"at": as_utc(row["received_at"]), "what": "received"}]
    for err in row["errors"] or []:
        kind = "failed permanently" if err.get("permanent") else "failed"
        steps.append(
            {
                "at": _parse_at(err.get("at")),
                "what": f"attempt {err.get('attempt')} {kind}",
                "detail": err.get("error"),
            }
        )
    dl = detail.dead_letter
    if row["status"] == "dead":
        steps.append({"at": as_utc(row["processed_at"]), "what": "dead-lettered"})
    else:
        what = f"{row['status']} (attempt {row['attempts']})"
        steps.append({"at": as_utc(row["processed_at"]), "what": what})
    if dl is not None and dl["replayed_at"] is not None:
        steps.append(
            {"at": as_utc(dl["replayed_at"]), "what": f"replay queued ({dl['replays']} in all)"}
        )
    return sorted(steps, key=lambda s: s["at"] or utcnow())


def _parse_at(value: Any) -> dt.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return as_utc(dt.datetime.fromisoformat(value))
    except ValueError:
        return None


# -- replaying ignored events ----------------------------------------------------------------


def ignored_to_replay(
    engine: Engine, flt: Filter, keys: Sequence[tuple[str, str]] | None = None
) -> list[tuple[str, str]]:
    """The ignored events ``flt`` (or ``keys``) names whose bodies are still kept, oldest
    first: the ones a replay can run."""
    query = (
        select(webhook_events.c.source, webhook_events.c.event_id)
        .join(event_bodies, event_bodies.c.event_pk == webhook_events.c.id)
        .where(webhook_events.c.status == "ignored")
    )
    query = _where(query, replace(flt, status=None)).order_by(webhook_events.c.id)
    if keys is not None:
        wanted = set(keys)
        with engine.connect() as conn:
            found = [(r.source, r.event_id) for r in conn.execute(query)]
        return [k for k in found if k in wanted]
    with engine.connect() as conn:
        return [(r.source, r.event_id) for r in conn.execute(query)]


def replay_ignored(
    engine: Engine,
    redis: Redis,
    spec: JobSpec,
    keys: Sequence[tuple[str, str]],
    on_each: Callable[[tuple[str, str], str], None] | None = None,
) -> Iterator[tuple[str, str]]:
    """Queue each ignored event again, as it arrived, for the handlers that exist now; yields
    each once queued. A worker applies it once and moves its row from ``ignored`` to
    ``processed`` (or leaves it ``ignored`` if there is still no handler); an event already
    moved is a duplicate, so replaying twice changes nothing more."""
    queue = Queue(spec.queue, connection=redis, serializer=JobSerializer)
    for source, event_id in keys:
        with engine.connect() as conn:
            found = conn.execute(
                select(webhook_events, event_bodies.c.headers, event_bodies.c.body)
                .join(event_bodies, event_bodies.c.event_pk == webhook_events.c.id)
                .where(
                    webhook_events.c.source == source,
                    webhook_events.c.event_id == event_id,
                    webhook_events.c.status == "ignored",
                )
            ).first()
        if found is None:
            continue
        envelope = Envelope(
            source=source,
            event_id=event_id,
            received_at=as_utc(found.received_at).timestamp(),
            headers=tuple((str(k), str(v)) for k, v in found.headers),
            body=bytes(found.body),
            remote=found.remote,
            replay="ignored",
        )
        job = build_job(envelope, spec)
        job.connection = redis
        queue.enqueue_job(job)
        if on_each:
            on_each((source, event_id), job.id)
        yield (source, event_id)


# -- retention -------------------------------------------------------------------------------


def prune(engine: Engine, older_than_days: float, *, max_chunks: int | None = None) -> int:
    """Delete the bodies of events received more than ``older_than_days`` ago, in chunks of
    :data:`PRUNE_CHUNK` rows, each its own transaction; the events' rows stay. ``max_chunks``
    bounds one call (the workers' periodic sweep); the rest goes next time."""
    cutoff = utcnow() - dt.timedelta(days=older_than_days)
    with engine.connect() as conn:
        # the newest old event: ids follow processing order, nearly the order of arrival
        boundary = conn.execute(
            select(webhook_events.c.id)
            .where(webhook_events.c.received_at < cutoff)
            .order_by(desc(webhook_events.c.received_at))
            .limit(1)
        ).scalar()
    if boundary is None:
        return 0
    total = 0
    chunks = 0
    while max_chunks is None or chunks < max_chunks:
        oldest = (
            select(event_bodies.c.event_pk)
            .join(webhook_events, webhook_events.c.id == event_bodies.c.event_pk)
            .where(event_bodies.c.event_pk <= boundary, webhook_events.c.received_at < cutoff)
            .order_by(event_bodies.c.event_pk)
            .limit(PRUNE_CHUNK)
        )
        with engine.begin() as conn:
            ids = list(conn.execute(oldest).scalars())
            if ids:
                conn.execute(delete(event_bodies).where(event_bodies.c.event_pk.in_(ids)))
        total += len(ids)
        chunks += 1
        if len(ids) < PRUNE_CHUNK:
            break
    return total
