"""The batch loop of :class:`~workers.worker.EventWorker`: many events per Redis round trip.

RQ's in-process worker spends several Redis round trips and most of its time on bookkeeping
for each job (dequeue, execution records, heartbeats, status, result). Webhook jobs are tiny,
so that bookkeeping dominated. RQ's own work loop dequeues the first job (blocking while the
queue is empty, as it always does) and hands it to :meth:`BatchRunner.run`, which:

1. takes up to :data:`BATCH_SIZE` - 1 more ids from the queue into RQ's intermediate list, and
   fetches them, one round trip each;
2. registers all of them as started, with an RQ Execution each, in one transaction
   (:func:`shared.rqcompat.start`): ``rq info``, ``Worker.get_current_executions()`` and RQ's
   stop-job command see every job of the batch;
3. applies the events in one transaction (:func:`workers.tasks.process_batch`); if any of them
   fails, none is, and each is applied again in a transaction of its own, under RQ's
   job-timeout death penalty, so one bad event never changes another's outcome;
4. records every success the way RQ's ``handle_job_success`` does, in one transaction
   (:func:`shared.rqcompat.record_successes`); a failure is decided by
   :mod:`workers.retries` and recorded the way RQ's ``handle_job_failure`` does.

Nothing is ever only in this process's memory: a ``kill -9`` at any point leaves every job in
RQ's queue, intermediate list or StartedJobRegistry, where the janitor finds it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
import traceback
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from types import FrameType
from typing import TYPE_CHECKING, Any, Protocol, cast

from redis.exceptions import RedisError
from rq import Queue
from rq.executions import Execution
from rq.job import Job
from rq.timeouts import JobTimeoutException, UnixSignalDeathPenalty

from shared import redisconn, rqcompat
from workers import retries, tasks

if TYPE_CHECKING:
    from redis import Redis
    from rq.worker import BaseWorker

log = logging.getLogger("hookline.worker")

#: events taken per round trip: large enough to amortise Redis, small enough that a crash
#: leaves little to recover and one slow event delays few others
BATCH_SIZE = 50
#: a batch shorter than this cannot have lost its jobs (their registry entries, written when
#: it started, live the execution TTL, 12 s): only a longer one asks Redis whether it still
#: holds them before writing anything for them
HOLD_CHECK_AFTER_SECONDS = 2.0
#: the signal an operator's stop sends this process (from RQ's pubsub thread) to interrupt
#: the event being applied, as RQ's forking worker kills its work horse
STOP_SIGNAL = signal.SIGUSR1

Running = list[tuple[Job, Execution]]


class BatchWorker(Protocol):
    """What the batch loop needs of the worker it runs in (``workers.worker.EventWorker``, an
    RQ worker): passed in, so this module needs nothing of that one."""

    connection: Redis
    serializer: Any
    #: held while a batch's executions are registered, recorded or renewed
    bookkeeping: AbstractContextManager[Any]
    execution_ttl: int
    job_timeout: int
    #: ``[worker] keep_finished_seconds``: how long an applied event's job stays in Redis
    keep_finished: int


class BatchRunner:
    """Runs the batches of one worker, and stops one of their jobs when asked."""

    def __init__(self, worker: BatchWorker) -> None:
        self.worker = worker
        #: the same worker, as RQ's own bookkeeping (shared.rqcompat) takes it
        self.rq = cast("BaseWorker", worker)
        # reentrant: the stop signal's handler takes it in the main thread, which may hold it
        self._lock = threading.RLock()
        #: job ids an operator asked to stop, while their batch runs
        self._stop: set[str] = set()
        #: the ids of the batch's jobs, and of those being applied right now (interruptible)
        self._batch: set[str] = set()
        self._applying: set[str] = set()
        #: when the running batch was registered as started (monotonic)
        self._started = 0.0

    # -- stopping (called from RQ's pubsub thread) -----------------------------------------

    def holds(self, job_id: str) -> bool:
        with self._lock:
            return job_id in self._batch

    def stop(self, job_id: str) -> bool:
        """Stop ``job_id`` if this worker holds it: skipped if not yet applied, interrupted
        if being applied. ``False`` when it is not this worker's."""
        with self._lock:
            if job_id not in self._batch:
                return False
            self._stop.add(job_id)
            interrupt = job_id in self._applying
        if interrupt:
            os.kill(os.getpid(), STOP_SIGNAL)
        return True

    def install_stop_handler(self) -> None:
        """In the main thread: the stop signal interrupts the events being applied, and is
        ignored between them (a stop then takes effect before the job's next step)."""
        signal.signal(STOP_SIGNAL, self._on_stop_signal)

    def _on_stop_signal(self, _signum: int, _frame: FrameType | None) -> None:
        with self._lock:
            hit = bool(self._applying & self._stop)
        if hit:
            raise retries.StopRequested("stopped by an operator")

    @contextlib.contextmanager
    def _interruptible(self, jobs: Sequence[Job]) -> Iterator[None]:
        with self._lock:
            self._applying = {job.id for job in jobs}
            stopped = bool(self._applying & self._stop)
        try:
            if stopped:  # asked while nothing was interruptible
                raise retries.StopRequested("stopped by an operator")
            yield
        finally:
            with self._lock:
                self._applying = set()

    def _stopped(self, job: Job) -> bool:
        with self._lock:
            return job.id in self._stop

    # -- a batch ---------------------------------------------------------------------------

    def run(self, first: Job, queue: Queue) -> None:
        """Run ``first`` (dequeued by RQ's loop) and up to BATCH_SIZE - 1 more jobs."""
        connection = self.worker.connection
        ids = rqcompat.take(queue, BATCH_SIZE - 1)
        found = rqcompat.fetch(connection, ids)
        vanished = [i for i, job in zip(ids, found, strict=True) if job is None]
        if vanished:  # expired or deleted meanwhile: nothing to run
            for job_id in vanished:
                connection.lrem(queue.intermediate_queue_key, 1, job_id)
        jobs = [first, *(job for job in found if job is not None)]
        with self._lock:
            self._batch = {job.id for job in jobs}
        try:
            with self.worker.bookkeeping:
                executions = rqcompat.start(self.rq, queue, jobs, self.worker.execution_ttl)
            self._started = time.monotonic()
            batch = list(zip(jobs, executions, strict=True))
            done = self._run_together(batch) if len(batch) > 1 else None
            if done is None:
                done = self._run_each(batch, queue)
            done = self._held(done)
            with self.worker.bookkeeping:
                rqcompat.record_successes(self.rq, done, self.worker.keep_finished)
        finally:
            with self._lock:
                self._batch = set()
                self._stop = set()

    def _run_together(self, batch: Running) -> list[tuple[Job, Execution, Any]] | None:
        """All events in one transaction, under one death penalty; ``None`` if any failed
        (or an operator stopped one of them)."""
        jobs = [job for job, _ in batch]
        if any(self._stopped(job) for job in jobs):
            return None
        timeout = max(int(job.timeout or self.worker.job_timeout) for job in jobs)
        try:
            with (
                self._interruptible(jobs),
                UnixSignalDeathPenalty(timeout, JobTimeoutException),
            ):
                outcomes = tasks.process_batch(jobs)
        except (JobTimeoutException, retries.StopRequested):
            outcomes = None
        if outcomes is None:
            return None
        return [(job, ex, out) for (job, ex), out in zip(batch, outcomes, strict=True)]

    def _held(self, done: list[tuple[Job, Execution, Any]]) -> list[tuple[Job, Execution, Any]]:
        """Those of ``done`` this worker still holds; the others (taken away while it was
        frozen) are let go unrecorded: their effects, if committed, stand (the event's row
        makes any other attempt a duplicate), and their bookkeeping is their new holder's."""
        if not done or not self._may_have_lost():
            return done
        held = rqcompat.still_held(self.rq, [(job, ex) for job, ex, _ in done])
        for (job, execution, _), mine in zip(done, held, strict=True):
            if not mine:
                self._let_go(job, execution, "finished")
        return [item for item, mine in zip(done, held, strict=True) if mine]

    def _may_have_lost(self) -> bool:
        return time.monotonic() - self._started >= HOLD_CHECK_AFTER_SECONDS

    def _still_holds(self, job: Job, execution: Execution) -> bool:
        return not self._may_have_lost() or rqcompat.still_held(self.rq, [(job, execution)])[0]

    def _let_go(self, job: Job, execution: Execution, what: str) -> None:
        rqcompat.let_go(self.rq, execution)
        log.warning(
            "job %s %s after this worker lost it (taken for abandoned while the worker was"
            " frozen): its outcome is left to the worker that holds it now",
            job.id,
            what,
        )

    def _run_each(self, batch: Running, queue: Queue) -> list[tuple[Job, Execution, Any]]:
        """One transaction per event: after a batch failed, or for a batch of one."""
        done = []
        for job, execution in batch:
            if len(batch) > 1 and not self._still_holds(job, execution):
                self._let_go(job, execution, "not run again")
                continue
            try:
                if self._stopped(job):
                    raise retries.StopRequested("stopped by an operator")
                timeout = int(job.timeout or self.worker.job_timeout)
                with (
                    self._interruptible([job]),
                    UnixSignalDeathPenalty(timeout, JobTimeoutException, job_id=job.id),
                ):
                    value = tasks.process(job)
            except Exception as err:
                exc_string = traceback.format_exc()
                failure = retries.Failure.of(err)
                if not self._still_holds(job, execution):
                    self._let_go(job, execution, f"failed ({failure.error})")
                    continue
                # if even this fails (the database is away as the event dies), the job stays
                # registered as running: it comes back as abandoned and is decided again
                ends = retries.attempt_failed(job, failure)
                try:
                    with self.worker.bookkeeping:
                        rqcompat.record_failure(
                            self.rq,
                            job,
                            queue,
                            execution,
                            exc_string,
                            retry=not ends,
                            stopped=failure is retries.STOPPED,
                        )
                except RedisError as err:
                    if not redisconn.refused_for_memory(err):
                        raise
                    # Redis is full: the job stays registered as running, unrenewed, for the
                    # janitor to decide again once there is room; the batch's other events go
                    # on, and their bookkeeping frees memory
                    rqcompat.let_go(self.rq, execution)
                    log.warning(
                        "Redis is full: job %s's failed attempt is left to the janitor", job.id
                    )
                continue
            done.append((job, execution, value))
        return done
