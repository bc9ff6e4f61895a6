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
from sqlalchemy import Connection, Engine, Select, and_, delete, desc, insert, select

from shared import rqcompat
from shared.db import as_utc, dead_letters, event_bodies, event_steps, utcnow, webhook_events
from shared.enqueue import JobSpec, build_job
from shared.envelope import Envelope
from shared.shards import ShardClients, clients_of

STATUSES = ("processed", "ignored", "dead")
#: who may ask for a replay, as the timeline names them
REPLAYERS = ("cli", "console", "api")
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
    #: dead letters only: None, those still to deal with; True, every one replayed (applied
    #: by its replay or dead again); False, those never replayed
    replayed: bool | None = None

    def __post_init__(self) -> None:
        if self.status is not None and self.status not in STATUSES:
            raise FilterError(f"status: {self.status!r} is not one of {', '.join(STATUSES)}")

    @classmethod
    def parse(cls, values: dict[str, str | None]) -> Filter:
        """From text (query string, command line): empty values are no filter."""
        given = {k: v for k, v in values.items() if v not in (None, "")}
        known = {"source", "type", "status", "since", "until", "event_id", "replayed"}
        unknown = sorted(set(given) - known)
        if unknown:
            raise FilterError(f"unknown filter {unknown[0]!r}")
        since = given.get("since")
        until = given.get("until")
        return cls(
            replayed=_yes_no(given.get("replayed"), "replayed"),
            source=given.get("source"),
            type=given.get("type"),
            status=given.get("status"),
            since=parse_when(since, "since") if since else None,
            until=parse_when(until, "until") if until else None,
            event_id=given.get("event_id"),
        )


def _yes_no(text: str | None, name: str) -> bool | None:
    if text is None:
        return None
    answer = {"yes": True, "true": True, "1": True, "no": False, "false": False, "0": False}
    found = answer.get(text.strip().lower())
    if found is None:
        raise FilterError(f"{name}: {text!r} is neither yes nor no")
    return found


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
    def dead_letter_id(self) -> int | None:
        """Its dead letter's id: the one there (still dead, or applied by a replay), else the
        last it was dead-lettered as (purged since)."""
        if self.dead_letter is not None:
            return int(self.dead_letter["id"])
        ids = [s["dead_letter_id"] for s in self.timeline if s.get("step") == "dead-lettered"]
        return int(ids[-1]) if ids else None

    @property
    def replayable(self) -> str | None:
        """What a replay would do: ``"ignored"`` / ``"dead"``, or None (already applied, or
        no body left to replay)."""
        status = self.row["status"]
        if status == "ignored" and self.body is not None:
            return "ignored"
        if (
            status == "dead"
            and self.dead_letter is not None
            and self.dead_letter["applied_at"] is None
        ):
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
        steps = [
            dict(s._mapping)
            for s in conn.execute(
                select(event_steps)
                .where(event_steps.c.source == source, event_steps.c.event_id == event_id)
                .order_by(event_steps.c.id)
            )
        ]
    if dead is not None:
        detail.dead_letter = dict(dead._mapping)
        if detail.body is None:
            detail.headers, detail.body = list(dead.headers), bytes(dead.body)
    detail.timeline = _timeline(detail, steps) if steps else _timeline_from_row(detail)
    return detail


def _timeline(detail: EventDetail, steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Received, then every step kept, in the order taken."""
    out: list[dict[str, Any]] = [{"at": as_utc(detail.row["received_at"]), "what": "received"}]
    for step in sorted(steps, key=lambda s: (as_utc(s["at"]), s["id"])):
        out.append(_shown(step))
    return out


def _shown(step: dict[str, Any]) -> dict[str, Any]:
    kind, attempt = step["step"], step["attempt"]
    shown: dict[str, Any] = {"at": as_utc(step["at"]), "step": kind}
    if kind == "failed":
        permanently = " permanently" if step["permanent"] else ""
        shown |= {"what": f"attempt {attempt} failed{permanently}", "detail": step["error"]}
    elif kind == "dead-lettered":
        shown["what"] = f"dead-lettered as dead letter {step['dead_letter_id']}"
    elif kind == "replay":
        source = f"dead letter {step['dead_letter_id']}" if step["dead_letter_id"] else "event"
        shown["what"] = f"replay of the {source} queued, asked by {step['by']}"
        shown["by"] = step["by"]
    else:  # processed | ignored
        shown["what"] = f"{kind} (attempt {attempt})"
    if step["dead_letter_id"] is not None:
        shown["dead_letter_id"] = step["dead_letter_id"]
    if attempt is not None:
        shown["attempt"] = attempt
    return shown


def _timeline_from_row(detail: EventDetail) -> list[dict[str, Any]]:
    """An event finished before its steps were kept (revision 0003): what its row tells."""
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


# -- writing the timeline --------------------------------------------------------------------


def step(source: str, event_id: str, at: dt.datetime, kind: str, **fields: Any) -> dict[str, Any]:
    """One ``event_steps`` row (the optional columns default to none)."""
    row = {"attempt": None, "permanent": None, "error": None, "dead_letter_id": None, "by": None}
    return row | {"source": source, "event_id": event_id, "at": at, "step": kind} | fields


def failed_steps(
    source: str, event_id: str, errors: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """A ``failed`` step per attempt error (``AttemptError.to_json()`` dicts)."""
    return [
        step(
            source,
            event_id,
            _parse_at(e.get("at")) or utcnow(),
            "failed",
            attempt=e.get("attempt"),
            permanent=int(bool(e.get("permanent"))),
            error=e.get("error"),
        )
        for e in errors
    ]


def add_steps(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    if rows:
        conn.execute(insert(event_steps), list(rows))


def renumber(errors: Sequence[dict[str, Any]], before: int) -> list[dict[str, Any]]:
    """Attempt errors of one run (a job counts from 1) numbered among every try of the event:
    ``before`` tries came first (the runs before a replay)."""
    return [e | {"attempt": int(e.get("attempt") or 0) + before} for e in errors]


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
    redis: Redis | ShardClients[Redis],
    spec: JobSpec,
    keys: Sequence[tuple[str, str]],
    on_each: Callable[[tuple[str, str], str], None] | None = None,
    *,
    by: str,
) -> Iterator[tuple[str, str]]:
    """Queue each ignored event again, as it arrived, for the handlers that exist now; yields
    each once queued. A worker applies it once and moves its row from ``ignored`` to
    ``processed`` (or leaves it ``ignored`` if there is still no handler); an event already
    moved is a duplicate, so replaying twice changes nothing more."""
    clients = clients_of(redis)
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
        shard, client = clients.route(source, event_id)
        job.connection = client
        asked = utcnow()  # before the worker can take it: the timeline's order
        rqcompat.enqueue(client, job, shard)
        with engine.begin() as conn:
            add_steps(conn, [step(source, event_id, asked, "replay", by=by)])
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
