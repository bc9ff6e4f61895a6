"""Applying events: their effects and the record that they were processed, in one transaction.

The ``webhook_events`` rows are inserted first, in one statement, with ``ON CONFLICT DO
NOTHING``: an event whose row is already there was applied before (a redelivery after the
dedup window, a job re-run after a crash, two replays at once) and nothing else happens. On
PostgreSQL a concurrent insert of the same key waits for the first transaction, then finds
the row; on SQLite writers are serialised by the database lock. Either way the handlers'
effects commit with the row or not at all.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import Connection, delete
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DataError, StatementError
from sqlalchemy.orm import Session

from shared.db import dead_letters, from_timestamp, utcnow, webhook_events
from shared.envelope import Envelope
from shared.errors import PermanentError
from workers.handlers import Event, Handler
from workers.parsing import to_event
from workers.payments import flush_payments
from workers.runtime import Runtime

Outcome = Literal["processed", "ignored", "duplicate"]


@dataclass(frozen=True)
class _Prepared:
    """An event parsed and matched with its handlers, before any database work."""

    envelope: Envelope
    event: Event
    handlers: list[Handler]

    @property
    def status(self) -> Outcome:
        return "processed" if self.handlers else "ignored"

    @property
    def key(self) -> tuple[str, str]:
        return (self.envelope.source, self.envelope.event_id)

    def row(self) -> dict[str, Any]:
        return {
            "source": self.envelope.source,
            "event_id": self.envelope.event_id,
            "event_type": self.event.type,
            "status": self.status,
            "attempts": self.event.attempt,
            "received_at": from_timestamp(self.envelope.received_at),
            "processed_at": utcnow(),
        }


def _prepare(rt: Runtime, envelope: Envelope, attempt: int) -> _Prepared:
    source = rt.settings.sources.get(envelope.source)
    if source is None:
        raise PermanentError(f"source {envelope.source!r} is no longer configured")
    event = to_event(envelope, source, attempt)
    handlers = rt.registry.for_event(event, builtins=rt.settings.worker.builtin_handlers)
    return _Prepared(envelope, event, handlers)


def _claim_rows(conn: Connection, items: Sequence[_Prepared]) -> set[tuple[str, str]]:
    """Insert the events' rows in one statement; the keys inserted now (not seen before)."""
    dialect = sqlite if conn.dialect.name == "sqlite" else postgresql
    stmt = (
        dialect.insert(webhook_events)
        .values([item.row() for item in items])
        .on_conflict_do_nothing(index_elements=[webhook_events.c.source, webhook_events.c.event_id])
        .returning(webhook_events.c.source, webhook_events.c.event_id)
    )
    return {(r.source, r.event_id) for r in conn.execute(stmt)}


def _apply_all(session: Session, items: Sequence[_Prepared]) -> list[Outcome]:
    """Claim every event, then run the handlers of those claimed now, in order."""
    conn = session.connection()
    claimed = _claim_rows(conn, items)
    outcomes: list[Outcome] = []
    for item in items:
        if item.key not in claimed:
            outcomes.append("duplicate")
            continue
        claimed.discard(item.key)  # the same event twice in one batch applies once
        for handler in item.handlers:
            handler(item.event, session)
        if item.envelope.replay:
            conn.execute(
                delete(dead_letters).where(
                    dead_letters.c.source == item.envelope.source,
                    dead_letters.c.event_id == item.envelope.event_id,
                )
            )
        outcomes.append(item.status)
    flush_payments(session)
    return outcomes


@contextmanager
def _permanent_database_errors() -> Iterator[None]:
    """Values the database refuses (NUL in PostgreSQL text, a number out of range) are
    permanent: retrying the same payload cannot succeed."""
    try:
        yield
    except DataError as err:
        raise PermanentError(f"database rejected a value: {_first_line(err.orig)}") from err
    except StatementError as err:
        if isinstance(err.orig, UnicodeError | ValueError):
            raise PermanentError(f"value cannot be stored: {_first_line(err.orig)}") from err
        raise


def apply_event(rt: Runtime, envelope: Envelope, attempt: int) -> Outcome:
    """Parse and apply ``envelope`` exactly once, in its own transaction; raise
    ``PermanentError`` for what retrying cannot fix, anything else for what it may."""
    return apply_events(rt, [(envelope, attempt)])[0]


def apply_events(rt: Runtime, items: Sequence[tuple[Envelope, int]]) -> list[Outcome]:
    """Apply several events in one transaction (one commit for all): the fast path for a
    batch. Any failure rolls back all of them; the caller then applies each on its own, so
    one bad event never changes the outcome of another."""
    prepared = [_prepare(rt, envelope, attempt) for envelope, attempt in items]
    with _permanent_database_errors(), Session(rt.engine) as session, session.begin():
        return _apply_all(session, prepared)


def _first_line(err: object) -> str:
    return str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
