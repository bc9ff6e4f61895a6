"""Applying events at their edges, as a worker run leaves them: what an event's row keeps
(its type, remote address, earlier attempts' errors), the attempt handlers are told, the
settings that change what is applied or kept, an event twice in one batch, and the reason a
value the database cannot store gives its dead letter.

On SQLite, with hookline's worker in burst mode. Built on ``tests.test_worker``'s delivery and
burst-worker helpers.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from shared.config import Settings
from shared.db import dead_letters, event_bodies, payments, webhook_events
from shared.enqueue import JobSpec, claim
from shared.envelope import Envelope
from tests import test_worker
from tests.helpers import make_settings
from workers import runtime
from workers.effects import Delivery, apply_events
from workers.handlers import REGISTRY, Event
from workers.payments import record_payment

state = test_worker.state
engine = test_worker.engine
deliver = test_worker.deliver
run_worker = test_worker.run_worker
rows = test_worker.rows

#: test_worker's sources, and one whose handler each test sets itself
SOURCES = {
    **test_worker.TEST_SOURCES,
    "custom": {
        "scheme": "hmac",
        "secrets": ["c"],
        "event_id": "json:id",
        "event_type": "json:type",
    },
}


@pytest.fixture
def database_url(sqlite_url: str) -> str:
    return sqlite_url


def worker_settings(redis_url: str, database_url: str, **sections: dict[str, Any]) -> Settings:
    worker = {"handlers": ["tests.handlers_for_tests"], "max_attempts": 3, "backoff_seconds": [0]}
    worker |= sections.pop("worker", {})
    return make_settings(redis_url, database_url, sources=SOURCES, worker=worker, **sections)


@pytest.fixture
def settings(redis_url: str, database_url: str, state: Path) -> Settings:
    return worker_settings(redis_url, database_url)


def event_body(event_id: str, type_: str = "x") -> bytes:
    return json.dumps({"id": event_id, "type": type_}).encode()


def letter(engine: Engine, event_id: str) -> dict[str, Any]:
    [found] = [d for d in rows(engine, dead_letters) if d["event_id"] == event_id]
    return found


def test_a_processed_event_keeps_its_type_remote_address_and_earlier_errors(
    redis_client: redis.Redis, settings: Settings, engine: Engine, state: Path
) -> None:
    # Given an event from a long remote address whose handler fails once
    (state / "fail_f-1").write_text("1")
    env = Envelope("flaky", "f-1", time.time(), (), event_body("f-1", "thing.done"), "r" * 70)
    claim(redis_client, env, JobSpec.from_settings(settings))
    # When a worker runs it, and later an event from no known address that succeeds at once
    run_worker(redis_client, settings)
    deliver(redis_client, settings, "flaky", body=event_body("f-2"))
    run_worker(redis_client, settings)
    # Then the first one's row has its type, the first 64 characters of its address and the
    # error of its failed attempt; the second one's neither an address nor errors
    first, second = sorted(rows(engine, webhook_events), key=lambda e: e["event_id"])
    assert (first["status"], first["event_type"], first["remote"]) == (
        "processed",
        "thing.done",
        "r" * 64,
    )
    assert [(e["attempt"], e["error"]) for e in first["errors"]] == [
        (1, "RuntimeError: transient failure, 0 more to come")
    ]
    assert (second["status"], second["remote"], second["errors"]) == ("processed", None, None)


def test_handlers_are_told_which_attempt_they_run(
    redis_client: redis.Redis,
    settings: Settings,
    engine: Engine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a handler that fails on its first attempt
    seen: list[int] = []

    def handler(event: Event, _session: Session) -> None:
        seen.append(event.attempt)
        if event.attempt == 1:
            raise RuntimeError("first attempt")

    monkeypatch.setitem(REGISTRY.by_source, ("custom", "*"), [handler])
    deliver(redis_client, settings, "custom", body=event_body("c-1"))
    # When a worker runs its event
    run_worker(redis_client, settings)
    # Then the handler saw attempt 1, then attempt 2, which applied it
    assert seen == [1, 2]
    [event] = rows(engine, webhook_events)
    assert (event["status"], event["attempts"]) == ("processed", 2)


def test_an_event_of_a_source_no_longer_configured_is_dead_lettered_at_once(
    redis_client: redis.Redis, settings: Settings, engine: Engine, state: Path
) -> None:
    # Given an event queued for a source, then the source removed from the configuration
    deliver(redis_client, settings, "custom", body=event_body("gone-1"))
    sources = {k: v for k, v in SOURCES.items() if k != "custom"}
    runtime.configure(
        make_settings(
            settings.redis_url,
            settings.database_url,
            sources=sources,
            worker={"max_attempts": 3, "backoff_seconds": [0]},
        )
    )
    # When a worker runs it
    run_worker(redis_client, settings)
    # Then it is dead-lettered after one attempt, permanently, naming the source
    dl = letter(engine, "gone-1")
    assert dl["reason"] == "PermanentError: source 'custom' is no longer configured"
    assert (dl["permanent"], dl["attempts"]) == (1, 1)


def test_without_builtin_handlers_payment_events_are_ignored(
    redis_client: redis.Redis, redis_url: str, database_url: str, state: Path, engine: Engine
) -> None:
    # Given the built-in payment handlers turned off
    off = worker_settings(redis_url, database_url, worker={"builtin_handlers": False})
    runtime.configure(off)
    deliver(redis_client, off, "moncash", n=1)
    # When a worker runs a MonCash payment event
    run_worker(redis_client, off)
    # Then it is recorded as ignored, and no payment is
    assert [e["status"] for e in rows(engine, webhook_events)] == ["ignored"]
    assert rows(engine, payments) == []


def test_bodies_are_kept_with_a_retention_of_one_day(
    redis_client: redis.Redis, redis_url: str, database_url: str, state: Path, engine: Engine
) -> None:
    # Given bodies kept for one day
    one_day = worker_settings(redis_url, database_url, archive={"retention_days": 1})
    runtime.configure(one_day)
    deliver(redis_client, one_day, "flaky", body=event_body("kept-1"))
    # When a worker applies an event
    run_worker(redis_client, one_day)
    # Then its body is kept
    with engine.connect() as conn:
        assert conn.execute(select(event_bodies.c.body)).scalars().all() == [event_body("kept-1")]


def test_an_event_twice_in_one_batch_is_applied_once_and_the_next_one_still_is(
    settings: Settings, engine: Engine, state: Path
) -> None:
    # Given a batch with one event twice, then another event
    def delivery(event_id: str) -> Delivery:
        return Delivery(Envelope("flaky", event_id, time.time(), (), event_body(event_id)), 1)

    batch = [delivery("b-1"), delivery("b-1"), delivery("b-2")]
    # When it is applied
    outcomes = apply_events(runtime.current(), batch)
    # Then the second copy is a duplicate, and each event has applied its effect once
    assert outcomes == ["processed", "duplicate", "processed"]
    assert sorted(p["event_id"] for p in rows(engine, payments)) == ["b-1", "b-2"]


class _NoFloat:
    """A value whose conversion to a number fails with an error that says nothing."""

    def __float__(self) -> float:
        raise ValueError()


@pytest.mark.parametrize(
    "value, why",
    [
        ("12,50", "could not convert string to float: '12,50'"),
        # the first 200 characters of the error's first line
        ("x" * 300, ("could not convert string to float: '" + "x" * 300)[:200]),
        # an error without a message is named by its type
        (_NoFloat(), "ValueError"),
    ],
)
def test_a_value_the_database_cannot_store_dead_letters_the_event_at_once_saying_why(
    redis_client: redis.Redis,
    settings: Settings,
    engine: Engine,
    monkeypatch: pytest.MonkeyPatch,
    value: Any,
    why: str,
) -> None:
    # Given a handler that records a payment with an amount SQLite cannot take as a number
    def handler(event: Event, session: Session) -> None:
        record_payment(
            session,
            source=event.source,
            ref="R",
            status="completed",
            event_id=event.event_id,
            amount_=value,
            currency_=None,
        )

    monkeypatch.setitem(REGISTRY.by_source, ("custom", "*"), [handler])
    deliver(redis_client, settings, "custom", body=event_body("v-1"))
    # When a worker runs its event
    run_worker(redis_client, settings)
    # Then it is dead-lettered after one attempt, permanently, with the reason
    dl = letter(engine, "v-1")
    assert dl["reason"] == f"PermanentError: value cannot be stored: {why}"
    assert (dl["permanent"], dl["attempts"]) == (1, 1)
    assert rows(engine, payments) == []
