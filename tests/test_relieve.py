"""A worker relieving a full Redis (``workers.worker.relieve``) whose batch's bookkeeping Redis
refuses anyway: the batch's jobs are left where a janitor finds them, and the worker goes on.

Found by ``chaos/run.py --scenario redis-full`` with ``shed_at_memory_percent = 0``: the
process stopped (``There exists an active worker named ... already``: the refused batch had
written the worker's hash, which RQ's registration then took for another live worker), and the
batch's jobs stayed registered as running, their entries renewed by the worker's heartbeats, so
no janitor ever took them. Here on a real Redis with a refusal made to order."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from redis.exceptions import OutOfMemoryError, RedisError, ResponseError

from shared import rqcompat
from shared.config import Settings
from shared.enqueue import JobSpec, claim
from shared.envelope import Envelope
from tests.helpers import SOURCES, make_settings, signed
from workers import runtime
from workers import worker as worker_module
from workers.worker import EventWorker, queues_for, relieve


@pytest.fixture
def settings(redis_url: str, sqlite_url: str) -> Settings:
    return make_settings(redis_url, sqlite_url, sources={"moncash": SOURCES["moncash"]})


def _queue_one(client: redis.Redis, settings: Settings) -> None:
    body, _headers, _ = signed(settings, "moncash", n=1)
    envelope = Envelope(
        source="moncash", event_id="evt_000000000001", received_at=0.0, headers={}, body=body
    )
    claim(client, envelope, JobSpec.from_settings(settings))


#: how redis-py raises a refused write: a command's, and a script's before Redis 7.2
REFUSALS = [
    OutOfMemoryError("command not allowed when used memory > 'maxmemory'."),
    ResponseError(
        "Error running script (call to f_0d1f): @user_script:5: @user_script: 5: -OOM command"
        " not allowed when used memory > 'maxmemory'."
    ),
]


@pytest.mark.parametrize("refusal", REFUSALS, ids=["command", "script"])
def test_a_refused_batch_leaves_its_jobs_to_the_janitor_and_the_worker_registers(
    redis_client: redis.Redis,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    refusal: RedisError,
) -> None:
    runtime.configure(settings)
    # Given an event queued, and a Redis full for one round of relief
    _queue_one(redis_client, settings)
    queues = queues_for(settings, [], redis_client)
    worker = EventWorker(queues, connection=redis_client)
    full = iter([True])
    monkeypatch.setattr(worker_module, "redis_full", lambda *_a, **_k: next(full, False))

    # And Redis refusing the batch's bookkeeping once the event is applied
    def refused(*_args: Any, **_kwargs: Any) -> None:
        raise refusal

    monkeypatch.setattr(rqcompat, "record_successes", refused)
    # When the worker relieves Redis
    assert relieve(worker, queues) == 0
    # Then RQ's registration of the worker, next, goes through
    worker.register_birth()
    assert redis_client.exists(worker.key)
    # And the job is still registered as running, and the worker's heartbeats leave its
    # entry to expire (a janitor retries it then: its row makes that attempt a duplicate)
    registry = queues[0].started_job_registry.key
    [(entry, score)] = redis_client.zrange(registry, 0, -1, withscores=True)
    rqcompat.heartbeat(worker, 3600)
    assert redis_client.zscore(registry, entry) == score
    worker.register_death()
