"""``hookline worker``: an RQ worker tuned for webhook events.

What RQ's defaults get wrong here, and what this changes:

- Fork per job (RQ's ``Worker``) costs a process per event; :class:`EventWorker` runs jobs in
  process (RQ's ``SimpleWorker``), with RQ's own heartbeats, registries, retries and the
  job-timeout death penalty intact. Scale with processes (``--scale worker=N``).
- A job held by a worker killed with ``kill -9`` waits in RQ's StartedJobRegistry until its
  heartbeat expires (job timeout + 60 s) *and* a worker runs maintenance, every 10 minutes by
  default: about 15 minutes in all. Maintenance runs every :data:`MAINTENANCE_SECONDS` here,
  so abandoned work is retried (or dead-lettered) within job timeout + 60 + 30 s.
- RQ only moves an abandoned last attempt to its FailedJobRegistry; an exception handler here
  writes the dead letter too.
- A Redis outage of a few seconds makes RQ's work loop raise; :func:`run` waits for Redis and
  resumes instead of letting the process die. The job's outcome is never lost: its effects are
  committed in the database, and a job whose success could not be recorded in Redis is
  recovered as abandoned and finds its ``webhook_events`` row (outcome "duplicate").
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rq import Queue, SimpleWorker
from rq.exceptions import AbandonedJobError
from rq.job import Job

from shared import keys
from shared.config import Settings
from workers import runtime, tasks

log = logging.getLogger("hookline.worker")

#: how often a worker looks for abandoned jobs (RQ's default is 600 s)
MAINTENANCE_SECONDS = 30
#: pause before reconnecting after Redis went away
RECONNECT_SECONDS = 1.0


def _abandoned_handler(
    job: Job, exc_type: type[BaseException], _exc: BaseException, _tb: Any
) -> bool:
    """RQ exception handler: acts only on our jobs that RQ gave up on because their worker
    died (other failures were already handled inside the job)."""
    if issubclass(exc_type, AbandonedJobError) and job.func_name == keys.JOB_FUNC:
        try:
            tasks.dead_letter_abandoned(job)
        except Exception:
            log.exception("could not record abandoned job %s", job.id)
    return True


class EventWorker(SimpleWorker):
    """RQ's in-process worker with hookline's maintenance cadence and abandoned-job handler."""

    def __init__(self, queues: Sequence[Queue], connection: Redis, **kwargs: Any) -> None:
        kwargs.setdefault("maintenance_interval", MAINTENANCE_SECONDS)
        kwargs.setdefault("exception_handlers", [_abandoned_handler])
        super().__init__(list(queues), connection=connection, **kwargs)


def connect(settings: Settings) -> Redis:
    return Redis.from_url(
        settings.redis_url, socket_timeout=10, socket_connect_timeout=5, health_check_interval=15
    )


def queues_for(settings: Settings, names: Sequence[str], connection: Redis) -> list[Queue]:
    return [Queue(name, connection=connection) for name in (names or [settings.queue])]


def enqueue_due_retries(queues: Sequence[Queue]) -> int:
    """Move retries whose time has come from the ScheduledJobRegistry to their queue (what
    RQ's scheduler does every second in a long-running worker)."""
    moved = 0
    for queue in queues:
        registry = queue.scheduled_job_registry
        for job_id in registry.get_jobs_to_schedule(time.time()):
            try:
                job = Job.fetch(job_id, connection=queue.connection)
            except Exception:
                registry.remove(job_id)
                continue
            registry.remove(job)
            queue._enqueue_job(job)
            moved += 1
    return moved


def drain(worker: EventWorker, queues: Sequence[Queue]) -> None:
    """``--burst``: run until the queues are empty and no retry is due. Retries scheduled for
    later stay scheduled (a long-running worker will take them)."""
    worker.clean_registries()  # type: ignore[no-untyped-call]
    while True:
        enqueue_due_retries(queues)
        if not any(q.count for q in queues):
            return
        worker.work(burst=True, with_scheduler=False, logging_level="WARNING")


def run(
    settings: Settings,
    queue_names: Sequence[str] = (),
    *,
    burst: bool = False,
    rq_log_level: str = "INFO",
) -> None:
    """Take jobs until stopped (SIGTERM/SIGINT finish the current job first)."""
    runtime.configure(settings)
    connection = connect(settings)
    queues = queues_for(settings, queue_names, connection)
    worker = EventWorker(queues, connection=connection)
    if burst:
        drain(worker, queues)
        return
    while True:
        try:
            worker.work(with_scheduler=True, logging_level=rq_log_level)
            return
        except (RedisConnectionError, RedisTimeoutError, OSError) as err:
            # RQ's loop gave up on Redis; wait for it and resume with a fresh registration
            log.warning("redis unavailable (%s); reconnecting", type(err).__name__)
            _wait_for_redis(connection)
            worker = EventWorker(queues, connection=connection)


def _wait_for_redis(connection: Redis) -> None:
    while True:
        time.sleep(RECONNECT_SECONDS)
        try:
            connection.ping()
            return
        except (RedisConnectionError, RedisTimeoutError, OSError):
            continue
