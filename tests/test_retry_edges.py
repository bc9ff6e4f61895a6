"""The retry decision at its edges, as operators see it: the dead letter's event type, the
worker's counters and log lines, timeouts, jobs that are not events (or no job at all), and an
attempt whose error cannot be saved with its job.

On SQLite, with ``tests.test_worker``'s delivery and burst-worker helpers.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import redis
from redis import Redis
from rq import Queue, Retry
from rq.job import Job
from rq.timeouts import JobTimeoutException
from sqlalchemy import Engine

from shared import keys
from shared.config import Settings
from shared.db import as_utc, dead_letters
from shared.envelope import Envelope
from shared.rqcompat import JobSerializer
from tests import test_worker
from workers import retries, runtime
from workers.retries import Failure

state = test_worker.state
settings = test_worker.settings
engine = test_worker.engine
deliver = test_worker.deliver
run_worker = test_worker.run_worker
rows = test_worker.rows


@pytest.fixture
def database_url(sqlite_url: str) -> str:
    return sqlite_url


def counted(source: str, outcome: str) -> float:
    """The worker's counter for ``source`` and ``outcome`` (one registry per process, so other
    tests' events count too: compare before and after)."""
    labels = {"source": source, "outcome": outcome}
    metrics = runtime.current().metrics
    return metrics.registry.get_sample_value("hookline_worker_events_total", labels) or 0.0


def letters(engine: Engine) -> dict[str, dict[str, Any]]:
    return {d["event_id"]: d for d in rows(engine, dead_letters)}


def test_dead_letters_and_retries_are_typed_counted_and_logged(
    redis_client: redis.Redis,
    settings: Settings,
    engine: Engine,
    state: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a poison event, one that fails once, and one whose type no database takes
    (state / "poison").write_text("")
    (state / "fail_f-1").write_text("1")
    deliver(redis_client, settings, "poison", body=b'{"id": "p-1", "type": "order.paid"}')
    deliver(redis_client, settings, "flaky", body=b'{"id": "f-1", "type": "x"}')
    deliver(redis_client, settings, "poison", body=b'{"id": "p-2", "type": "a\\u0000b"}')
    before = counted("poison", "dead_lettered"), counted("flaky", "retried")
    # When a worker runs them
    with caplog.at_level(logging.INFO, logger="hookline.worker"):
        run_worker(redis_client, settings)
    # Then the poison event's dead letter has its type; the untypeable one has none
    dead = letters(engine)
    assert (dead["p-1"]["event_type"], dead["p-2"]["event_type"]) == ("order.paid", None)
    # And the worker counted and logged each outcome
    assert counted("poison", "dead_lettered") - before[0] == 2
    assert counted("flaky", "retried") - before[1] == 1
    assert (
        "event poison/p-1 dead-lettered after 1 attempt(s): "
        "PayloadError: this event cannot be processed (poison)"
    ) in caplog.messages
    assert (
        "event flaky/f-1 attempt 1 failed, will retry: "
        "RuntimeError: transient failure, 0 more to come"
    ) in caplog.messages


def test_a_timed_out_attempt_says_so_and_may_be_retried() -> None:
    failure = Failure.of(JobTimeoutException("Task exceeded maximum timeout value (5 seconds)"))
    assert failure == Failure(
        "timed out: JobTimeoutException: Task exceeded maximum timeout value (5 seconds)", False
    )


def test_a_job_that_is_not_an_event_is_dead_lettered_with_its_raw_data(
    redis_client: redis.Redis, settings: Settings, engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a job some other code queued on hookline's queue
    queue = Queue(settings.queue, connection=redis_client, serializer=JobSerializer)
    job = queue.enqueue("os.getcwd")
    before = counted("_invalid", "dead_lettered")
    # When its attempt is decided
    with caplog.at_level(logging.INFO, logger="hookline.worker"):
        assert retries.attempt_failed(job, Failure("RuntimeError: boom", False))
    # Then it is dead-lettered unrun, under its job id, its data kept as the body
    [dl] = rows(engine, dead_letters)
    assert (dl["source"], dl["event_id"], dl["permanent"]) == ("_invalid", job.id, 1)
    assert (bytes(dl["body"]), as_utc(dl["received_at"])) == (job.data, job.enqueued_at)
    reason = "InvalidEnvelope: job is not a hookline event (it calls 'os.getcwd')"
    assert dl["reason"] == reason
    assert counted("_invalid", "dead_lettered") - before == 1
    assert f"job {job.id} is not a hookline event, dead-lettered unrun: {reason}" in (
        caplog.messages
    )


def test_no_job_at_all_is_dead_lettered_as_unknown(engine: Engine) -> None:
    assert retries.attempt_failed(None, Failure("RuntimeError: the job vanished", False))
    [dl] = rows(engine, dead_letters)
    assert (dl["source"], dl["event_id"], bytes(dl["body"])) == ("_invalid", "unknown", b"")
    assert as_utc(dl["received_at"]).timestamp() == 0.0


def test_an_attempt_whose_error_cannot_be_saved_is_retried_and_says_so(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    # Given an event's job with retries left, whose Redis is gone
    env = Envelope(source="flaky", event_id="gone", received_at=0.0, headers=(), body=b"{}")
    job = Job.create(
        keys.JOB_FUNC,
        args=(env.to_dict(),),
        connection=Redis(host="127.0.0.1", port=1),
        retry=Retry(max=2),
        serializer=JobSerializer,
    )
    # When its attempt fails
    with caplog.at_level(logging.INFO, logger="hookline.worker"):
        assert not retries.attempt_failed(job, Failure("RuntimeError: try again", False))
    # Then it is retried, its error kept on the job, and the log says it was not saved
    assert job.meta[retries.ERRORS_META][0]["error"] == "RuntimeError: try again"
    assert f"could not save attempt error for job {job.id}" in caplog.messages
    assert rows(engine, dead_letters) == []
