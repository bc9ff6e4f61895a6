"""Handlers the chaos run's workers load (``[worker] handlers = ["chaos.handlers"]``).

Every handler writes one ``chaos_effects`` row per run, deliberately not idempotent (no unique
key), inside the event's transaction: an effect applied twice shows as two rows. The sender
steers behaviour through a ``"chaos"`` field in the signed body:

- ``"fail_once"``: the first attempt raises a transient error (claimed atomically with an
  ``O_EXCL`` marker file, so exactly one attempt fails whichever worker runs it);
- ``"poison"``: a permanent ``PayloadError`` while ``$HOOKLINE_CHAOS_STATE/poison`` exists
  (the cause the operator "fixes" by removing it before replaying the dead letters);
- ``"slow"``: after its effect the handler sleeps ``$HOOKLINE_CHAOS_SLOW`` seconds inside the
  open transaction, with a ``slow_<pid>`` marker meanwhile, so the run can SIGSTOP or kill a
  worker at a known point: holding an uncommitted ``webhook_events`` row.

MonCash events go through the built-in payments handler too (a source with handlers of its own
replaces the built-ins, so this one calls it), so out-of-order statuses are checked on the real
``payments`` table.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.orm import Session

from hookline import Event, on
from shared.errors import PayloadError
from workers.builtin import moncash as builtin_moncash

STATE_ENV = "HOOKLINE_CHAOS_STATE"
SLOW_ENV = "HOOKLINE_CHAOS_SLOW"
DEFAULT_SLOW_SECONDS = 1.0

EFFECTS_TABLE_DDL = """
create table if not exists chaos_effects (
    id bigserial primary key,
    source text not null,
    event_id text not null,
    pid integer not null,
    attempt integer not null,
    at timestamptz not null default clock_timestamp()
)
"""

_INSERT_EFFECT = text(
    "insert into chaos_effects (source, event_id, pid, attempt) values (:s, :e, :p, :a)"
)


def state_dir() -> Path:
    return Path(os.environ.get(STATE_ENV, "/nonexistent"))


def marker_name(prefix: str, source: str, event_id: str) -> str:
    """A file name for an event, whatever characters its id holds."""
    digest = hashlib.sha256(f"{source}\0{event_id}".encode()).hexdigest()[:32]
    return f"{prefix}_{digest}"


def _directive(event: Event) -> str | None:
    data = event.data
    value = data.get("chaos") if isinstance(data, dict) else None
    return value if isinstance(value, str) else None


def _fail_once(event: Event) -> None:
    marker = state_dir() / marker_name("failed", event.source, event.event_id)
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return
    os.close(fd)
    raise RuntimeError("chaos: transient failure (once per event)")


def _slow(event: Event) -> None:
    marker = state_dir() / f"slow_{os.getpid()}"
    marker.write_text(f"{event.source}\n{event.event_id}\n")
    try:
        time.sleep(float(os.environ.get(SLOW_ENV, DEFAULT_SLOW_SECONDS)))
    finally:
        with contextlib.suppress(OSError):
            marker.unlink()


def _apply(
    event: Event, session: Session, builtin: Callable[[Event, Session], None] | None = None
) -> None:
    directive = _directive(event)
    if directive == "fail_once":
        _fail_once(event)
    if directive == "poison" and (state_dir() / "poison").exists():
        raise PayloadError("chaos poison: this event cannot be processed until the cause is fixed")
    if builtin is not None:
        builtin(event, session)
    session.execute(
        _INSERT_EFFECT,
        {"s": event.source, "e": event.event_id, "p": os.getpid(), "a": event.attempt},
    )
    if directive == "slow":
        _slow(event)


@on("moncash")
def moncash(event: Event, session: Session) -> None:
    _apply(event, session, builtin_moncash)


@on("flaky")
def flaky(event: Event, session: Session) -> None:
    _apply(event, session)


@on("poison")
def poison(event: Event, session: Session) -> None:
    _apply(event, session)
