"""The workers as users see them: rows, payments, dead letters, queue contents.

Events are queued with the ingress's own claim-and-enqueue script on a real Redis, and run by
hookline's RQ worker in burst mode, on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from multidict import CIMultiDict
from sqlalchemy import Engine, select

from shared import keys
from shared.config import Settings
from shared.db import dead_letters, payments, webhook_events
from shared.enqueue import JobSpec, claim
from shared.envelope import Envelope, redact_headers
from shared.locators import locate
from tests.helpers import SOURCES, make_settings, signed
from workers import deadletters, runtime
from workers.worker import EventWorker, drain, queues_for

TEST_SOURCES = {
    "moncash": SOURCES["moncash"],
    "nowallet": SOURCES["nowallet"],
    "helloasso": SOURCES["helloasso"],
    "github": SOURCES["github"],
    "flaky": {"scheme": "hmac", "secrets": ["f"], "event_id": "json:id", "event_type": "json:type"},
    "poison": {
        "scheme": "hmac",
        "secrets": ["p"],
        "event_id": "json:id",
        "event_type": "json:type",
    },
}


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HOOKLINE_TEST_STATE", str(tmp_path))
    return tmp_path


@pytest.fixture
def settings(redis_url: str, database_url: str, state: Path) -> Settings:
    return make_settings(
        redis_url,
        database_url,
        sources=TEST_SOURCES,
        worker={
            "handlers": ["tests.handlers_for_tests"],
            "max_attempts": 3,
            "backoff_seconds": [0],
        },
    )


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    rt = runtime.configure(settings)
    yield rt.engine
    rt.engine.dispose()


def deliver(
    client: redis.Redis,
    settings: Settings,
    source: str,
    body: bytes | None = None,
    shard: keys.Shard = keys.UNSHARDED,
    **kw: Any,
) -> str:
    """What the ingress does for an authentic delivery; returns the event id."""
    body, headers, _ = signed(settings, source, body=body, **kw)
    src = settings.sources[source]
    event_id = locate(src.event_id, CIMultiDict(headers), body)
    assert event_id is not None
    env = Envelope(
        source=source,
        event_id=event_id,
        received_at=time.time(),
        headers=redact_headers(headers.items(), src.scheme.sensitive()),
        body=body,
    )
    claim(client, env, JobSpec.from_settings(settings), shard=shard)
    return event_id


def run_worker(client: redis.Redis, settings: Settings) -> None:
    queues = queues_for(settings, [], client)
    drain(EventWorker(queues, connection=client), queues)


def rows(engine: Engine, table: Any) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(select(table).order_by(table.c.id))]


def body_of(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc).encode()


def test_events_are_applied_once_with_their_payments(
    redis_client: redis.Redis, settings: Settings, engine: Engine
) -> None:
    # Given payment events from the three built-in providers and one without a handler
    ids = [deliver(redis_client, settings, "moncash", n=i) for i in range(3)]
    ids.append(deliver(redis_client, settings, "nowallet", n=1))
    ids.append(deliver(redis_client, settings, "helloasso", n=1))
    ids.append(deliver(redis_client, settings, "github", n=1))
    # When a worker drains the queue
    run_worker(redis_client, settings)
    # Then each event has its row and the payment providers' events their payment
    events = rows(engine, webhook_events)
    assert sorted(e["event_id"] for e in events) == sorted(ids)
    statuses = {e["source"]: e["status"] for e in events}
    assert statuses["github"] == "ignored" and statuses["moncash"] == "processed"
    pays = rows(engine, payments)
    assert sorted(p["source"] for p in pays) == [
        "helloasso",
        "moncash",
        "moncash",
        "moncash",
        "nowallet",
    ]
    assert all(p["status"] == "completed" for p in pays)
    nowallet = next(p for p in pays if p["source"] == "nowallet")
    assert (float(nowallet["amount"]), nowallet["currency"]) == (10000.0, "XOF")
    helloasso = next(p for p in pays if p["source"] == "helloasso")
    assert float(helloasso["amount"]) == 25.0  # HelloAsso sends cents
    assert queues_for(settings, [], redis_client)[0].count == 0


def test_a_job_run_twice_applies_its_effects_once(
    redis_client: redis.Redis, settings: Settings, engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    # Given an event processed once
    deliver(redis_client, settings, "moncash", n=1)
    queue = queues_for(settings, [], redis_client)[0]
    job = queue.jobs[0]
    run_worker(redis_client, settings)
    # When the same job runs again (a crash after commit, before RQ recorded success)
    queue.enqueue_job(job)
    with caplog.at_level(logging.INFO, logger="hookline.worker"):
        run_worker(redis_client, settings)
    # Then there is still one row and one payment, the second run says "duplicate", and the
    # job has left Redis as the first run's did
    assert len(rows(engine, webhook_events)) == 1
    assert len(rows(engine, payments)) == 1
    assert "event moncash/evt_000000000001 duplicate (attempt 1)" in caplog.text
    assert not redis_client.exists(job.key)


def test_redelivery_after_the_dedup_window_changes_nothing(
    redis_client: redis.Redis, settings: Settings, engine: Engine
) -> None:
    body = body_of({"id": "evt_1", "event": "payment.completed", "reference": "R1", "amount": 10})
    deliver(redis_client, settings, "moncash", body=body)
    run_worker(redis_client, settings)
    # the claim expired: the ingress queues the redelivery again
    from shared import keys

    for key in redis_client.scan_iter(keys.CLAIM + "*"):
        redis_client.delete(key)
    deliver(redis_client, settings, "moncash", body=body)
    assert queues_for(settings, [], redis_client)[0].count == 1
    run_worker(redis_client, settings)
    assert len(rows(engine, webhook_events)) == 1
    assert [(p["reference"], p["status"]) for p in rows(engine, payments)] == [("R1", "completed")]


@pytest.mark.parametrize(
    "order, final",
    [
        (["payment.completed", "payment.failed"], "completed"),
        (["payment.failed", "payment.completed"], "completed"),
        (["payment.pending", "payment.failed"], "failed"),
        (["payment.completed", "payment.pending"], "completed"),
    ],
)
def test_payment_status_never_moves_backwards(
    redis_client: redis.Redis, settings: Settings, engine: Engine, order: list[str], final: str
) -> None:
    for i, event in enumerate(order):
        body = body_of({"id": f"evt_{i}", "event": event, "reference": "ORD-1", "amount": 100})
        deliver(redis_client, settings, "moncash", body=body)
        run_worker(redis_client, settings)
    [payment] = rows(engine, payments)
    assert payment["status"] == final


def test_a_handler_failing_twice_then_succeeding_applies_once(
    redis_client: redis.Redis, settings: Settings, engine: Engine, state: Path
) -> None:
    # Given a handler that fails twice for this event, then succeeds
    (state / "fail_f-1").write_text("2")
    deliver(redis_client, settings, "flaky", body=b'{"id": "f-1", "type": "x"}')
    # When the worker drains (backoff 0: the retries are due at once)
    run_worker(redis_client, settings)
    # Then the effect happened once, on the third attempt, and nothing is dead
    [event] = rows(engine, webhook_events)
    assert (event["status"], event["attempts"]) == ("processed", 3)
    assert len(rows(engine, payments)) == 1
    assert rows(engine, dead_letters) == []


def test_a_handler_that_keeps_failing_is_dead_lettered_with_every_error(
    redis_client: redis.Redis, settings: Settings, engine: Engine, state: Path
) -> None:
    (state / "fail_f-2").write_text("99")
    deliver(redis_client, settings, "flaky", body=b'{"id": "f-2", "type": "x"}')
    run_worker(redis_client, settings)
    # Then the event is recorded dead, not applied, and its dead letter holds every error
    [event] = rows(engine, webhook_events)
    assert (event["status"], event["attempts"]) == ("dead", 3)
    assert rows(engine, payments) == []
    [dl] = rows(engine, dead_letters)
    assert (dl["source"], dl["event_id"], dl["attempts"], dl["permanent"]) == ("flaky", "f-2", 3, 0)
    assert [e["attempt"] for e in dl["errors"]] == [1, 2, 3]
    assert "transient failure" in dl["reason"]
    assert dl["body"] == b'{"id": "f-2", "type": "x"}'
    # RQ's own failed registry knows the job too
    assert queues_for(settings, [], redis_client)[0].failed_job_registry.count == 1


def test_poison_is_dead_lettered_at_once_and_replayed_once_fixed(
    redis_client: redis.Redis, settings: Settings, engine: Engine, state: Path
) -> None:
    # Given a poison event
    (state / "poison").write_text("")
    deliver(redis_client, settings, "poison", body=b'{"id": "p-1", "type": "x"}')
    run_worker(redis_client, settings)
    # Then it is in the dead letters after one attempt, marked permanent
    [listed] = deadletters.list_page(engine).rows
    assert (listed["event_id"], listed["attempts"], listed["permanent"]) == ("p-1", 1, 1)
    # When its cause is fixed and two operators replay it at the same moment
    (state / "poison").unlink()
    spec = JobSpec.from_settings(settings)
    barrier = threading.Barrier(2)

    def replay() -> None:
        barrier.wait()
        list(deadletters.replay(engine, redis_client, spec, [listed["id"]], by="cli"))

    threads = [threading.Thread(target=replay) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert queues_for(settings, [], redis_client)[0].count == 2
    run_worker(redis_client, settings)
    # Then the effect happened once, the event's row moved from dead to processed (its two
    # tries counted) and the dead letter is resolved: applied, kept for the record, no longer
    # among those to deal with
    [event] = rows(engine, webhook_events)
    assert (event["status"], event["attempts"]) == ("processed", 2)
    assert len(rows(engine, payments)) == 1
    [kept] = rows(engine, dead_letters)
    assert kept["id"] == listed["id"] and kept["applied_at"] is not None
    assert deadletters.list_page(engine).rows == []


@pytest.mark.parametrize(
    "body, reason",
    [
        (b"[" * 100_000 + b"]" * 100_000, "nested"),
        (b'{"id": "x", "n": ' + b"9" * 5000 + b"}", "invalid JSON"),
        (b'{"id": "x", "n": NaN}', "NaN"),
        (b'{"id": "x", "id": "y"}', "duplicate key"),
        (b'{"id": "x", "s": "\\ud800"}', "surrogate"),
        (b'{"id": "x", "s": "a\\u0000b"}', "NUL"),
        (b'{"id": "x", "s": "\xff\xfe"}', "UTF-8"),
    ],
)
def test_bodies_that_break_parsers_are_dead_lettered_with_a_reason(
    redis_client: redis.Redis, settings: Settings, engine: Engine, body: bytes, reason: str
) -> None:
    # the event id comes from the body's sha256 here, so every body is accepted at the door
    sources = {"hostile": {"scheme": "hmac", "secrets": ["h"], "event_type": "json:type"}}
    hostile = make_settings(
        settings.redis_url,
        settings.database_url,
        sources=sources,
        worker={"max_attempts": 3, "backoff_seconds": [0]},
    )
    runtime.configure(hostile)
    deliver(redis_client, hostile, "hostile", body=body)
    run_worker(redis_client, hostile)
    [dl] = rows(engine, dead_letters)
    assert reason in dl["reason"]
    assert (dl["attempts"], dl["permanent"]) == (1, 1)
    assert dl["body"] == body


def test_bad_amount_is_a_permanent_error(
    redis_client: redis.Redis, settings: Settings, engine: Engine
) -> None:
    body = body_of(
        {"id": "evt_bad", "event": "payment.completed", "reference": "R", "amount": "lots"}
    )
    deliver(redis_client, settings, "moncash", body=body)
    run_worker(redis_client, settings)
    [dl] = rows(engine, dead_letters)
    assert "amount" in dl["reason"] and dl["attempts"] == 1
    assert rows(engine, payments) == []


def test_concurrent_runs_of_one_event_apply_it_once(
    redis_client: redis.Redis, settings: Settings, engine: Engine
) -> None:
    # Given one event whose job is run by four workers at the same moment (replays racing,
    # a zombie worker and its successor)
    from workers.effects import Delivery, apply_events

    rt = runtime.current()
    env = Envelope(
        source="flaky",
        event_id="race-1",
        received_at=time.time(),
        headers=(),
        body=b'{"id": "race-1", "type": "x"}',
    )
    barrier = threading.Barrier(4)
    outcomes: list[str] = []

    def run() -> None:
        barrier.wait()
        outcomes.extend(apply_events(rt, [Delivery(env, 1)]))

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Then exactly one applied it and the others saw it done
    assert sorted(outcomes) == ["duplicate"] * 3 + ["processed"]
    assert len(rows(engine, payments)) == 1


@pytest.mark.parametrize(
    "order, final, event_of_final",
    [
        (["payment.pending", "payment.completed", "payment.failed"], "completed", 1),
        (["payment.completed", "payment.completed", "payment.pending"], "completed", 0),
        (["payment.failed", "payment.pending"], "failed", 0),
    ],
)
def test_status_never_moves_backwards_within_one_batch(
    redis_client: redis.Redis,
    settings: Settings,
    engine: Engine,
    order: list[str],
    final: str,
    event_of_final: int,
) -> None:
    # Given several events for one payment queued together (one worker batch)
    for i, event in enumerate(order):
        body = body_of({"id": f"evt_{i}", "event": event, "reference": "ORD-B", "amount": 100})
        deliver(redis_client, settings, "moncash", body=body)
    run_worker(redis_client, settings)
    # Then the payment holds the first event of the highest status, as if applied in order
    [payment] = rows(engine, payments)
    assert (payment["status"], payment["event_id"]) == (final, f"evt_{event_of_final}")
    assert len(rows(engine, webhook_events)) == len(order)


def test_a_job_that_is_not_an_event_fails_alone(
    redis_client: redis.Redis, settings: Settings, engine: Engine
) -> None:
    # Given a foreign job on the queue between two events (someone enqueued by hand)
    from shared import keys

    deliver(redis_client, settings, "moncash", n=1)
    foreign = queues_for(settings, [], redis_client)[0].enqueue(keys.JOB_FUNC, "not an envelope")
    deliver(redis_client, settings, "moncash", n=2)
    # When a worker drains the queue
    run_worker(redis_client, settings)
    # Then both events are applied, and only the foreign job failed, dead-lettered with why
    assert [e["status"] for e in rows(engine, webhook_events) if e["source"] == "moncash"] == [
        "processed",
        "processed",
    ]
    [dl] = rows(engine, dead_letters)
    assert (dl["source"], dl["event_id"], dl["permanent"]) == ("_invalid", foreign.id, 1)
    assert "not an event envelope" in dl["reason"]
    assert queues_for(settings, [], redis_client)[0].failed_job_registry.count == 1


def test_a_last_attempt_stuck_between_dequeue_and_start_is_dead_lettered(
    redis_client: redis.Redis, settings: Settings, engine: Engine
) -> None:
    # Given an event on its last attempt, moved into RQ's intermediate list by a worker that
    # then died (a BLMOVE, then kill -9)
    from workers.worker import sweep

    last = make_settings(
        settings.redis_url, settings.database_url, sources=TEST_SOURCES, worker={"max_attempts": 1}
    )
    runtime.configure(last)
    event_id = deliver(redis_client, last, "moncash", n=5)
    queue = queues_for(last, [], redis_client)[0]
    job_id = redis_client.lmove(queue.key, queue.intermediate_queue.key).decode()
    # When the janitor has seen it stuck for longer than RQ tolerates
    worker = EventWorker([queue], connection=redis_client)
    sweep([queue], worker)
    redis_client.set(queue.intermediate_queue.get_first_seen_key(job_id), time.time() - 120)
    sweep([queue], worker)
    # Then the acknowledged event is in the dead letters, not lost
    [dl] = rows(engine, dead_letters)
    assert (dl["event_id"], dl["permanent"]) == (event_id, 0)
    assert "abandoned" in dl["reason"]
    assert job_id in queue.failed_job_registry


def test_jobs_queued_before_the_upgrade_are_processed(
    redis_client: redis.Redis, settings: Settings, engine: Engine
) -> None:
    # Given an event job queued by the previous hookline: pickled by RQ's default serializer,
    # envelope version 1 with the body as bytes
    from rq import Queue

    from shared import keys

    body = body_of({"id": "evt_old", "event": "payment.completed", "reference": "OLD", "amount": 7})
    old = {
        "v": 1,
        "source": "moncash",
        "event_id": "evt_old",
        "received_at": time.time(),
        "headers": [["Content-Type", "application/json"]],
        "body": body,
        "remote": None,
        "replay": False,
    }
    Queue(settings.queue, connection=redis_client).enqueue(keys.JOB_FUNC, old)
    # When today's worker drains the queue
    run_worker(redis_client, settings)
    # Then it is applied like any other
    [event] = rows(engine, webhook_events)
    assert (event["event_id"], event["status"]) == ("evt_old", "processed")
    [payment] = rows(engine, payments)
    assert (payment["reference"], payment["amount"]) == ("OLD", 7)


class _RunsCode:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.path,))


def test_a_pickle_that_would_run_code_is_never_run_and_is_dead_lettered(
    redis_client: redis.Redis, settings: Settings, engine: Engine, tmp_path: Path
) -> None:
    # Given a job whose data, written straight into Redis by someone who could, is a pickle
    # that creates a file when loaded
    import pickle
    import zlib

    from rq import Queue

    from shared import keys

    marker = tmp_path / "pwned"
    job = Queue(settings.queue, connection=redis_client).enqueue(keys.JOB_FUNC, "placeholder")
    evil = pickle.dumps((keys.JOB_FUNC, None, (_RunsCode(marker),), {}))
    redis_client.hset(keys.job_key(job.id), "data", zlib.compress(evil))
    deliver(redis_client, settings, "moncash", n=3)
    # When a worker drains the queue
    run_worker(redis_client, settings)
    # Then the code never ran, the job is dead-lettered with why, and the event beside it is
    # applied
    assert not marker.exists()
    dead = [dl for dl in rows(engine, dead_letters) if dl["source"] == "_invalid"]
    assert [(dl["event_id"], dl["permanent"]) for dl in dead] == [(job.id, 1)]
    assert "cannot be read" in dead[0]["reason"]
    assert [e["status"] for e in rows(engine, webhook_events) if e["source"] == "moncash"] == [
        "processed"
    ]


def test_a_dead_letter_that_cannot_be_written_keeps_the_event_for_later(
    redis_client: redis.Redis, settings: Settings, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a poison event on its only attempt, and the database refusing the dead letter once
    from sqlalchemy.exc import OperationalError

    one_try = make_settings(
        settings.redis_url, settings.database_url, sources=TEST_SOURCES, worker={"max_attempts": 1}
    )
    runtime.configure(one_try)
    real = deadletters.record
    calls: list[int] = []

    def record_once_down(*args: Any, **kwargs: Any) -> bool:
        calls.append(1)
        if len(calls) == 1:
            raise OperationalError("insert", {}, ConnectionError("database is away"))
        return real(*args, **kwargs)

    monkeypatch.setattr(deadletters, "record", record_once_down)
    poison = {"id": "e", "event": "payment.completed", "reference": "R", "amount": "lots"}
    deliver(redis_client, one_try, "moncash", body=body_of(poison))
    # When a worker runs it
    run_worker(redis_client, one_try)
    # Then nothing is recorded yet, and the job waits in RQ's schedule instead of failing
    queue = queues_for(one_try, [], redis_client)[0]
    assert rows(engine, dead_letters) == []
    assert queue.scheduled_job_registry.count == 1
    assert queue.failed_job_registry.count == 0
    # When its time comes (the database is back)
    [job_id] = queue.scheduled_job_registry.get_job_ids()
    redis_client.zadd(queue.scheduled_job_registry.key, {job_id: 0})
    run_worker(redis_client, one_try)
    # Then it is dead-lettered with both attempts' errors
    [dl] = rows(engine, dead_letters)
    assert dl["event_id"] == "e" and len(dl["errors"]) == 2


def test_an_event_locked_by_a_frozen_transaction_does_not_hold_up_the_others(
    redis_client: redis.Redis, settings: Settings, engine: Engine, postgres_url: str
) -> None:
    # Given a transaction that holds one event's row and does not end (a frozen worker), and
    # that event queued among three others
    if settings.database_url != postgres_url:
        pytest.skip("row locks with waiting: PostgreSQL")
    frozen = engine.connect()
    tx = frozen.begin()
    frozen.execute(
        webhook_events.insert().values(
            source="moncash",
            event_id="evt_000000000001",
            status="processed",
            attempts=1,
            received_at=dt_now(),
            processed_at=dt_now(),
        )
    )
    for n in range(4):
        deliver(redis_client, settings, "moncash", n=n)
    started = time.monotonic()
    seen: dict[str, float] = {}

    def watch_then_release() -> None:
        # the frozen transaction thaws after 20 s; meanwhile note when the others are in
        while time.monotonic() - started < 20:
            if "three" not in seen and len(rows(engine, webhook_events)) >= 3:
                seen["three"] = time.monotonic() - started
            time.sleep(0.2)
        tx.rollback()
        frozen.close()

    watcher = threading.Thread(target=watch_then_release)
    watcher.start()
    # When a worker drains the queue (the locked event is retried until it is released)
    try:
        run_worker(redis_client, settings)
    finally:
        watcher.join()
    # Then the other three were applied while it was still held (within the lock timeout of
    # the batch, then of their own transactions), not when it was released
    assert seen.get("three", 99) < 20, "the others waited for the frozen one"
    print(f"\nthree events applied {seen['three']:.1f} s into a transaction frozen on a fourth")
    # And the locked one is not lost: its attempts (backoff 0 here) meet the lock until it is
    # released at 20 s, so it is either dead-lettered saying so (the lock outlived them: its
    # replay applies it once) or applied by the attempt that came after the release (on a slow
    # machine the three attempts and the dead letter's write span those 20 s)
    statuses = {e["event_id"]: e["status"] for e in rows(engine, webhook_events)}
    if statuses["evt_000000000001"] == "dead":
        [dl] = rows(engine, dead_letters)
        assert "lock timeout" in dl["reason"]
        list(
            deadletters.replay(
                engine, redis_client, JobSpec.from_settings(settings), [dl["id"]], by="cli"
            )
        )
        run_worker(redis_client, settings)
    else:
        assert statuses["evt_000000000001"] == "processed"
        assert rows(engine, dead_letters) == []
    assert [e["status"] for e in rows(engine, webhook_events)] == ["processed"] * 4
    assert len(rows(engine, payments)) == 4


def dt_now() -> Any:
    import datetime as dt

    return dt.datetime.now(dt.UTC)
