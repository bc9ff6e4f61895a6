"""Dead letters: events that failed permanently or ran out of attempts, kept with their raw
body, redacted headers and every attempt's error, for operators to list, show, replay or purge.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from redis import Redis
from rq import Queue
from sqlalchemy import Engine, Select, delete, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from shared.db import as_utc, dead_letters, from_timestamp, utcnow, webhook_events
from shared.enqueue import JobSpec, build_job
from shared.envelope import Envelope
from shared.rqcompat import JobSerializer


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
        # the row first: the unique (source, event_id) serialises this against the effects
        may_take = ["dead", "ignored"] if envelope.replay == "ignored" else ["dead"]
        row = dialect.insert(webhook_events).values(
            source=envelope.source,
            event_id=envelope.event_id,
            event_type=event_type,
            status="dead",
            attempts=len(errors),
            received_at=from_timestamp(envelope.received_at),
            processed_at=now,
            remote=(envelope.remote or "")[:64] or None,
            errors=[e.to_json() for e in errors],
        )
        row = row.on_conflict_do_update(
            index_elements=[webhook_events.c.source, webhook_events.c.event_id],
            set_={"status": "dead", "processed_at": now},
            where=webhook_events.c.status.in_(may_take),
        ).returning(webhook_events.c.id)
        row_id = conn.execute(row).scalar()
        if row_id is None:
            return False
        old = conn.execute(
            select(dead_letters.c.attempts, dead_letters.c.errors).where(
                dead_letters.c.source == envelope.source,
                dead_letters.c.event_id == envelope.event_id,
            )
        ).first()
        attempts = len(errors) + (old.attempts if old else 0)
        all_errors = (list(old.errors) if old else []) + [e.to_json() for e in errors]
        conn.execute(
            update(webhook_events)
            .where(webhook_events.c.id == row_id)
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
            failed_at=now,
            replays=0,
        )
        stmt = dialect.insert(dead_letters).values(**values)
        update_cols = {
            k: stmt.excluded[k]
            for k in ("event_type", "reason", "permanent", "attempts", "errors", "failed_at")
        }
        conn.execute(
            stmt.on_conflict_do_update(
                index_elements=[dead_letters.c.source, dead_letters.c.event_id], set_=update_cols
            )
        )
    return True


def _filtered(query: Select[Any], source: str | None, older_than_days: float | None) -> Select[Any]:
    if source:
        query = query.where(dead_letters.c.source == source)
    if older_than_days is not None:
        cutoff = utcnow() - dt.timedelta(days=older_than_days)
        query = query.where(dead_letters.c.failed_at < cutoff)
    return query


def list_rows(
    engine: Engine,
    *,
    source: str | None = None,
    limit: int = 50,
    older_than_days: float | None = None,
) -> list[dict[str, Any]]:
    """Newest first, without bodies."""
    cols = [c for c in dead_letters.c if c.name not in ("body", "headers", "errors")]
    query = _filtered(select(*cols), source, older_than_days)
    query = query.order_by(dead_letters.c.failed_at.desc(), dead_letters.c.id.desc()).limit(limit)
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(query)]


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


def replay_ids(engine: Engine, ids: Sequence[int] | None, source: str | None) -> list[int]:
    """The ids to replay: the given ones, or every dead letter not already waiting for its
    replay (so running ``--all`` again after an interruption does not send twice)."""
    query = select(dead_letters.c.id).order_by(dead_letters.c.id)
    if ids is not None:
        query = query.where(dead_letters.c.id.in_(ids))
    else:
        query = query.where(
            or_(
                dead_letters.c.replayed_at.is_(None),
                dead_letters.c.replayed_at < dead_letters.c.failed_at,
            )
        )
    if source:
        query = query.where(dead_letters.c.source == source)
    with engine.connect() as conn:
        return [r.id for r in conn.execute(query)]


def replay(
    engine: Engine,
    redis: Redis,
    spec: JobSpec,
    ids: Sequence[int],
    on_each: Callable[[int, str], None] | None = None,
) -> Iterator[int]:
    """Queue each dead letter again as a fresh job (all attempts available); yields each id once
    queued and marked. The effects cannot apply twice: the worker's ``webhook_events`` row
    guards them however often an event is replayed."""
    queue = Queue(spec.queue, connection=redis, serializer=JobSerializer)
    for dl_id in ids:
        with engine.connect() as conn:
            row = conn.execute(select(dead_letters).where(dead_letters.c.id == dl_id)).first()
        if row is None:
            continue
        job = build_job(_envelope(row), spec)
        job.connection = redis
        queue.enqueue_job(job)
        with engine.begin() as conn:
            conn.execute(
                update(dead_letters)
                .where(dead_letters.c.id == dl_id)
                .values(replayed_at=utcnow(), replays=dead_letters.c.replays + 1)
            )
        if on_each:
            on_each(dl_id, job.id)
        yield dl_id


def purge(
    engine: Engine,
    ids: Sequence[int] | None,
    *,
    older_than_days: float | None = None,
    source: str | None = None,
) -> int:
    query = delete(dead_letters)
    if ids is not None:
        query = query.where(dead_letters.c.id.in_(ids))
    if source:
        query = query.where(dead_letters.c.source == source)
    if older_than_days is not None:
        query = query.where(
            dead_letters.c.failed_at < utcnow() - dt.timedelta(days=older_than_days)
        )
    with engine.begin() as conn:
        return int(conn.execute(query).rowcount)


def count(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(dead_letters)).scalar_one())
