"""Dead letters: events that failed permanently or ran out of attempts, kept with their raw
body, redacted headers and every attempt's error, for operators to list, show, replay or purge.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from redis import Redis
from sqlalchemy import Engine, Select, delete, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from shared import eventlog, rqcompat
from shared.db import as_utc, dead_letters, from_timestamp, utcnow, webhook_events
from shared.enqueue import JobSpec, build_job
from shared.envelope import Envelope
from shared.eventlog import EVERYTHING, MAX_LIMIT, Filter, Page
from shared.shards import ShardClients, clients_of

#: dead letters deleted per transaction
PURGE_CHUNK = 500


def clean_text(text: str, limit: int = 2000) -> str:
    """Text any database accepts: no NUL, no lone surrogate, bounded."""
    text = text.replace("\x00", "\\x00")
    return text.encode("utf-8", "backslashreplace").decode("utf-8")[:limit]


@dataclass(frozen=True)
class AttemptError:
    attempt: int
    at: float
    error: str
    permanent: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "attempt": self.attempt,
            "at": from_timestamp(self.at).isoformat(),
            "error": clean_text(self.error),
            "permanent": self.permanent,
        }


def record(
    engine: Engine,
    envelope: Envelope,
    *,
    event_type: str | None,
    errors: Sequence[AttemptError],
    permanent: bool,
) -> bool:
    """Dead-letter the event: its ``webhook_events`` row marked ``dead`` and its dead letter,
    in one transaction; when it died before (after a replay), attempts add up and errors
    accumulate. ``False``, and nothing written, when the event was applied meanwhile (a worker
    taken for dead finished it after all): an event is never both applied and dead."""
    now = utcnow()
    with engine.begin() as conn:
        dialect = sqlite if conn.dialect.name == "sqlite" else postgresql
        # the row first: the unique (source, event_id) serialises this against the effects (its
        # type, attempts and errors are written below, once the earlier ones are known)
        may_take = ["dead", "ignored"] if envelope.replay == "ignored" else ["dead"]
        row = dialect.insert(webhook_events).values(
            source=envelope.source,
            event_id=envelope.event_id,
            status="dead",
            attempts=0,
            received_at=from_timestamp(envelope.received_at),
            processed_at=now,
            remote=(envelope.remote or "")[:64] or None,
        )
        row = row.on_conflict_do_update(
            index_elements=[webhook_events.c.source, webhook_events.c.event_id],
            set_={"status": "dead", "processed_at": now},
            where=webhook_events.c.status.in_(may_take),
        ).returning(webhook_events.c.id, webhook_events.c.attempts, webhook_events.c.errors)
        taken = conn.execute(row).first()
        if taken is None:
            return False
        # every try counts: those before a replay (the row's), then this run's
        before = int(taken.attempts)
        new_errors = eventlog.renumber([e.to_json() for e in errors], before)
        attempts = before + len(errors)
        all_errors = list(taken.errors or []) + new_errors
        conn.execute(
            update(webhook_events)
            .where(webhook_events.c.id == taken.id)
            .values(event_type=event_type, attempts=attempts, errors=all_errors)
        )
        values = dict(
            source=envelope.source,
            event_id=envelope.event_id,
            event_type=event_type,
            reason=clean_text(
                errors[-1].error.splitlines()[0] if errors[-1].error else "failed", 500
            ),
            permanent=int(permanent),
            attempts=attempts,
            errors=all_errors,
            headers=[[clean_text(k, 200), clean_text(v, 4000)] for k, v in envelope.headers],
            body=envelope.body,
            remote=envelope.remote,
            received_at=from_timestamp(envelope.received_at),
            failed_at=now,  # replays: the column's default, 0
        )
        stmt = dialect.insert(dead_letters).values(**values)
        update_cols: dict[str, Any] = {
            k: stmt.excluded[k]
            for k in ("event_type", "reason", "permanent", "attempts", "errors", "failed_at")
        }
        update_cols["applied_at"] = None
        dl_id = conn.execute(
            stmt.on_conflict_do_update(
                index_elements=[dead_letters.c.source, dead_letters.c.event_id], set_=update_cols
            ).returning(dead_letters.c.id)
        ).scalar_one()
        source, event_id = envelope.source, envelope.event_id
        steps = eventlog.failed_steps(source, event_id, new_errors)
        steps.append(eventlog.step(source, event_id, now, "dead-lettered", dead_letter_id=dl_id))
        eventlog.add_steps(conn, steps)
    return True


def _where(query: Select[Any], flt: Filter) -> Select[Any]:
    """The operators' filters; times are when the event died. Without ``replayed``, the dead
    letters still to deal with (a replay applied the others: kept, for the record)."""
    t = dead_letters.c
    if flt.replayed is None:
        query = query.where(t.applied_at.is_(None))
    elif flt.replayed:
        query = query.where(t.replayed_at.is_not(None))
    else:
        query = query.where(t.replayed_at.is_(None))
    if flt.source:
        query = query.where(t.source == flt.source)
    if flt.type:
        query = query.where(t.event_type == flt.type)
    if flt.since:
        query = query.where(t.failed_at >= flt.since)
    if flt.until:
        query = query.where(t.failed_at < flt.until)
    if flt.event_id:
        query = query.where(t.event_id == flt.event_id)
    return query


def older_than(days: float | None) -> Filter:
    """``--older-than DAYS``: dead letters that died more than DAYS ago."""
    return Filter() if days is None else Filter(until=utcnow() - dt.timedelta(days=days))


_LIST_COLUMNS = [c for c in dead_letters.c if c.name not in ("body", "headers", "errors")]


def list_page(
    engine: Engine, flt: Filter = EVERYTHING, *, limit: int = 50, before: int | None = None
) -> Page:
    """Dead letters matching ``flt``, newest first (by id: when first dead-lettered), without
    bodies; keyset pagination on the id."""
    limit = max(1, min(int(limit), MAX_LIMIT))
    query = _where(select(*_LIST_COLUMNS), flt)
    if before is not None:
        query = query.where(dead_letters.c.id < before)
    query = query.order_by(dead_letters.c.id.desc()).limit(limit)
    with engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(query)]
    return Page(rows, rows[-1]["id"] if len(rows) == limit else None)


def matching_ids(engine: Engine, flt: Filter, *, waiting_replay: bool = True) -> list[int]:
    """The ids ``flt`` matches, oldest first; without ``waiting_replay``, those whose replay
    was already queued since they died are left out (running ``--all`` again after an
    interruption sends only the rest)."""
    query = _where(select(dead_letters.c.id), flt).order_by(dead_letters.c.id)
    if not waiting_replay:
        query = query.where(
            or_(
                dead_letters.c.replayed_at.is_(None),
                dead_letters.c.replayed_at < dead_letters.c.failed_at,
            )
        )
    with engine.connect() as conn:
        return [r.id for r in conn.execute(query)]


def existing(engine: Engine, ids: Sequence[int]) -> list[int]:
    """Which of ``ids`` are dead letters, in the order given."""
    with engine.connect() as conn:
        found = set(
            conn.execute(select(dead_letters.c.id).where(dead_letters.c.id.in_(ids))).scalars()
        )
    return [i for i in ids if i in found]


def get_row(engine: Engine, dead_letter_id: int) -> dict[str, Any] | None:
    with engine.connect() as conn:
        row = conn.execute(select(dead_letters).where(dead_letters.c.id == dead_letter_id)).first()
    return dict(row._mapping) if row else None


def _envelope(row: Any) -> Envelope:
    return Envelope(
        source=row.source,
        event_id=row.event_id,
        received_at=as_utc(row.received_at).timestamp(),
        headers=tuple((str(k), str(v)) for k, v in row.headers),
        body=bytes(row.body),
        remote=row.remote,
        replay="dead",
    )


def replay(
    engine: Engine,
    redis: Redis | ShardClients[Redis],
    spec: JobSpec,
    ids: Sequence[int],
    on_each: Callable[[int, str], None] | None = None,
    *,
    by: str,
) -> Iterator[int]:
    """Queue each dead letter again as a fresh job (all attempts available), in its event's
    shard; yields each id once queued and marked. The effects cannot apply twice: the
    worker's ``webhook_events`` row guards them however often an event is replayed."""
    redis = clients_of(redis)
    for dl_id in ids:
        with engine.connect() as conn:
            row = conn.execute(select(dead_letters).where(dead_letters.c.id == dl_id)).first()
        if row is None or row.applied_at is not None:  # gone, or applied by a replay already
            continue
        job = build_job(_envelope(row), spec)
        shard, client = redis.route(row.source, row.event_id)
        job.connection = client
        asked = utcnow()  # before the worker can take it: the timeline's order
        rqcompat.enqueue(client, job, shard)
        with engine.begin() as conn:
            conn.execute(
                update(dead_letters)
                .where(dead_letters.c.id == dl_id)
                .values(replayed_at=asked, replays=dead_letters.c.replays + 1)
            )
            replay_step = eventlog.step(
                row.source, row.event_id, asked, "replay", dead_letter_id=dl_id, by=by
            )
            eventlog.add_steps(conn, [replay_step])
        if on_each:
            on_each(dl_id, job.id)
        yield dl_id


#: what became of a dead letter queued again: its replay applied it, it died again, it is still
#: with the workers (queued or waiting to retry), or it was purged meanwhile
OUTCOMES = ("processed", "dead again", "waiting", "gone")


def replay_outcomes(engine: Engine, queued: Mapping[int, dt.datetime]) -> dict[int, str]:
    """What became of each dead letter queued again at the time given: one of :data:`OUTCOMES`."""
    if not queued:
        return {}
    with engine.connect() as conn:
        found = {
            r.id: r
            for r in conn.execute(
                select(
                    dead_letters.c.id, dead_letters.c.applied_at, dead_letters.c.failed_at
                ).where(dead_letters.c.id.in_(list(queued)))
            )
        }
    out = {}
    for dl_id, at in queued.items():
        row = found.get(dl_id)
        if row is None:
            out[dl_id] = "gone"
        elif row.applied_at is not None and as_utc(row.applied_at) >= at:
            out[dl_id] = "processed"
        elif as_utc(row.failed_at) >= at:
            out[dl_id] = "dead again"
        else:
            out[dl_id] = "waiting"
    return out


def purge(engine: Engine, ids: Sequence[int]) -> int:
    """Delete these dead letters, :data:`PURGE_CHUNK` per transaction (a bulk purge never
    holds row locks for long); how many were deleted. The events' rows stay ``dead``."""
    done = 0
    for i in range(0, len(ids), PURGE_CHUNK):
        chunk = list(ids[i : i + PURGE_CHUNK])
        with engine.begin() as conn:
            done += int(
                conn.execute(delete(dead_letters).where(dead_letters.c.id.in_(chunk))).rowcount
            )
    return done


def count(engine: Engine, flt: Filter = EVERYTHING) -> int:
    with engine.connect() as conn:
        query = _where(select(func.count()).select_from(dead_letters), flt)
        return int(conn.execute(query).scalar_one())
