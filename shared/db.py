"""The database schema (SQLAlchemy Core tables) and engine construction.

SQLite by default, PostgreSQL in production. The schema itself is created and migrated by
Alembic (``hookline db upgrade``); :data:`metadata` is its single source of truth.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Engine,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    func,
    select,
)
from sqlalchemy.engine import make_url

# constraint names fixed so Alembic migrations are the same on every backend
metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "pk": "pk_%(table_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    }
)

_ID = BigInteger().with_variant(Integer, "sqlite")  # SQLite autoincrements INTEGER only

webhook_events = Table(
    "webhook_events",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("source", String(64), nullable=False),
    Column("event_id", String(255), nullable=False),
    Column("event_type", String(255)),
    # processed | ignored (no handler) | dead (dead-lettered: see dead_letters)
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
    # when the worker finished it: processed, ignored or dead-lettered
    Column("processed_at", DateTime(timezone=True), nullable=False),
    Column("remote", String(64)),
    # the failed attempts before this outcome: [{"attempt", "at", "error", "permanent"}...]
    Column("errors", JSON(none_as_null=True)),
    UniqueConstraint("source", "event_id"),
    # the event log's filters, each newest first (keyset pagination on id)
    Index(None, "source", "id"),
    Index(None, "status", "id"),
    Index(None, "event_type", "id"),
    Index(None, "received_at"),
)

#: the event log's bodies: one row per processed or ignored event while ``[archive]
#: retention_days`` keeps it (the bodies of dead events stay in ``dead_letters``). A table of its
#: own so listing events never reads a body and old bodies go by deleting rows in chunks.
event_bodies = Table(
    "event_bodies",
    metadata,
    Column(
        "event_pk",
        _ID,
        ForeignKey("webhook_events.id", ondelete="CASCADE"),
        primary_key=True,
        autoincrement=False,
    ),
    Column("headers", JSON, nullable=False),  # [[name, value], ...] with signatures redacted
    Column("body", LargeBinary, nullable=False),
)

#: the event log's timeline: every step of an event after it was received, in the order taken
#: (a row per failed attempt, dead-lettering, replay asked for, and outcome). Appended in the
#: transactions that take the steps; never updated. Events finished before revision 0003 have
#: none: their timeline is read from their row (``shared.eventlog``).
event_steps = Table(
    "event_steps",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("source", String(64), nullable=False),
    Column("event_id", String(255), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    # failed | dead-lettered | replay | processed | ignored
    Column("step", String(16), nullable=False),
    # the try this step belongs to, counting every try of the event (replays included)
    Column("attempt", Integer),
    Column("permanent", Integer),  # a failed attempt: 1 if retrying could not help
    Column("error", Text),  # a failed attempt's error, one line
    Column("dead_letter_id", BigInteger),  # dead-lettered as, or replayed from
    Column("by", String(16)),  # a replay: who asked (cli, console, api)
    Index(None, "source", "event_id", "id"),
)

payments = Table(
    "payments",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("source", String(64), nullable=False),
    Column("reference", String(255), nullable=False),
    Column("status", String(32), nullable=False),
    # rank of ``status``: an update applies only when it moves the rank forward
    Column("status_rank", Integer, nullable=False),
    Column("amount", Numeric(20, 4)),
    Column("currency", String(8)),
    Column("event_id", String(255), nullable=False),  # the event that set the current status
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("source", "reference"),
)

dead_letters = Table(
    "dead_letters",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("source", String(64), nullable=False),
    Column("event_id", String(255), nullable=False),
    Column("event_type", String(255)),
    Column("reason", Text, nullable=False),  # the last error, one line
    Column("permanent", Integer, nullable=False),  # 1: failed permanently; 0: out of attempts
    Column("attempts", Integer, nullable=False),
    Column("errors", JSON, nullable=False),  # [{"attempt", "at", "error", "permanent"}...]
    Column("headers", JSON, nullable=False),  # [[name, value], ...] with signatures redacted
    Column("body", LargeBinary, nullable=False),
    Column("remote", String(64)),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("failed_at", DateTime(timezone=True), nullable=False),
    Column("replayed_at", DateTime(timezone=True)),
    Column("replays", Integer, nullable=False, default=0),
    # when a replay applied the event: the dead letter stays, for the record (listed with the
    # replayed ones, left out of the dead letters still to deal with)
    Column("applied_at", DateTime(timezone=True)),
    UniqueConstraint("source", "event_id"),
    Index(None, "failed_at"),
    # ids are never reused on SQLite either: an operator's "dlq replay 7" always means one event
    sqlite_autoincrement=True,
)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def from_timestamp(ts: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, dt.UTC)


def make_engine(url: str, *, lock_timeout_ms: int | None = None, **kwargs: Any) -> Engine:
    """An engine with the settings each backend needs.

    SQLite: a busy timeout so concurrent workers wait for the write lock instead of failing,
    and WAL so readers (``hookline dlq list``) never block the workers.
    PostgreSQL: a small pool (each worker runs one job at a time) with pre-ping, so a restarted
    server costs one retried job rather than a dead worker; ``lock_timeout_ms`` bounds how long
    a statement waits for a row another transaction holds (see ``workers.runtime``).
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(url, connect_args={"timeout": 30}, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            if parsed.database not in (None, "", ":memory:"):
                cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        return engine
    if parsed.get_backend_name() == "postgresql" and parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    kwargs.setdefault("pool_size", 2)
    kwargs.setdefault("max_overflow", 2)
    kwargs.setdefault("pool_pre_ping", True)
    if lock_timeout_ms is not None:
        kwargs.setdefault("connect_args", {})["options"] = f"-c lock_timeout={lock_timeout_ms}"
    return create_engine(parsed, **kwargs)


def dead_letter_count(engine: Engine) -> int:
    """Rows in ``dead_letters`` (replayed ones included, as ``hookline status`` counts them)."""
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(dead_letters)).scalar_one())


def as_utc(value: dt.datetime) -> dt.datetime:
    """SQLite returns naive datetimes: they were stored in UTC."""
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
