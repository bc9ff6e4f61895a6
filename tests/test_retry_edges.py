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
from shared.db import as_utc, dead_letters, webhook_events
from shared.enqueue import JobSpec, claim
from shared.envelope import Envelope
from shared.errors import PermanentError
from shared.rqcompat import JobSerializer
from tests import test_worker
from tests.test_ingest import queued_jobs
from workers import deadletters, retries, runtime
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
    assert [(e["attempt"], e["error"], e["permanent"]) for e in dl["errors"]] == [(1, reason, True)]
    assert counted("_invalid", "dead_lettered") - before == 1
    assert f"job {job.id} is not a hookline event, dead-lettered unrun: {reason}" in (
        caplog.messages
    )


def test_no_job_at_all_is_dead_lettered_as_unknown(engine: Engine) -> None:
    assert retries.attempt_failed(None, Failure("RuntimeError: the job vanished", False))
    [dl] = rows(engine, dead_letters)
    assert (dl["source"], dl["event_id"], bytes(dl["body"])) == ("_invalid", "unknown", b"")
    assert as_utc(dl["received_at"]).timestamp() == 0.0
    assert dl["reason"] == "RuntimeError: the job vanished"


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


def test_an_error_with_no_message_or_a_huge_one_is_one_bounded_line() -> None:
    assert Failure.of(RuntimeError()) == Failure("RuntimeError: ", False)
    assert Failure.of(RuntimeError(" \n ")).error == "RuntimeError: "
    huge = Failure.of(RuntimeError("x" * 5000)).error
    assert huge == "RuntimeError: " + "x" * (1000 - len("RuntimeError: "))


def test_an_event_of_a_source_no_longer_configured_is_dead_lettered_untyped(
    redis_client: redis.Redis, engine: Engine
) -> None:
    # Given the job of an event whose source was removed from the configuration since
    env = Envelope(source="retired", event_id="r-1", received_at=0.0, headers=(), body=b"{}")
    job = Job.create(
        keys.JOB_FUNC, args=(env.to_dict(),), connection=redis_client, serializer=JobSerializer
    )
    # When its attempt fails for that reason
    error = PermanentError("source 'retired' is no longer configured")
    assert retries.attempt_failed(job, Failure.of(error))
    # Then it is dead-lettered (no type can be read without the source's settings)
    [dl] = rows(engine, dead_letters)
    assert (dl["source"], dl["event_id"], dl["event_type"]) == ("retired", "r-1", None)
    assert dl["reason"] == "PermanentError: source 'retired' is no longer configured"
    assert [e["attempt"] for e in dl["errors"]] == [1]


def test_a_job_with_no_data_at_all_is_dead_lettered_with_an_empty_body(
    redis_client: redis.Redis, engine: Engine
) -> None:
    # Given a job RQ knows by its id only (no data to read)
    job = Job("no-data", connection=redis_client, serializer=JobSerializer)
    # When its attempt is decided
    assert retries.attempt_failed(job, retries.ABANDONED)
    # Then it is dead-lettered unrun under its id, with an empty body and why
    [dl] = rows(engine, dead_letters)
    assert (dl["source"], dl["event_id"], bytes(dl["body"])) == ("_invalid", "no-data", b"")
    assert dl["reason"] == (
        "InvalidEnvelope: job data cannot be read: ValueError: Cannot build the job data"
    )


def test_an_event_applied_before_its_stop_arrived_is_not_dead_lettered_and_says_so(
    redis_client: redis.Redis,
    settings: Settings,
    engine: Engine,
    state: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given an event a worker applied
    deliver(redis_client, settings, "flaky", body=b'{"id": "a-1", "type": "x"}')
    [job] = queued_jobs(redis_client)
    run_worker(redis_client, settings)
    before = counted("flaky", "dead_lettered")
    # When an operator's stop for it is decided afterwards
    with caplog.at_level(logging.INFO, logger="hookline.worker"):
        assert retries.attempt_failed(job, retries.STOPPED)
    # Then the event stays applied, with no dead letter, and the log says why
    assert [e["status"] for e in rows(engine, webhook_events)] == ["processed"]
    assert rows(engine, dead_letters) == []
    assert counted("flaky", "dead_lettered") == before
    assert (
        "event flaky/a-1 was applied meanwhile: not dead-lettered "
        "(stopped by an operator (rq stop-job))"
    ) in caplog.messages


def test_attempt_errors_hookline_did_not_write_are_skipped_not_fatal(
    redis_client: redis.Redis, engine: Engine
) -> None:
    # Given two events' jobs whose attempt errors someone else overwrote: one with a number,
    # one with a foreign entry before hookline's own
    first = {"attempt": 1, "at": 0.0, "error": "RuntimeError: first", "permanent": False}
    metas = {"m-1": 3, "m-2": [{"note": "not hookline's"}, first]}
    for event_id, meta in metas.items():
        env = Envelope(source="flaky", event_id=event_id, received_at=0.0, headers=(), body=b"{}")
        job = Job.create(
            keys.JOB_FUNC,
            args=(env.to_dict(),),
            connection=redis_client,
            serializer=JobSerializer,
            meta={retries.ERRORS_META: meta},
        )
        # When its last attempt fails
        assert retries.attempt_failed(job, Failure("PayloadError: last", True))
    # Then each is dead-lettered with every error hookline wrote, the foreign ones skipped
    dead = letters(engine)
    assert [e["error"] for e in dead["m-1"]["errors"]] == ["PayloadError: last"]
    assert [e["error"] for e in dead["m-2"]["errors"]] == [
        "RuntimeError: first",
        "PayloadError: last",
    ]


LONG_NAME = "pkg." + "f" * 100


@pytest.mark.parametrize(
    "func, args, kwargs, calls",
    [
        ("os.path.basename", ("x",), {}, "'os.path.basename'"),
        (keys.JOB_FUNC, ("extra",), {}, repr(keys.JOB_FUNC)),
        (keys.JOB_FUNC, (), {"k": 1}, repr(keys.JOB_FUNC)),
        (LONG_NAME, (), {}, repr(LONG_NAME[:80])),
    ],
)
def test_a_job_calling_anything_else_is_not_an_event(
    redis_client: redis.Redis,
    engine: Engine,
    func: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    calls: str,
) -> None:
    # Given a job calling something else, or hookline's function with other arguments
    env = Envelope(source="flaky", event_id="o-1", received_at=0.0, headers=(), body=b"{}")
    if func == keys.JOB_FUNC:
        args = (env.to_dict(), *args)
    job = Job.create(
        func, args=args, kwargs=kwargs, connection=redis_client, serializer=JobSerializer
    )
    # When its attempt is decided, then it is dead-lettered unrun, saying what it calls
    assert retries.attempt_failed(job, Failure("RuntimeError: boom", False))
    [dl] = rows(engine, dead_letters)
    assert (dl["source"], dl["event_id"]) == ("_invalid", job.id)
    assert dl["reason"] == f"InvalidEnvelope: job is not a hookline event (it calls {calls})"


def test_a_dead_letter_the_database_refuses_keeps_the_job_for_one_later_attempt(
    redis_client: redis.Redis,
    engine: Engine,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given an event's last attempt, and the database refusing its dead letter
    def refused(*_args: Any, **_kwargs: Any) -> bool:
        raise ConnectionError("database is away")

    monkeypatch.setattr(deadletters, "record", refused)
    env = Envelope(source="flaky", event_id="k-1", received_at=0.0, headers=(), body=b"{}")
    job = Job.create(
        keys.JOB_FUNC, args=(env.to_dict(),), connection=redis_client, serializer=JobSerializer
    )
    job.save()
    # When its attempt fails
    with caplog.at_level(logging.INFO, logger="hookline.worker"):
        assert not retries.attempt_failed(job, Failure("PayloadError: bad", True))
    # Then RQ is told to run it once more, a minute later, and the log says why
    assert (job.retries_left, job.retry_intervals) == (1, [retries.UNRECORDED_RETRY_SECONDS])
    assert (
        f"job {job.id} could not be dead-lettered (ConnectionError: database is away): "
        "kept for another attempt"
    ) in caplog.messages


def test_the_worker_lines_about_an_event_name_it_its_job_and_its_trace(
    redis_client: redis.Redis,
    settings: Settings,
    engine: Engine,
    state: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given an event that fails its first attempt (twice: once in the batch that falls back,
    # once alone), then is applied, and a poison one; both queued by an ingress with traces on
    # (their envelopes carry the request's trace context)
    (state / "fail_f-9").write_text("2")
    (state / "poison").write_text("")
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    for source, event_id in (("flaky", "f-9"), ("poison", "p-9")):
        envelope = Envelope(
            source=source,
            event_id=event_id,
            received_at=0.0,
            headers=(),
            body=f'{{"id": "{event_id}", "type": "x"}}'.encode(),
            trace=f"00-{trace}-00f067aa0ba902b7-01",
        )
        claim(redis_client, envelope, JobSpec.from_settings(settings))
    # When a worker runs them
    with caplog.at_level(logging.INFO, logger="hookline.worker"):
        run_worker(redis_client, settings)
    # Then its retry, its success and the other's dead letter carry the fields JSON logs show
    lines = {r.getMessage().split(":")[0]: r for r in caplog.records if r.name == "hookline.worker"}
    for start, source, event_id in (
        ("event flaky/f-9 attempt 1 failed, will retry", "flaky", "f-9"),
        ("event flaky/f-9 processed (attempt 2)", "flaky", "f-9"),
        ("event poison/p-9 dead-lettered after 1 attempt(s)", "poison", "p-9"),
    ):
        record = lines[start]
        assert (record.source, record.event_id, record.trace_id) == (source, event_id, trace)  # type: ignore[attr-defined]
        assert len(record.job_id) == 32  # type: ignore[attr-defined]
