"""``hookline worker``: an RQ worker tuned for webhook events, on RQ's public ground.

RQ's own ``SimpleWorker.work`` loop runs it (registration, scheduler, signals, suspension,
maintenance, teardown); hookline overrides only RQ's documented extension points:
``execute_job`` (a batch instead of one job, :mod:`workers.batch`), ``get_heartbeat_ttl``,
``bootstrap`` / ``teardown`` (two threads), ``clean_registries`` (the janitor's sweep),
``handle_payload`` / ``request_stop_execution`` (RQ's stop commands reach every job of a batch),
``handle_warm_shutdown_request`` and ``unsubscribe``. What RQ's defaults get wrong here, and what
this changes:

- Fork per job (RQ's ``Worker``) costs a process per event; this runs jobs in process with
  RQ's heartbeats, registries, retries and job-timeout death penalty. Scale with processes.
- Abandoned work. RQ's registry entry for a running job lives the job's timeout + 60 s, and
  RQ looks for expired entries between jobs or when an idle worker's dequeue times out
  (~405 s): a job whose worker was killed waited up to ~15 minutes, longer with a long
  timeout. Here the entry lives :data:`EXECUTION_TTL_SECONDS` and a heartbeat thread renews
  it every :data:`HEARTBEAT_SECONDS` while the worker lives, whatever the job's timeout (the
  death penalty still stops a job that overruns it); a worker that cannot heartbeat is gone
  or frozen. A janitor thread in every worker sweeps every :data:`JANITOR_SECONDS`, so the
  jobs of a worker killed with ``kill -9`` (or SIGSTOPped) are retried or dead-lettered within
  ~20 s, then run again after their backoff.
- A Redis outage of a few seconds makes RQ's loop give up; :func:`run` waits for Redis and
  starts again instead of letting the process exit. The job's outcome is never lost: its
  effects are committed in the database, and a job whose success could not be recorded in
  Redis is recovered as abandoned and finds its ``webhook_events`` row ("duplicate").
- A stop that waited a minute. RQ's teardown sends UNSUBSCRIBE, whose reply wakes its command
  listener thread, and only then tells that thread to stop; a thread that reads the reply
  first loops once more, finds itself subscribed to nothing and waits for a subscription for
  RQ's 60 s ``sleep_time``, while redis-py's ``stop()`` joins it without a bound. Which thread
  wins is up to the scheduler: on a busy machine about half the runs of two burst workers kept
  one a minute past the last event, and SIGTERM or ``hookline dev``'s Ctrl-C (which kills
  after 10 s) hit the same wait. :meth:`EventWorker.unsubscribe` tells the thread first.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import signal
import threading
import time
from collections.abc import Sequence
from typing import Any

from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import LockError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rq import Queue, SimpleWorker
from rq.command import parse_payload
from rq.job import Job
from rq.registry import StartedJobRegistry, clean_registries
from rq.timeouts import TimerDeathPenalty
from rq.utils import now
from rq.worker import WorkerStatus
from rq.worker_registration import clean_worker_registry
from sqlalchemy.exc import SQLAlchemyError

from shared import eventlog, keys, redisconn, rqcompat, shards
from shared.config import Settings
from shared.rqcompat import EventJob, JobSerializer
from workers import retries, runtime
from workers.batch import BatchRunner

log = logging.getLogger("hookline.worker")

#: how long a running job's registry entry lives without a heartbeat: the longest a worker
#: can be unreachable (or frozen) before its jobs are taken for abandoned
EXECUTION_TTL_SECONDS = 12
#: how often a worker renews its running jobs' entries and its own key
HEARTBEAT_SECONDS = 5
#: how often a worker's janitor looks for abandoned jobs, stuck ones and overdue retries
JANITOR_SECONDS = 5
#: a job id left in RQ's intermediate list, unstarted, this long: its worker died taking it
STUCK_SECONDS = 10
#: a retry this overdue is moved by the janitor: RQ's scheduler is evidently not running
SCHEDULER_GRACE_SECONDS = 2
#: RQ's full registry maintenance (finished, failed, deferred...) in the main loop, and the
#: event log's pruning
MAINTENANCE_SECONDS = 60
#: event bodies deleted per maintenance round at most (1,000 a chunk): 1.4 million a day
PRUNE_CHUNKS_PER_ROUND = 20
#: RQ keeps a worker's key this long past its last heartbeat (+ 60 s); the heartbeat thread
#: renews it, and an idle worker's blocking dequeue waits this - 15 s at most
WORKER_TTL_SECONDS = 35
#: pause before reconnecting after Redis went away
RECONNECT_SECONDS = 1.0
#: a full Redis is relieved (:func:`relieve`) until its memory is below this share of its
#: ``maxmemory``: room for RQ's own registration and janitor, which write before they free
RELIEF_BELOW = 0.97
#: how long a stopping worker waits for RQ's command listener thread to end (it ends within a
#: round trip, woken by the reply to its UNSUBSCRIBE; longer than RQ's 1 s for a loaded
#: machine: a daemon thread left behind never holds the process up)
LISTENER_STOP_SECONDS = 5.0


class EventWorker(SimpleWorker):
    """RQ's in-process worker with a batch loop, a heartbeat and a janitor."""

    def __init__(
        self,
        queues: Sequence[Queue],
        connection: Redis,
        job_timeout: int = 180,
        keep_finished: int = 0,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("serializer", JobSerializer)
        kwargs.setdefault("job_class", EventJob)
        kwargs.setdefault("maintenance_interval", MAINTENANCE_SECONDS)
        kwargs.setdefault("worker_ttl", WORKER_TTL_SECONDS)
        super().__init__(list(queues), connection=connection, **kwargs)
        #: the configured job timeout (180 s is RQ's default); a job carries its own too
        self.job_timeout = job_timeout
        #: ``[worker] keep_finished_seconds``: how long an applied event's job stays in Redis
        self.keep_finished = keep_finished
        self.execution_ttl = EXECUTION_TTL_SECONDS
        self.batch = BatchRunner(self)
        #: held while the batch's executions are registered, recorded or renewed, so the
        #: heartbeat thread never renews an execution the batch has just removed
        self.bookkeeping = threading.Lock()
        #: a warm stop (SIGTERM, SIGINT, RQ's shutdown command) was asked for
        self.stopping = False
        self._threads_stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # -- RQ's extension points -------------------------------------------------------------

    def execute_job(self, job: Job, queue: Queue) -> None:
        # busy at once: a stop asked for from here on lets the batch finish (RQ's own worker
        # becomes busy a moment later, when it registers the job)
        self.set_state(WorkerStatus.BUSY)
        self.batch.run(job, queue)
        self.set_state(WorkerStatus.IDLE)

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        # the heartbeat thread renews running jobs' entries while this process lives, so they
        # need not outlive it by the job's timeout (RQ: timeout + 60 s)
        return self.execution_ttl

    def bootstrap(self, *args: Any, **kwargs: Any) -> None:
        super().bootstrap(*args, **kwargs)
        if threading.current_thread() is threading.main_thread():
            self.batch.install_stop_handler()
        self._threads_stop.clear()
        self._threads = [
            threading.Thread(target=self._every, args=(HEARTBEAT_SECONDS, self._beat), daemon=True),
            threading.Thread(target=self._every, args=(JANITOR_SECONDS, self._sweep), daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def teardown(self) -> None:
        self._threads_stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
        super().teardown()

    def handle_warm_shutdown_request(self) -> None:
        self.stopping = True
        super().handle_warm_shutdown_request()

    def unsubscribe(self) -> None:
        """RQ's, in the order that cannot wait: the listener thread is told to stop before
        the UNSUBSCRIBE whose reply wakes it, so it ends at that reply instead of looping
        once more into redis-py's wait for a subscription (RQ's ``sleep_time``, 60 s), which
        redis-py's ``stop()`` would join without a bound."""
        thread, pubsub = self.pubsub_thread, self.pubsub
        if thread is None or pubsub is None:
            super().unsubscribe()
            return
        if "timeout" in inspect.signature(thread.stop).parameters:
            thread.stop(timeout=0)  # the flag only: joined below, once woken
        else:
            thread.stop()  # an older redis-py: stop() only sets the flag
        pubsub.unsubscribe()
        thread.join(timeout=LISTENER_STOP_SECONDS)
        if not thread.is_alive():  # else closing under its read would only make it raise
            pubsub.close()

    def clean_registries(self) -> None:
        """RQ's periodic maintenance, in the main loop: the janitor's sweep, and RQ's own
        cleaning of its other registries (finished, failed, deferred...)."""
        sweep(self.queues, self, full=True)
        if keys.this_shard() in (None, 0):  # the event log is one: the home shard prunes it
            prune_archive(self.connection)
        self.last_cleaned_at = now()  # type: ignore[assignment]  # RQ types it None only

    def handle_payload(self, message: dict[Any, Any]) -> None:
        """RQ's stop-job command names one job: any job of the running batch is stopped
        (RQ's own handler looks only at the first of a worker's executions)."""
        payload = parse_payload(message)
        if payload.get("command") == "stop-job" and self.batch.stop(str(payload.get("job_id"))):
            return
        super().handle_payload(message)

    def request_stop_execution(self, execution_id: str) -> None:
        execution = self.executions.get(execution_id)
        if execution is None or not self.batch.stop(execution.job_id):
            super().request_stop_execution(execution_id)

    # -- the two threads -------------------------------------------------------------------

    def _every(self, seconds: float, action: Any) -> None:
        while not self._threads_stop.wait(seconds):
            try:
                action()
            except Exception as err:
                log.debug("%s skipped: %s", action.__name__, type(err).__name__)

    def _beat(self) -> None:
        with self.bookkeeping:
            rqcompat.heartbeat(self, self.execution_ttl)

    def _sweep(self) -> None:
        sweep(self.queues, self)


def sweep(queues: Sequence[Queue], worker: EventWorker, *, full: bool = False) -> None:
    """One janitor round over ``queues``, by one worker at a time (a short lock of hookline's:
    RQ's own maintenance lock lives 15 minutes, which a killed worker would leave behind):
    abandoned jobs are retried or dead-lettered (RQ's cleanup calls the job's failure
    callback), jobs stuck between dequeue and start likewise, overdue retries are moved to
    their queue; ``full`` adds RQ's cleaning of its other registries."""
    connection = worker.connection
    for queue in queues:
        # redis-py's lock: its own token, so a worker that thaws late never frees another's
        lock = connection.lock(keys.janitor_lock(queue.name), timeout=keys.JANITOR_LOCK_SECONDS)
        if not lock.acquire(blocking=False):
            continue
        try:
            # off the main thread RQ's SIGALRM death penalty cannot guard the failure
            # callback, so this registry uses the timer-based one
            StartedJobRegistry(
                name=queue.name,
                connection=connection,
                serializer=JobSerializer,
                job_class=EventJob,
                death_penalty_class=TimerDeathPenalty,
            ).cleanup()
            for job in rqcompat.stuck_in_intermediate(queue, STUCK_SECONDS):
                ends = retries.attempt_failed(job, retries.STUCK)
                rqcompat.record_failure(
                    worker, job, queue, None, retries.STUCK.error, retry=not ends
                )
                queue.intermediate_queue.remove(job.id)
            clean_worker_registry(queue)
            if full:
                clean_registries(queue)
        finally:
            with contextlib.suppress(LockError):
                lock.release()
        # RQ's scheduler (a child process of one worker) moves due retries every second; if
        # it died with its worker, its lock keeps others from taking over for a while
        rqcompat.move_due_retries(queue, overdue_seconds=SCHEDULER_GRACE_SECONDS)


def prune_archive(connection: Redis) -> None:
    """The event log's bodies past ``[archive] retention_days``, a bounded number of chunks
    per maintenance round, by one worker at a time."""
    lock = connection.lock(keys.ARCHIVE_LOCK, timeout=keys.JANITOR_LOCK_SECONDS * 6)
    if not lock.acquire(blocking=False):
        return
    try:
        rt = runtime.current()
        pruned = eventlog.prune(
            rt.engine, rt.settings.archive.retention_days, max_chunks=PRUNE_CHUNKS_PER_ROUND
        )
        if pruned:
            log.info("pruned %d event bodies past the retention", pruned)
    except SQLAlchemyError as err:  # the database away: next round
        # (nothing broader: a SIGTERM while idle reaches here as RQ's stop, which must go on)
        log.warning("could not prune event bodies: %s", type(err).__name__)
    finally:
        with contextlib.suppress(LockError):
            lock.release()


def connect(settings: Settings, shard: keys.Shard = keys.UNSHARDED) -> Redis:
    """The worker's Redis (through Sentinel when ``redis_url`` says so; on a cluster, the
    primary serving ``shard``): checked at start, so a Sentinel service no sentinel knows,
    or a cluster with slots nobody serves, stops the worker with one line."""
    redisconn.check_at_start(settings.redis_url)
    return redisconn.connect(
        settings.redis_url,
        shard.slot,
        socket_timeout=10,
        socket_connect_timeout=5,
        health_check_interval=15,
    )


def queues_for(settings: Settings, names: Sequence[str], connection: Redis) -> list[Queue]:
    return [
        Queue(name, connection=connection, serializer=JobSerializer, job_class=EventJob)
        for name in (names or [settings.queue])
    ]


def redis_full(connection: Redis, fraction: float = 1.0) -> bool:
    """Whether Redis's memory is at ``fraction`` of its ``maxmemory`` or past it (never, with
    no ``maxmemory``)."""
    info = connection.info("memory")
    maximum = int(info.get("maxmemory", 0))
    return maximum > 0 and int(info.get("used_memory", 0)) >= maximum * fraction


def relieve(worker: EventWorker, queues: Sequence[Queue]) -> int:
    """While Redis is (nearly) full, take and apply batches with hookline's own scripts only:
    RQ's registration, dequeue and janitor write first and are refused at ``maxmemory``,
    while these free memory with their first writes (LPOP, LREM, DEL), which Redis then lets
    the rest of the script follow, and an applied event leaves Redis. Returns the batches
    run; stops once Redis has room again (:data:`RELIEF_BELOW`), or when nothing is queued.
    A batch whose bookkeeping is refused anyway leaves its jobs where the janitor finds them
    once there is room."""
    batches = 0
    ran = False
    while redis_full(worker.connection, RELIEF_BELOW):
        progressed = False
        for queue in queues:
            ids = rqcompat.take(queue, 1)
            if not ids:
                continue
            progressed = True
            [job] = rqcompat.fetch(worker.connection, ids)
            if job is None:
                worker.connection.lrem(queue.intermediate_queue_key, 1, ids[0])
                continue
            ran = True
            try:
                worker.batch.run(job, queue)
                batches += 1
            except RedisError as err:
                if not redisconn.refused_for_memory(err):
                    raise
                log.warning("Redis refused a batch's bookkeeping; the janitor will take it")
                # what the batch registered as running stays so, unrenewed: the heartbeat
                # thread of RQ's loop, next, must not keep it alive, or no janitor ever would
                worker.executions.clear()
        if not progressed:
            log.warning(
                "Redis is full and no event is queued to free it: raise its maxmemory, or"
                " delete what else it holds"
            )
            break
    if batches:
        log.info("Redis was full: %d batches applied to make room", batches)
    if ran:
        # the batches' bookkeeping wrote the worker's hash (a refused one too: its first
        # script did); RQ's registration, next, would take it for another live worker of the
        # same name and stop the process
        worker.connection.delete(worker.key)
    return batches


def drain(worker: EventWorker, queues: Sequence[Queue]) -> None:
    """``--burst``: run until the queues are empty and no retry is due, or until stopped
    (SIGTERM/SIGINT finish the current batch first; what is left stays queued). Retries
    scheduled for later stay scheduled (a long-running worker will take them)."""
    relieve(worker, queues)
    sweep(queues, worker, full=True)
    while not worker.stopping:
        for queue in queues:
            rqcompat.move_due_retries(queue)
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
    """Take jobs until stopped (SIGTERM/SIGINT finish the current batch first)."""
    shard = shards.process_shard(settings)
    runtime.configure(settings)
    connection = connect(settings, shard)
    queues = queues_for(settings, queue_names, connection)
    timeout = settings.worker.job_timeout_seconds
    keep = settings.worker.keep_finished_seconds
    worker = EventWorker(queues, connection=connection, job_timeout=timeout, keep_finished=keep)
    if burst:
        drain(worker, queues)
        return
    while True:
        try:
            relieve(worker, queues)
            worker.work(with_scheduler=True, logging_level=rq_log_level)
        except (RedisConnectionError, RedisTimeoutError, OSError) as err:
            log.warning("redis unavailable (%s)", type(err).__name__)
        except RedisError as err:
            if not redisconn.refused_for_memory(err):
                raise
            log.warning("Redis is full (maxmemory): applying queued events to make room")
        if worker.stopping:
            return
        # RQ's loop gave up (on Redis, most likely); wait for it and start again with a
        # fresh registration
        log.warning("the work loop ended unasked; reconnecting")
        _wait_for_redis(connection)
        worker = EventWorker(queues, connection=connection, job_timeout=timeout, keep_finished=keep)


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
