"""Applying events: their effects and the record that they were processed, in one transaction.

The ``webhook_events`` rows are inserted first, in one statement, with ``ON CONFLICT DO
NOTHING``: an event whose row is already there was finished before (a redelivery after the
dedup window, a job re-run after a crash, two replays at once, a zombie worker racing its
successor) and nothing else happens. On PostgreSQL a concurrent insert of the same key waits
for the first transaction, then finds the row; on SQLite writers are serialised by the database
lock. Either way the handlers' effects commit with the row or not at all.

A dead-lettered event has a row too (status ``dead``), so an event is never both applied and
dead: whichever of the two commits its row first decides. Only an operator's replay takes a row
over: a dead letter's replay may turn ``dead`` into ``processed`` (and marks the dead letter
applied in the same transaction: it stays, for the record), a replay of an ignored event may
turn ``ignored`` into ``processed``; either way ``attempts`` counts the tries before it too.

The event log: the row keeps the attempts' errors and the remote address, ``event_steps`` the
timeline (each failed attempt, the outcome); while ``[archive] retention_days`` is not 0 the
body and the redacted headers go into ``event_bodies`` in the same transaction.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import Connection, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DataError, StatementError
from sqlalchemy.orm import Session

from shared import eventlog, telemetry
from shared.db import dead_letters, event_bodies, from_timestamp, utcnow, webhook_events
from shared.envelope import Envelope, Replay
from shared.errors import PermanentError
from workers.handlers import Event, Handler
from workers.parsing import to_event
from workers.payments import flush_payments
from workers.runtime import Runtime

Outcome = Literal["processed", "ignored", "duplicate"]
Key = tuple[str, str]


@dataclass(frozen=True)
class Delivery:
    """One run of one event: its envelope, which attempt this is, the earlier attempts'
    errors (``AttemptError.to_json()`` dicts) for the event log."""

    envelope: Envelope
    attempt: int
    errors: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class _Prepared:
    """An event parsed and matched with its handlers, before any database work."""

    delivery: Delivery
    event: Event
    handlers: list[Handler]

    @property
    def envelope(self) -> Envelope:
        return self.delivery.envelope

    @property
    def status(self) -> Outcome:
        return "processed" if self.handlers else "ignored"

    @property
    def key(self) -> Key:
        return (self.envelope.source, self.envelope.event_id)

    def row(self) -> dict[str, Any]:
        return {
            "source": self.envelope.source,
            "event_id": self.envelope.event_id,
            "event_type": self.event.type,
            "status": self.status,
            "attempts": self.delivery.attempt,
            "received_at": from_timestamp(self.envelope.received_at),
            "processed_at": utcnow(),
            "remote": (self.envelope.remote or "")[:64] or None,
            "errors": list(self.delivery.errors) or None,
        }


def _prepare(rt: Runtime, delivery: Delivery) -> _Prepared:
    envelope = delivery.envelope
    source = rt.settings.sources.get(envelope.source)
    if source is None:
        raise PermanentError(f"source {envelope.source!r} is no longer configured")
    event = to_event(envelope, source, delivery.attempt)
    handlers = rt.registry.for_event(event, builtins=rt.settings.worker.builtin_handlers)
    return _Prepared(delivery, event, handlers)


_dialects: dict[str, Any] = {"sqlite": sqlite, "postgresql": postgresql}


@functools.lru_cache(maxsize=16)
def _claim_statement(dialect_name: str, takeover: Replay | None) -> Any:
    """The INSERT of events' rows, built once: run with many rows at once (SQLAlchemy's
    "insertmanyvalues" turns them into multi-row statements, compiled once per size)."""
    stmt = _dialects[dialect_name].insert(webhook_events)
    keys = [webhook_events.c.source, webhook_events.c.event_id]
    if takeover is None:
        stmt = stmt.on_conflict_do_nothing(index_elements=keys)
    else:
        new = stmt.excluded
        stmt = stmt.on_conflict_do_update(
            index_elements=keys,
            set_={
                "status": new.status,
                "event_type": new.event_type,
                # every try counts, those before the replay too
                "attempts": webhook_events.c.attempts + new.attempts,
                "processed_at": new.processed_at,
                # the errors: the earlier ones, and this run's (added once they are known)
            },
            where=webhook_events.c.status == takeover,
        )
    return stmt.returning(
        webhook_events.c.id,
        webhook_events.c.source,
        webhook_events.c.event_id,
        webhook_events.c.attempts,
        webhook_events.c.errors,
    )


@dataclass(frozen=True)
class _Claimed:
    """A row inserted now or taken over: its id, and the tries before this run."""

    id: int
    before: int
    errors: list[dict[str, Any]]


def _claim(
    conn: Connection, items: Sequence[_Prepared], takeover: Replay | None
) -> dict[Key, _Claimed]:
    """Insert the rows of ``items``; the keys inserted now (or taken over from a ``takeover``
    row), with their row ids and the tries before this run (0 unless taken over)."""
    if not items:
        return {}
    stmt = _claim_statement(conn.dialect.name, takeover)
    result = conn.execute(stmt, [item.row() for item in items])
    attempt = {item.key: item.delivery.attempt for item in items}
    out = {}
    for r in result:
        key = (r.source, r.event_id)
        before = int(r.attempts) - attempt[key] if takeover else 0
        out[key] = _Claimed(r.id, before, list(r.errors or []) if takeover else [])
    return out


def _record_steps(
    conn: Connection, applied: Sequence[_Prepared], claimed: dict[Key, _Claimed], now: Any
) -> None:
    """The timeline of each event applied now: this run's failed attempts, then its outcome,
    numbered among every try of the event; a takeover's row gets this run's errors added."""
    steps = []
    for item in applied:
        got = claimed[item.key]
        errors = eventlog.renumber(item.delivery.errors, got.before)
        source, event_id = item.key
        steps += eventlog.failed_steps(source, event_id, errors)
        steps.append(
            eventlog.step(
                source, event_id, now, item.status, attempt=got.before + item.delivery.attempt
            )
        )
        if got.before and errors:  # a row taken over keeps its errors: this run's are added
            conn.execute(
                update(webhook_events)
                .where(webhook_events.c.id == got.id)
                .values(errors=got.errors + errors)
            )
    eventlog.add_steps(conn, steps)


def _apply_all(session: Session, items: Sequence[_Prepared], keep_bodies: bool) -> list[Outcome]:
    """Claim every event, then run the handlers of those claimed now, in order."""
    conn = session.connection()
    first: dict[Key, _Prepared] = {}
    for item in items:  # the same event twice in one batch: one row, applied once
        first.setdefault(item.key, item)
    unique = list(first.values())
    claimed: dict[Key, _Claimed] = {}
    for takeover in (None, "dead", "ignored"):
        claimed |= _claim(conn, [i for i in unique if i.envelope.replay == takeover], takeover)
    outcomes: list[Outcome] = []
    applied: list[_Prepared] = []
    tracing = telemetry.current()
    for item in items:
        if item.key not in claimed or first[item.key] is not item:
            outcomes.append("duplicate")
            continue
        if tracing is None:
            _handle(item, session)
        else:
            with tracing.child(item.key, "handle"):
                _handle(item, session)
        applied.append(item)
        outcomes.append(item.status)
    now = utcnow()
    revived = [i.key for i in applied if i.envelope.replay == "dead"]
    if revived:  # kept for the record, no longer among those to deal with
        conn.execute(
            update(dead_letters)
            .where(tuple_(dead_letters.c.source, dead_letters.c.event_id).in_(revived))
            .values(applied_at=now)
        )
    _record_steps(conn, applied, claimed, now)
    if keep_bodies and applied:
        _keep_bodies(conn, applied, {k: c.id for k, c in claimed.items()})
    flush_payments(session)
    return outcomes


def _handle(item: _Prepared, session: Session) -> None:
    for handler in item.handlers:
        handler(item.event, session)


def _keep_bodies(conn: Connection, applied: Sequence[_Prepared], ids: dict[Key, int]) -> None:
    rows = [
        {
            "event_pk": ids[item.key],
            "headers": [list(h) for h in item.envelope.headers],
            "body": item.envelope.body,
        }
        for item in applied
    ]
    conn.execute(_bodies_statement(conn.dialect.name), rows)


@functools.lru_cache(maxsize=4)
def _bodies_statement(dialect_name: str) -> Any:
    stmt = _dialects[dialect_name].insert(event_bodies)
    return stmt.on_conflict_do_nothing(index_elements=[event_bodies.c.event_pk])


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


def apply_events(rt: Runtime, deliveries: Sequence[Delivery]) -> list[Outcome]:
    """Apply events in one transaction (one commit for all): a batch, or one event. Raise
    ``PermanentError`` for what retrying cannot fix, anything else for what it may; any
    failure rolls back all of them, and the caller then applies each on its own, so one bad
    event never changes the outcome of another."""
    prepared = [_prepare(rt, delivery) for delivery in deliveries]
    keep = rt.settings.archive.retention_days > 0
    tracing = telemetry.current()
    with _permanent_database_errors(), Session(rt.engine) as session:
        if tracing is None:
            with session.begin():
                return _apply_all(session, prepared, keep)
        with session.begin() as transaction:
            outcomes = _apply_all(session, prepared, keep)
            with tracing.children("commit"):
                transaction.commit()
        return outcomes


def _first_line(err: object) -> str:
    return str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
