"""Applying one event: its effects and the record that it was processed, in one transaction.

The ``webhook_events`` row is inserted first with ``ON CONFLICT DO NOTHING``: if it is already
there, the event was applied before (a redelivery after the dedup window, a job re-run after
a crash, two replays at once) and nothing else happens. On PostgreSQL a concurrent insert of
the same key waits for the first transaction, then finds the row; on SQLite writers are
serialised by the database lock. Either way the handlers' effects commit with the row or not
at all.
"""

from __future__ import annotations

from typing import Literal

from sqlalchemy import Connection, delete
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DataError, StatementError
from sqlalchemy.orm import Session

from shared.db import dead_letters, from_timestamp, utcnow, webhook_events
from shared.envelope import Envelope
from shared.errors import PermanentError
from workers.parsing import to_event
from workers.runtime import Runtime

Outcome = Literal["processed", "ignored", "duplicate"]


def _claim_row(
    conn: Connection, *, event_type: str | None, status: str, envelope: Envelope, attempt: int
) -> bool:
    dialect = sqlite if conn.dialect.name == "sqlite" else postgresql
    stmt = (
        dialect.insert(webhook_events)
        .values(
            source=envelope.source,
            event_id=envelope.event_id,
            event_type=event_type,
            status=status,
            attempts=attempt,
            received_at=from_timestamp(envelope.received_at),
            processed_at=utcnow(),
        )
        .on_conflict_do_nothing(index_elements=[webhook_events.c.source, webhook_events.c.event_id])
        .returning(webhook_events.c.id)
    )
    return conn.execute(stmt).first() is not None


def apply_event(rt: Runtime, envelope: Envelope, attempt: int) -> Outcome:
    """Parse and apply ``envelope`` exactly once; raise ``PermanentError`` for what retrying
    cannot fix, anything else for what it may."""
    source = rt.settings.sources.get(envelope.source)
    if source is None:
        raise PermanentError(f"source {envelope.source!r} is no longer configured")
    event = to_event(envelope, source, attempt)
    handlers = rt.registry.for_event(event, builtins=rt.settings.worker.builtin_handlers)
    status = "processed" if handlers else "ignored"
    try:
        with Session(rt.engine) as session, session.begin():
            conn = session.connection()
            if not _claim_row(
                conn, event_type=event.type, status=status, envelope=envelope, attempt=attempt
            ):
                return "duplicate"
            for handler in handlers:
                handler(event, session)
            if envelope.replay:
                conn.execute(
                    delete(dead_letters).where(
                        dead_letters.c.source == envelope.source,
                        dead_letters.c.event_id == envelope.event_id,
                    )
                )
    except DataError as err:
        # the database refuses a value (NUL in PostgreSQL text, a number out of range)
        raise PermanentError(f"database rejected a value: {_first_line(err.orig)}") from err
    except StatementError as err:
        if isinstance(err.orig, UnicodeError | ValueError):
            raise PermanentError(f"value cannot be stored: {_first_line(err.orig)}") from err
        raise
    return status  # type: ignore[return-value]


def _first_line(err: object) -> str:
    return str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
