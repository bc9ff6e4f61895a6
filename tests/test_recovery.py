"""Abandoned work comes back within seconds, whatever the job timeout: a worker killed with
``kill -9``, or frozen with SIGSTOP, stops renewing its jobs' registry entries, and the janitor
of another worker hands them back to RQ (retry, or dead letter on a last attempt).

The job timeout here is 600 s: under RQ's rules (entry = timeout + 60 s) recovery would take
over ten minutes. The measured figures are printed (``pytest -s``); the bounds asserted are
loose on purpose (this machine is shared), yet far below what the old rule allows."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job
from sqlalchemy import func, select

from shared.config import load_settings
from shared.db import dead_letters, make_engine, payments, webhook_events
from shared.rqcompat import JobSerializer
from tests.helpers import SOURCES
from tests.processes import env_for, hookline, processes, wait_until
from tests.test_worker import deliver
from workers.retries import ABANDONED, past_errors

pytestmark = pytest.mark.slow

#: what the old rule (RQ's timeout + 60 s, hookline's timeout + 15 s) could never do
BOUND_SECONDS = 60


def _config(
    tmp_path: Path,
    redis_url: str,
    database_url: str,
    job_timeout: int = 600,
    max_attempts: int = 3,
) -> Path:
    config = tmp_path / "hookline.toml"
    config.write_text(
        f"""
redis_url = "{redis_url}"
database_url = "{database_url}"

[worker]
handlers = ["tests.handlers_for_tests"]
job_timeout_seconds = {job_timeout}
backoff_seconds = [1]
max_attempts = {max_attempts}

[sources.slow]
scheme = "hmac"
secrets = {json.dumps(SOURCES["hmac"]["secrets"][:1])}
event_id = "json:id"
event_type = "json:type"
"""
    )
    return config


def _count(engine: Any, table: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def _job_of(client: redis.Redis, event_id: str) -> Job:
    for key in client.scan_iter(match=Job.redis_job_namespace_prefix + "*"):
        job = Job.fetch(key.decode().split(":")[-1], connection=client, serializer=JobSerializer)
        if job.description and job.description.endswith(" " + event_id):
            return job
    raise AssertionError(f"no job for {event_id}")


def test_a_worker_killed_mid_job_gives_its_job_back_within_seconds(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis, postgres_url: str
) -> None:
    config = _config(tmp_path, redis_url, postgres_url)
    settings = load_settings(config)
    env = env_for(HOOKLINE_CONFIG=str(config), HOOKLINE_TEST_STATE=str(tmp_path))
    (tmp_path / "sleep").write_text("120")
    deliver(redis_client, settings, "slow", body=b'{"id": "k-1", "type": "t"}')
    engine = make_engine(postgres_url)
    with processes() as procs:
        # Given a worker in the middle of the event's job (job timeout 600 s)
        first = procs.start(hookline("worker"), env, tmp_path / "w1.log")
        wait_until(lambda: (tmp_path / "started_k-1").exists(), 30, "the job starting")
        (tmp_path / "sleep").unlink()
        procs.start(hookline("worker"), env, tmp_path / "w2.log")
        # When it is killed with kill -9
        os.killpg(first.pid, signal.SIGKILL)
        killed = time.monotonic()
        # Then the other worker applies the event, on its second attempt, within seconds
        wait_until(lambda: _count(engine, webhook_events) == 1, 120, "the event applied again")
        took = time.monotonic() - killed
    print(f"\nkill -9 -> event applied by another worker: {took:.1f} s (job timeout 600 s)")
    assert took < BOUND_SECONDS
    assert _count(engine, payments) == 1
    with engine.connect() as conn:
        assert conn.execute(select(webhook_events.c.attempts)).scalar_one() == 2
    engine.dispose()


def test_a_frozen_worker_gives_its_job_back_and_its_late_commit_is_harmless(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis, postgres_url: str
) -> None:
    config = _config(tmp_path, redis_url, postgres_url)
    settings = load_settings(config)
    env = env_for(HOOKLINE_CONFIG=str(config), HOOKLINE_TEST_STATE=str(tmp_path))
    (tmp_path / "sleep").write_text("4")
    deliver(redis_client, settings, "slow", body=b'{"id": "z-1", "type": "t"}')
    engine = make_engine(postgres_url)
    with processes() as procs:
        # Given a worker in the middle of the event's job, holding its open transaction
        first = procs.start(hookline("worker"), env, tmp_path / "w1.log")
        wait_until(lambda: (tmp_path / "started_z-1").exists(), 30, "the job starting")
        frozen_by = _job_of(redis_client, "z-1").worker_name
        (tmp_path / "sleep").unlink()
        procs.start(hookline("worker"), env, tmp_path / "w2.log")
        # When it is frozen (SIGSTOP) for long enough to be taken for dead
        os.killpg(first.pid, signal.SIGSTOP)
        frozen = time.monotonic()
        wait_until(
            lambda: _job_of(redis_client, "z-1").worker_name not in (None, frozen_by),
            120,
            "the job handed to the other worker",
        )
        took = time.monotonic() - frozen
        # And it wakes up and commits its late work
        os.killpg(first.pid, signal.SIGCONT)
        wait_until(lambda: _count(engine, webhook_events) == 1, 60, "the event applied")
        time.sleep(3)  # both workers have finished with it
        assert first.poll() is None
    print(f"\nSIGSTOP -> job handed to another worker: {took:.1f} s (job timeout 600 s)")
    assert took < BOUND_SECONDS
    # Then the effect happened once and the event is not also dead
    assert _count(engine, payments) == 1
    assert _count(engine, dead_letters) == 0
    with engine.connect() as conn:
        assert conn.execute(select(webhook_events.c.status)).scalar_one() == "processed"
    engine.dispose()


def test_a_frozen_worker_that_wakes_past_its_job_timeout_writes_nothing_over_the_new_holder(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis, postgres_url: str
) -> None:
    config = _config(tmp_path, redis_url, postgres_url, job_timeout=20, max_attempts=2)
    settings = load_settings(config)
    env = env_for(HOOKLINE_CONFIG=str(config), HOOKLINE_TEST_STATE=str(tmp_path))
    (tmp_path / "sleep").write_text("25")  # a handler 5 s slower than the job timeout
    deliver(redis_client, settings, "slow", body=b'{"id": "z-2", "type": "t"}')
    with processes() as procs:
        # Given a worker in the middle of the event's job, holding its row in an open
        # transaction (job timeout 20 s, two attempts)
        first = procs.start(hookline("worker"), env, tmp_path / "w1.log")
        wait_until(lambda: (tmp_path / "started_z-2").exists(), 30, "the job starting")
        started = time.monotonic()
        (tmp_path / "sleep").unlink()
        procs.start(hookline("worker"), env, tmp_path / "w2.log")
        # When it is frozen while the other worker takes its job for abandoned, meets the
        # row's lock on the last attempt and, unable to write the dead letter behind the same
        # lock, keeps the job for one more try a minute later
        os.killpg(first.pid, signal.SIGSTOP)

        def kept() -> bool:
            """The job waits for its one later try (not retried sooner, not run and gone)."""
            try:
                job = _job_of(redis_client, "z-2")
            except (AssertionError, NoSuchJobError):
                return False
            queue = Queue(settings.queue, connection=redis_client)
            due = queue.scheduled_job_registry.get_scheduled_time(job.id)
            return job.retries_left == 0 and due.timestamp() > time.time() + 30

        wait_until(kept, 60, "the job kept for a later try")
        # and wakes up past its job timeout and its handler's sleep (its attempt times out,
        # its transaction rolls back)
        time.sleep(max(0.0, 27 - (time.monotonic() - started)))
        os.killpg(first.pid, signal.SIGCONT)
        wait_until(
            lambda: "JobTimeoutException" in (tmp_path / "w1.log").read_text(),
            20,
            "the woken worker's attempt timing out",
        )
        time.sleep(2)
        assert first.poll() is None
        # Then the job is as its new holder left it: still kept for the later try, its
        # attempts spent, its errors the abandonment and the lock's; the woken worker's stale
        # view (one attempt made, retries left, its timeout) was written nowhere
        assert kept()
        job = _job_of(redis_client, "z-2")
        texts = [e.error for e in past_errors(job)]
        assert texts[0] == ABANDONED.error and "lock timeout" in texts[-1], texts
        assert not any(t.startswith("timed out") for t in texts), texts
        assert "after this worker lost it" in (tmp_path / "w1.log").read_text()
