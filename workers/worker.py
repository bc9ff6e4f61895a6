"""``hookline worker``: an RQ worker tuned for webhook events.

What RQ's defaults get wrong here, and what this changes:

- Fork per job (RQ's ``Worker``) costs a process per event; :class:`EventWorker` runs jobs in
  process (RQ's ``SimpleWorker``), with RQ's own heartbeats, registries, retries and the
  job-timeout death penalty intact. Scale with processes (``--scale worker=N``).
- A job held by a worker killed with ``kill -9`` waits in RQ's StartedJobRegistry until its
  entry expires (job timeout + 60 s) *and* some worker runs maintenance, which RQ does only
  between jobs or when an idle worker's dequeue times out (~405 s): up to ~15 minutes. Here the
  entry expires at job timeout + 15 s and a janitor thread sweeps every
  :data:`JANITOR_SECONDS`, so abandoned work is retried (or dead-lettered) within job timeout
  + 25 s: 85 s with the default 60 s timeout.
- RQ only moves an abandoned last attempt to its FailedJobRegistry; the job's failure callback
  (set at enqueue, so it runs whichever process does the cleanup) writes the dead letter too.
- A Redis outage of a few seconds makes RQ's work loop raise; :func:`run` waits for Redis and
  resumes instead of letting the process die. The job's outcome is never lost: its effects are
  committed in the database, and a job whose success could not be recorded in Redis is
  recovered as abandoned and finds its ``webhook_events`` row (outcome "duplicate").
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Sequence
from typing import Any

from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rq import Queue, SimpleWorker
from rq.exceptions import StopRequested
from rq.job import Job
from rq.registry import StartedJobRegistry, clean_registries
from rq.timeouts import TimerDeathPenalty
from rq.worker.base import WorkerStatus

from shared import keys
from shared.config import Settings
from workers import runtime, tasks
from workers.batch import HEARTBEAT_MARGIN_SECONDS, BatchRunner

log = logging.getLogger("hookline.worker")

#: how often a worker looks for abandoned jobs (RQ's default is 600 s, and in practice only
#: when an idle worker's dequeue times out)
JANITOR_SECONDS = 10
#: a retry this overdue is moved by the janitor: RQ's scheduler is evidently not running
SCHEDULER_GRACE_SECONDS = 2
#: pause before reconnecting after Redis went away
RECONNECT_SECONDS = 1.0


class EventWorker(SimpleWorker):
    """RQ's in-process worker with a batch loop (:mod:`workers.batch`) and a janitor that
    recovers abandoned jobs promptly."""

    def __init__(
        self, queues: Sequence[Queue], connection: Redis, job_timeout: int = 180, **kwargs: Any
    ) -> None:
        kwargs.setdefault("maintenance_interval", JANITOR_SECONDS)
        super().__init__(list(queues), connection=connection, **kwargs)
        #: the configured job timeout (180 s is RQ's default)
        self.job_timeout = job_timeout
        self._janitor_stop = threading.Event()

    def handle_job_failure(
        self,
        job: Job,
        queue: Queue,
        started_job_registry: StartedJobRegistry | None = None,
        exc_string: str = "",
        execution: Any = None,
    ) -> None:
        """RQ calls this for failures it finds outside a job run, above all a job left in its
        intermediate list by a worker that died between dequeuing and starting it: record
        the attempt like any abandoned one (a dead letter if it was the last), then let RQ
        retry or fail it. Failures inside a run were recorded by the job itself and go to
        RQ's method directly (see :mod:`workers.batch`)."""
        if job.func_name == keys.JOB_FUNC:
            try:
                tasks.dead_letter_abandoned(job)
            except Exception:
                log.exception("could not record the failure of job %s", job.id)
        super().handle_job_failure(job, queue, started_job_registry, exc_string, execution)

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        # in process, a job cannot outlive its timeout (RQ's death penalty stops it), so the
        # registry entry needs only a small margin past it (RQ adds 60 s)
        return int(job.timeout or self.job_timeout) + HEARTBEAT_MARGIN_SECONDS

    def work(  # type: ignore[override]
        self,
        burst: bool = False,
        logging_level: str = "INFO",
        with_scheduler: bool = False,
        **_: Any,
    ) -> bool:
        """RQ's worker set-up (registration, scheduler, signals, teardown) around the batch
        loop instead of RQ's one-job-at-a-time loop."""
        self.bootstrap(logging_level)
        if with_scheduler:
            self._start_scheduler(burst, logging_level)
        self._install_signal_handlers()
        janitor = threading.Thread(target=self._janitor, name="hookline-janitor", daemon=True)
        janitor.start()
        runners = [BatchRunner(self, q) for q in self.queues]
        worked = 0
        try:
            while not self._stop_requested:
                self.check_for_suspension(burst)
                if self.should_run_maintenance_tasks:
                    self.run_maintenance_tasks()
                self.set_state(WorkerStatus.BUSY)
                taken = sum(runner.run_batch() for runner in runners)
                worked += taken
                if taken:
                    continue
                if burst:
                    break
                self.set_state(WorkerStatus.IDLE)
                for runner in runners:
                    moved = runner.wait_for_work()
                    if moved:
                        self.set_state(WorkerStatus.BUSY)
                        worked += runner.run_batch(moved)
                        break
        except StopRequested:
            pass
        finally:
            self._janitor_stop.set()
            janitor.join(timeout=5)
            self.teardown()
        return bool(worked)

    def _janitor(self) -> None:
        """RQ cleans its registries only between jobs and when an idle worker's blocking
        dequeue times out (every ~405 s): too late for a job whose worker was killed. This
        thread does it every :data:`JANITOR_SECONDS`, one worker at a time (RQ's lock)."""
        while not self._janitor_stop.wait(JANITOR_SECONDS):
            try:
                sweep(self.queues, self)
            except Exception as err:
                log.debug("janitor round skipped: %s", type(err).__name__)


def sweep(queues: Sequence[Queue], worker: SimpleWorker) -> None:
    """One maintenance round: abandoned jobs are retried or failed (RQ then calls our failure
    callback, which dead-letters a last attempt), jobs stuck between dequeue and start are
    handled, and due retries are moved to their queue."""
    for queue in queues:
        if not queue.acquire_maintenance_lock():
            continue
        try:
            # off the main thread RQ's SIGALRM death penalty cannot guard the failure
            # callback, so this registry uses the timer-based one
            StartedJobRegistry(
                name=queue.name, connection=queue.connection, death_penalty_class=TimerDeathPenalty
            ).cleanup()
            clean_registries(queue)
            queue.intermediate_queue.cleanup(worker, queue)
        finally:
            queue.release_maintenance_lock()
    # RQ's scheduler (a child process of one worker) moves due retries every second; if it
    # died with its worker, its lock keeps others from taking over for a while: move what
    # is overdue meanwhile
    enqueue_due_retries(queues, overdue_seconds=SCHEDULER_GRACE_SECONDS)


def connect(settings: Settings) -> Redis:
    return Redis.from_url(
        settings.redis_url, socket_timeout=10, socket_connect_timeout=5, health_check_interval=15
    )


def queues_for(settings: Settings, names: Sequence[str], connection: Redis) -> list[Queue]:
    return [Queue(name, connection=connection) for name in (names or [settings.queue])]


def enqueue_due_retries(queues: Sequence[Queue], overdue_seconds: float = 0) -> int:
    """Move retries due ``overdue_seconds`` ago or more from the ScheduledJobRegistry to their
    queue (what RQ's scheduler does every second in a long-running worker). ``ZREM`` is the
    claim: of two processes moving the same job, only the one that removed it enqueues it."""
    moved = 0
    for queue in queues:
        registry = queue.scheduled_job_registry
        for job_id in registry.get_jobs_to_schedule(int(time.time() - overdue_seconds)):
            if not queue.connection.zrem(registry.key, job_id):
                continue
            try:
                job = Job.fetch(job_id, connection=queue.connection)
            except Exception:  # noqa: S112 - expired or deleted meanwhile
                continue
            queue._enqueue_job(job)
            moved += 1
    return moved


def drain(worker: EventWorker, queues: Sequence[Queue]) -> None:
    """``--burst``: run until the queues are empty and no retry is due. Retries scheduled for
    later stay scheduled (a long-running worker will take them)."""
    sweep(queues, worker)
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
    timeout = settings.worker.job_timeout_seconds
    worker = EventWorker(queues, connection=connection, job_timeout=timeout)
    if burst:
        drain(worker, queues)
        return
    while True:
        try:
            worker.work(with_scheduler=True, logging_level=rq_log_level)
            return
        except (RedisConnectionError, RedisTimeoutError, OSError) as err:
            if worker._stop_requested or worker._shutdown_requested_date is not None:
                return  # asked to stop: Redis being away is no reason to stay
            # RQ's loop gave up on Redis; wait for it and resume with a fresh registration
            log.warning("redis unavailable (%s); reconnecting", type(err).__name__)
            _wait_for_redis(connection)
            worker = EventWorker(queues, connection=connection, job_timeout=timeout)


def _stop_waiting(_signum: int, _frame: Any) -> None:
    raise SystemExit(0)


def _wait_for_redis(connection: Redis) -> None:
    """Until Redis answers; SIGTERM or SIGINT meanwhile ends the process (nothing is held)."""
    signal.signal(signal.SIGTERM, _stop_waiting)
    signal.signal(signal.SIGINT, _stop_waiting)
    while True:
        time.sleep(RECONNECT_SECONDS)
        try:
            connection.ping()
            return
        except (RedisConnectionError, RedisTimeoutError, OSError):
            continue
