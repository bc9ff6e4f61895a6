"""A failed attempt's bookkeeping refused by a full Redis (``maxmemory``, ``noeviction``).

Found by ``chaos/run.py --scenario redis-full`` with ``shed_at_memory_percent = 0`` and events
whose handler fails once: acknowledged events were never applied. Two causes, each made to
order here on a real Redis:

- RQ's ``Job.retry`` writes the job's status ``scheduled`` on its own, then the transaction
  that moves the job from the StartedJobRegistry to the ScheduledJobRegistry; Redis let the
  first through and refused the second (RQ logs that and goes on), leaving the job
  ``scheduled`` in no registry: RQ's janitor skips a job that is not ``started`` and drops its
  entry, so nothing ever ran it again (``shared.rqcompat.EventJob`` retries atomically);
- a refused write while recording the failure ended the whole batch: its other events, applied
  or not, stayed registered as running and held Redis full (the batch now goes on).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import redis
import redis.client
from redis.exceptions import OutOfMemoryError
from rq.job import JobStatus
from sqlalchemy import select

from shared import rqcompat
from shared.config import Settings
from shared.db import webhook_events
from tests.helpers import SOURCES, make_settings
from tests.test_worker import deliver
from workers import runtime
from workers.worker import EventWorker, queues_for

FLAKY = {"scheme": "hmac", "secrets": ["f"], "event_id": "json:id", "event_type": "json:type"}


@pytest.fixture
def settings(
    redis_url: str, sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    monkeypatch.setenv("HOOKLINE_TEST_STATE", str(tmp_path))
    settings = make_settings(
        redis_url,
        sqlite_url,
        sources={"moncash": SOURCES["moncash"], "flaky": FLAKY},
        worker={
            "handlers": ["tests.handlers_for_tests"],
            "max_attempts": 3,
            "backoff_seconds": [5],
        },
    )
    runtime.configure(settings)
    return settings


def _refused(*_args: Any, **_kwargs: Any) -> Any:
    raise OutOfMemoryError("command not allowed when used memory > 'maxmemory'.")


def _applied(settings: Settings) -> list[str]:
    with runtime.current().engine.connect() as conn:
        rows = conn.execute(
            select(webhook_events.c.event_id).where(webhook_events.c.status == "processed")
        )
        return sorted(r.event_id for r in rows)


def test_a_retry_whose_transaction_is_refused_leaves_the_job_started_in_its_registry(
    redis_client: redis.Redis, settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Given an event whose handler fails once, its job taken and registered as running
    (tmp_path / "fail_f-1").write_text("1")
    deliver(redis_client, settings, "flaky", body=b'{"id": "f-1", "type": "x"}')
    [queue] = queues_for(settings, [], redis_client)
    worker = EventWorker([queue], connection=redis_client)
    [job] = rqcompat.fetch(redis_client, rqcompat.take(queue, 1))
    assert job is not None
    [execution] = rqcompat.start(worker, queue, [job], 60)
    # When its failure is recorded for a retry, and Redis refuses the transaction (as it does
    # at maxmemory), not the writes before it
    monkeypatch.setattr(redis.client.Pipeline, "execute", _refused)
    rqcompat.record_failure(worker, job, queue, execution, "boom", retry=True)
    monkeypatch.undo()
    # Then the job is still running as far as Redis knows, where a janitor finds it
    assert redis_client.hget(job.key, "status") == JobStatus.STARTED.value.encode()
    assert job.id in queue.started_job_registry.get_job_ids(cleanup=False)


def test_a_failure_refused_by_a_full_redis_does_not_end_the_batch(
    redis_client: redis.Redis, settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Given three events in a row, the middle one failing (together and on its own)
    (tmp_path / "fail_f-2").write_text("2")  # in the batch, then on its own
    deliver(redis_client, settings, "moncash", n=1)
    deliver(redis_client, settings, "flaky", body=b'{"id": "f-2", "type": "x"}')
    deliver(redis_client, settings, "moncash", n=2)
    [queue] = queues_for(settings, [], redis_client)
    worker = EventWorker([queue], connection=redis_client)
    [first] = rqcompat.fetch(redis_client, rqcompat.take(queue, 1))
    assert first is not None
    # When a worker runs them in one batch and Redis refuses the failure's bookkeeping
    monkeypatch.setattr(rqcompat, "record_failure", _refused)
    worker.batch.run(first, queue)
    # Then the two others are applied and leave Redis
    assert _applied(settings) == ["evt_000000000001", "evt_000000000002"]
    # And the failed one stays registered as running, no longer renewed by this worker: the
    # janitor retries it once its entry expires
    [left] = queue.started_job_registry.get_job_ids(cleanup=False)
    assert rqcompat.fetch(redis_client, [left])[0].args[0]["event_id"] == "f-2"  # type: ignore[union-attr]
    assert worker.executions == {}


def test_a_due_retry_whose_enqueue_is_refused_stays_scheduled(
    redis_client: redis.Redis, settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Given an event's retry due now in the ScheduledJobRegistry
    (tmp_path / "fail_f-3").write_text("1")
    deliver(redis_client, settings, "flaky", body=b'{"id": "f-3", "type": "x"}')
    [queue] = queues_for(settings, [], redis_client)
    worker = EventWorker([queue], connection=redis_client)
    [job] = rqcompat.fetch(redis_client, rqcompat.take(queue, 1))
    assert job is not None
    [execution] = rqcompat.start(worker, queue, [job], 60)
    rqcompat.record_failure(worker, job, queue, execution, "boom", retry=True)
    assert queue.scheduled_job_registry.get_job_ids() == [job.id]
    # When the janitor moves it to its queue and Redis refuses the enqueue (maxmemory)
    monkeypatch.setattr(redis.client.Pipeline, "execute", _refused)
    with pytest.raises(OutOfMemoryError):
        rqcompat.move_due_retries(queue, overdue_seconds=-3600)
    monkeypatch.undo()
    # Then it is still scheduled (not in no registry at all), and the next round moves it
    assert queue.scheduled_job_registry.get_job_ids() == [job.id]
    assert rqcompat.move_due_retries(queue, overdue_seconds=-3600) == 1
    assert queue.job_ids == [job.id] and queue.scheduled_job_registry.count == 0
