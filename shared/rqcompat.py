"""hookline's one layer over RQ: everything hookline does with RQ that RQ's public API does
not offer as such, in one place a maintainer reads before upgrading RQ.

What is here, and how each piece is held to RQ:

- :class:`JobSerializer`: job data is JSON (RQ's JSON format), so nothing an attacker writes
  into Redis can run code in a worker. Jobs queued by hookline before it (pickled) are still
  read, by an unpickler that builds plain data only and refuses every import.
- :func:`queued_job_fields`: the hash RQ's ``Queue.enqueue_job`` writes for an event job,
  built once from a job RQ builds itself and filled in per event, so the ingress can write it
  inside its claim-and-enqueue script. ``tests/test_rqcompat.py`` holds it equal to what RQ
  writes.
- The batch engine's bookkeeping: RQ's worker registers, runs and records one job at a time,
  each with a few round trips and ~30 Redis commands. :func:`take`, :func:`fetch`,
  :func:`start`, :func:`record_successes` and :func:`record_failure` do for a whole batch what
  RQ's ``SimpleWorker.execute_job`` / ``handle_job_success`` / ``handle_job_failure`` do for
  one job: the first three and a success that is not kept (``result_ttl`` 0, the default) as
  Lua scripts writing the keys RQ's objects name (``Execution.create`` and
  ``Job.prepare_for_execution`` set the objects up; ~8 commands per event in all, those Redis
  takes many members at once shared by the batch), a kept success and a failure by RQ's own
  methods in one transaction. Each script's first writes free memory (LPOP, LREM, DEL), so
  Redis at ``maxmemory`` lets the rest through: a full Redis drains. ``tests/test_rqcompat.py``
  runs the same job through RQ's own worker and through these and compares every key they
  leave, timestamps aside.
- :func:`stop_requested_for`: the one private name used, RQ's way of marking a job stopped.
- :func:`stuck_in_intermediate` and :func:`move_due_retries`: RQ's own recovery steps, run
  sooner than RQ runs them (see ``workers.worker``).
- :func:`read_queues`: what the ingress's gauges show of each queue (depth, the head job's
  ``enqueued_at``, retries scheduled, workers alive), read with the asyncio client straight
  from RQ's keys in three round trips, without RQ's classes (which are synchronous, and whose
  ``count`` and ``Worker.all`` clean up as a side effect).
- :func:`read_counts`, :func:`read_workers` and :func:`enqueue`: what the commands and the
  console read and write in every shard. RQ's classes name keys under the one
  ``RQ_KEY_PREFIX`` their process imported RQ with, and a shard's keys are RQ's names under
  the shard's prefix (:mod:`shared.keys`), so a process acting on several shards reads RQ's
  keys (as ``Worker.refresh`` / ``get_current_executions`` read them) and writes what
  ``Queue.enqueue_job`` writes itself (``tests/test_rqcompat.py`` holds them equal).

Every key comes from RQ's classes (:mod:`shared.keys`), so ``RQ_KEY_PREFIX`` moves them all,
and a shard's prefix moves them into the shard.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import pickle
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from redis.exceptions import WatchError
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.results import Result
from rq.utils import now, utcformat, utcparse

from shared import keys

if TYPE_CHECKING:
    import redis.asyncio as aioredis
    from redis import Redis
    from rq import Queue
    from rq.worker import BaseWorker

from rq.worker import WorkerStatus


class _PlainUnpickler(pickle.Unpickler):
    """Reads plain data only (str, bytes, numbers, lists, tuples, dicts, None, booleans):
    any class or function named in the data is refused, so loading cannot run code."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refused to load {module}.{name}")


class JobSerializer:
    """RQ's JSON serializer, reading hookline's earlier pickled jobs as plain data.

    Registered with RQ wherever hookline builds a ``Queue``, a ``Job`` or a worker; RQ's own
    tools take it as ``--serializer shared.rqcompat.JobSerializer``."""

    @staticmethod
    def dumps(obj: Any) -> bytes:
        """Compact JSON, by orjson (the same bytes as ``json.dumps``, a tenth of the time);
        what orjson refuses (a header with a lone surrogate, an integer past 64 bits) by the
        standard library."""
        try:
            return orjson.dumps(obj)
        except (orjson.JSONEncodeError, TypeError):
            return json.dumps(obj, separators=(",", ":")).encode("utf-8")

    @staticmethod
    def loads(data: bytes) -> Any:
        if data[:1] == b"\x80":  # a pickle: a job queued before hookline wrote JSON
            return _PlainUnpickler(io.BytesIO(data)).load()
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:  # what only the standard library reads (see dumps)
            return json.loads(data.decode("utf-8"))


class EventJob(Job):
    """RQ's job, retried atomically. RQ's ``Job.retry`` writes a job's status ``scheduled``
    straight away, outside the transaction that then takes it out of the StartedJobRegistry
    and puts it in the ScheduledJobRegistry. When that transaction is refused (a Redis at
    ``maxmemory`` refuses it while the single write before it went through) the job is left
    ``scheduled`` in no registry: RQ's janitor skips it (it is not ``started``) and drops its
    entry, and nothing ever runs it again. Here the status goes in the same transaction, so
    a refused retry leaves the job ``started`` where it was, for the janitor to retry once
    Redis has room. Used wherever hookline builds a queue, a registry or a job that a worker
    may retry (``job_class``)."""

    def retry(self, queue: Queue, pipeline: Any) -> None:
        interval = self.get_retry_interval()
        if not interval:  # enqueued again at once: RQ writes that in the transaction
            super().retry(queue, pipeline)
            return
        assert self.retries_left
        self.retries_left = self.retries_left - 1
        self.set_status(JobStatus.SCHEDULED, pipeline=pipeline)
        queue.schedule_job(self, now() + dt.timedelta(seconds=interval), pipeline=pipeline)
        self.log.info(
            "Job %s: scheduled for retry in %s s, %s remaining",
            self.id,
            interval,
            self.retries_left,
        )


# -- the ingress: what RQ writes for a queued job ------------------------------------------

#: the fields of a queued event job that differ from one event to the next
PER_EVENT_FIELDS = frozenset(
    {"created_at", "enqueued_at", "data", "description", "retry_intervals"}
)


def queued_job_fields(job: Job) -> list[Any]:
    """The hash RQ's ``Queue.enqueue_job`` writes for ``job`` (a job RQ built with
    ``Job.create(..., status=JobStatus.QUEUED)`` and ``origin`` set), as field/value pairs,
    with every value as Redis stores it (text or bytes)."""
    out: list[Any] = []
    for field, value in job.to_dict().items():
        if value is None:
            continue
        out += [field, value.value if isinstance(value, JobStatus) else value]
    return out


# -- the workers: a batch of jobs with RQ's bookkeeping ------------------------------------

# KEYS[1]: the queue's list; KEYS[2]: its intermediate list (where RQ's own dequeue moves an id
# before the job is registered as started). ARGV[1]: how many ids to move at most.
# LPOP first: on a Redis at ``maxmemory`` a script's first write must be one that frees memory
# (Redis then lets the rest of the script write), and LMOVE (RQ's) is refused there.
TAKE = """
local ids = redis.call("LPOP", KEYS[1], ARGV[1])
if not ids then return {} end
redis.call("RPUSH", KEYS[2], unpack(ids))
return ids
"""


def fetch(connection: Redis, ids: Sequence[str]) -> list[Job | None]:
    """The jobs of ``ids`` (``None`` for one that is gone), as RQ's ``Job.fetch_many`` reads
    them but outside a transaction: Redis refuses every command of a MULTI block at
    ``maxmemory``, reads too, and a full Redis must still be drained."""
    if not ids:
        return []
    with connection.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.hgetall(Job.key_for(job_id))
        found = pipe.execute()
    jobs: list[Job | None] = []
    for job_id, data in zip(ids, found, strict=True):
        if not data:
            jobs.append(None)
            continue
        job = EventJob(job_id, connection=connection, serializer=JobSerializer)
        job.restore(data)
        jobs.append(job)
    return jobs


def take(queue: Queue, count: int) -> list[str]:
    """Move up to ``count`` job ids from ``queue`` into its intermediate list, as RQ's own
    dequeue does with one (one round trip, two commands for all of them)."""
    if count <= 0:
        return []
    script = queue.connection.register_script(TAKE)
    ids = script(keys=[queue.key, queue.intermediate_queue_key], args=[count])
    return [i.decode() if isinstance(i, bytes) else str(i) for i in ids]


# Registering a batch as started: for each job what RQ's ``Execution.create`` and
# ``Job.prepare_for_execution`` write (the Execution's hash, its entries in the job's
# ExecutionRegistry, the StartedJobRegistry and the worker's executions set; the job's status,
# start, heartbeat and worker, kept from expiring), the worker busy with its heartbeat, the
# ids out of the intermediate list. One script, commands shared by the batch where Redis takes
# many members at once (ZADD, SADD, DEL). The first writes free memory (LREM, DEL), so a Redis at
# ``maxmemory`` lets the rest through: a full Redis drains.
# KEYS[1] the intermediate list, KEYS[2] the StartedJobRegistry, KEYS[3] the worker's hash,
#   KEYS[4] the worker's executions set; then per job i (1..n): KEYS[2 + 3i] its hash,
#   KEYS[3 + 3i] its Execution's hash, KEYS[4 + 3i] its ExecutionRegistry; then the
#   intermediate list's first-seen keys of the jobs (forgotten: a sweep may have seen them)
# ARGV[1] n, ARGV[2] now as RQ writes it in job hashes, ARGV[3] now as in Execution hashes,
#   ARGV[4] the StartedJobRegistry's score, ARGV[5] the ExecutionRegistry's score, ARGV[6] the
#   Execution's TTL, ARGV[7] the registries' and worker's TTL, ARGV[8] the worker's name, ARGV[9]
#   the worker's state; then per job i: ARGV[7 + 3i] its id, ARGV[8 + 3i] its execution's id,
#   ARGV[9 + 3i] when it started as RQ writes it
START = """
local n = tonumber(ARGV[1])
for i = 1, n do redis.call("LREM", KEYS[1], 1, ARGV[7 + 3 * i]) end
if #KEYS > 4 + 3 * n then redis.call("DEL", unpack(KEYS, 5 + 3 * n)) end
local started, members = {}, {}
for i = 1, n do
    local job, execution, registry = KEYS[2 + 3 * i], KEYS[3 + 3 * i], KEYS[4 + 3 * i]
    local job_id, execution_id, started_at = ARGV[7 + 3 * i], ARGV[8 + 3 * i], ARGV[9 + 3 * i]
    local composite = job_id .. ":" .. execution_id
    redis.call("HSET", execution, "id", execution_id, "job_id", job_id, "created_at", ARGV[3],
        "last_heartbeat", ARGV[3], "worker_name", ARGV[8])
    redis.call("EXPIRE", execution, ARGV[6])
    redis.call("ZADD", registry, ARGV[5], execution_id)
    redis.call("EXPIRE", registry, ARGV[7])
    redis.call("HSET", job, "last_heartbeat", started_at, "status", "started",
        "started_at", started_at, "worker_name", ARGV[8])
    redis.call("PERSIST", job)
    table.insert(started, ARGV[4])
    table.insert(started, composite)
    table.insert(members, composite)
end
redis.call("ZADD", KEYS[2], unpack(started))
redis.call("SADD", KEYS[4], unpack(members))
redis.call("EXPIRE", KEYS[4], ARGV[7])
redis.call("HSET", KEYS[3], "state", ARGV[9], "last_heartbeat", ARGV[2])
redis.call("EXPIRE", KEYS[3], ARGV[6])
return n
"""


class _Discard:
    """A stand-in for a pipeline that drops every command: RQ's own methods then set up the
    objects (an Execution, a job's or worker's state) while the script writes their keys."""

    def __getattr__(self, _name: str) -> Any:
        return lambda *_args, **_kwargs: None


_DISCARD: Any = _Discard()


def start(worker: BaseWorker, queue: Queue, jobs: Sequence[Job], ttl: int) -> list[Execution]:
    """Register ``jobs`` as started by ``worker`` in one script (:data:`START`): what RQ's
    ``prepare_execution`` and ``prepare_job_execution`` write for each, with the objects set
    up by RQ's own ``Execution.create`` and ``Job.prepare_for_execution``
    (``tests/test_rqcompat.py`` holds the keys equal to what RQ's own worker writes); like
    RQ's, it takes away any TTL a job kept from an earlier life (a failed job requeued by
    RQ's tools expires with its failure TTL otherwise)."""
    if not jobs:
        return []
    executions = []
    per_job: list[str] = []
    args: list[Any] = []
    for job in jobs:
        execution = Execution.create(job, ttl, pipeline=_DISCARD, worker_name=worker.name)
        job.prepare_for_execution(worker.name, pipeline=_DISCARD)
        per_job += [job.key, execution.key, job.execution_registry.key]
        args += [job.id, execution.id, utcformat(job.started_at or now())]
        executions.append(execution)
    stamp = executions[0].created_at
    seconds = stamp.timestamp()
    keys = [
        queue.intermediate_queue_key,
        queue.started_job_registry.key,
        worker.key,
        worker.executions_key,
        *per_job,
        *(queue.intermediate_queue.get_first_seen_key(job.id) for job in jobs),
    ]
    head: list[Any] = [
        len(jobs),
        utcformat(stamp),
        seconds,
        seconds + ttl,
        seconds + ttl + 60,
        ttl,
        ttl + 60,
        worker.name,
        WorkerStatus.BUSY,
    ]
    worker.connection.register_script(START)(keys=keys, args=head + args)
    worker.set_state(WorkerStatus.BUSY, pipeline=_DISCARD)
    for execution in executions:
        worker.executions[execution.id] = execution
    return executions


def heartbeat(worker: BaseWorker, ttl: int) -> None:
    """What RQ's forking worker does every ``job_monitoring_interval`` while a job runs, for
    every execution ``worker`` holds: the worker's key, and each execution's registry entry
    pushed ``ttl`` seconds into the future."""
    executions = list(worker.executions.values())
    with worker.connection.pipeline() as pipe:
        worker.heartbeat(pipeline=pipe)
        for execution in executions:
            execution.heartbeat(execution.job.started_job_registry, ttl, pipeline=pipe)
        pipe.execute()


def still_held(worker: BaseWorker, running: Sequence[tuple[Job, Execution]]) -> list[bool]:
    """For each ``(job, execution)``, whether the execution is still in the job's
    StartedJobRegistry, that is whether ``worker`` still holds the job (one round trip). A
    janitor that took the worker for gone (it froze past its heartbeats) removed the entry
    and retried or dead-lettered the job; what the worker then thinks of the job is stale
    and must not be written over what the job's new holder writes. (A heartbeat never adds
    the entry back: RQ's ``Execution.heartbeat`` updates it only if it exists.)"""
    if not running:
        return []
    with worker.connection.pipeline(transaction=False) as pipe:
        for job, execution in running:
            pipe.zscore(job.started_job_registry.key, execution.composite_key)
        scores = pipe.execute()
    return [score is not None for score in scores]


def let_go(worker: BaseWorker, execution: Execution) -> None:
    """Forget an execution the worker no longer holds (see :func:`still_held`), writing
    nothing: its heartbeats stop and the job is left to its new holder."""
    worker.executions.pop(execution.id, None)


# Recording a batch's successes when finished jobs are not kept (RQ's ``result_ttl`` 0): what
# RQ's ``handle_job_success`` then leaves is the worker's counts and nothing of the job (its
# hash, Execution and registries' entries deleted). The deletions come first: they free
# memory, so a Redis at ``maxmemory`` takes the rest.
# KEYS[1] the StartedJobRegistry, KEYS[2] the worker's hash, KEYS[3] the worker's executions
#   set, KEYS[4..] every job's hash, Execution hash and ExecutionRegistry
# ARGV[1] how many jobs, ARGV[2] their working time (seconds), ARGV[3..] their executions'
#   composite keys (RQ's ``Execution.composite_key``)
FORGET = """
redis.call("DEL", unpack(KEYS, 4))
redis.call("ZREM", KEYS[1], unpack(ARGV, 3))
redis.call("SREM", KEYS[3], unpack(ARGV, 3))
redis.call("HINCRBY", KEYS[2], "successful_job_count", ARGV[1])
redis.call("HINCRBYFLOAT", KEYS[2], "total_working_time", ARGV[2])
return 1
"""


def record_successes(
    worker: BaseWorker, done: Sequence[tuple[Job, Execution, Any]], keep_seconds: int = 0
) -> None:
    """Record every ``(job, execution, return value)`` as RQ's ``handle_job_success`` does
    for a job without dependents or repeats (hookline's event jobs have neither) and a
    ``result_ttl`` of ``keep_seconds``: with 0 (the default) the job leaves Redis, in one
    script (:data:`FORGET`); else it is kept finished with its result that long, in one
    transaction, by RQ's own methods."""
    if not done:
        return
    if keep_seconds == 0:
        _forget(worker, done)
        return
    with worker.connection.pipeline() as pipe:
        for job, execution, value in done:
            ended = now()
            job.ended_at = ended
            job.heartbeat(ended, job.success_callback_timeout, pipeline=pipe)
            worker.increment_successful_job_count(pipeline=pipe)
            if job.started_at is not None:
                worker.increment_total_working_time(ended - job.started_at, pipe)
            job.set_status(JobStatus.FINISHED, pipeline=pipe)
            job.save(pipeline=pipe, include_meta=False, include_result=False)
            Result.create(
                job,
                Result.Type.SUCCESSFUL,
                ttl=keep_seconds,
                return_value=value,
                worker_name=worker.name,
                pipeline=pipe,
                execution_id=execution.id,
                execution_started_at=execution.created_at,
                execution_ended_at=ended,
            )
            job.finished_job_registry.add(job, keep_seconds, pipe)
            job.cleanup(keep_seconds, pipeline=pipe, remove_from_queue=False)
            worker.cleanup_execution(job, pipeline=pipe, execution=execution)
        pipe.execute()


def _forget(worker: BaseWorker, done: Sequence[tuple[Job, Execution, Any]]) -> None:
    ended = now()
    by_registry: dict[str, list[tuple[Job, Execution, Any]]] = {}
    for item in done:  # one queue's jobs in practice: one call
        by_registry.setdefault(item[0].started_job_registry.key, []).append(item)
    script = worker.connection.register_script(FORGET)
    for registry, items in by_registry.items():
        working = sum(
            (ended - job.started_at).total_seconds() for job, _, _ in items if job.started_at
        )
        keys = [registry, worker.key, worker.executions_key]
        for job, execution, _ in items:
            keys += [job.key, execution.key, job.execution_registry.key]
        members = [execution.composite_key for _, execution, _ in items]
        script(keys=keys, args=[len(items), repr(working), *members])
    for _, execution, _ in done:
        worker.executions.pop(execution.id, None)


def record_failure(
    worker: BaseWorker,
    job: Job,
    queue: Queue,
    execution: Execution | None,
    exc_string: str,
    *,
    retry: bool,
    stopped: bool = False,
) -> None:
    """Record a failed run as RQ's worker does (``_finalize_failure`` then
    ``handle_job_failure``): retried with the job's own backoff when ``retry``, else failed
    (moved to the FailedJobRegistry), or ``stopped`` when an operator asked for it."""
    job.ended_at = now()
    job.heartbeat(job.ended_at, job.failure_callback_timeout)
    if not retry:
        job.retries_left = 0  # RQ retries while retries are left: none are, this attempt ends it
    if stopped:
        stop_requested_for(worker, job)
    worker.handle_job_failure(
        job,
        queue,
        started_job_registry=queue.started_job_registry,
        exc_string=exc_string,
        execution=execution,
    )


def stop_requested_for(worker: BaseWorker, job: Job) -> None:
    """Mark ``job`` as the one an operator stopped, so RQ's ``handle_job_failure`` records it
    ``stopped`` (never retried) instead of ``failed``. RQ keeps this in a private attribute
    (its stop-job command sets it the same way): the one private name hookline touches."""
    worker._stopped_job_id = job.id


def stuck_in_intermediate(queue: Queue, after_seconds: float) -> list[Job]:
    """Jobs whose ids have sat in ``queue``'s intermediate list, not started, for more than
    ``after_seconds`` (two sightings at least): their worker died between taking them and
    registering them. RQ's own rule is the same with one minute; this is it sooner."""
    intermediate = queue.intermediate_queue
    ids = intermediate.get_job_ids()
    if not ids:
        return []
    running = set(queue.started_job_registry.get_job_ids(cleanup=False))
    stuck = []
    for job_id in ids:
        if job_id in running:
            continue
        job = queue.fetch_job(job_id)
        if job is None:
            intermediate.remove(job_id)
            continue
        if intermediate.set_first_seen(job_id):
            continue
        first = intermediate.get_first_seen(job_id)
        if first is not None and now() - first > dt.timedelta(seconds=after_seconds):
            stuck.append(job)
    return stuck


def move_due_retries(queue: Queue, overdue_seconds: float = 0) -> int:
    """Enqueue the retries due ``overdue_seconds`` ago or more, as RQ's scheduler does every
    second in a long-running worker: each in one transaction that takes it out of the
    ScheduledJobRegistry and enqueues it (RQ's own ``enqueue_job``), watching the registry so
    that of two processes moving the same job only one does. Two steps would lose the job
    between them: to a ``kill -9``, or to a Redis at ``maxmemory`` that lets the removal
    through (it frees memory) and refuses the enqueue; refused whole, it stays scheduled for
    the next round."""
    registry = queue.scheduled_job_registry
    moved = 0
    for job_id in registry.get_jobs_to_schedule(int(time.time() - overdue_seconds)):
        with queue.connection.pipeline() as pipe:
            try:
                pipe.watch(registry.key)
                if pipe.zscore(registry.key, job_id) is None:
                    continue  # moved by another process meanwhile
                [job] = fetch(queue.connection, [job_id])
                pipe.multi()
                pipe.zrem(registry.key, job_id)
                if job is not None:  # a job that is gone only leaves its entry
                    queue.enqueue_job(job, pipeline=pipe)
                pipe.execute()
            except WatchError:
                continue  # the registry changed: the next round looks again
        moved += job is not None
    return moved


# -- the ingress's gauges: what each queue holds ---------------------------------------------

#: queued ids looked at for the oldest one's ``enqueued_at``: the head's job may be gone (RQ
#: skips an id whose hash expired or was deleted), the next one then tells the age
HEAD_IDS = 5
#: queues reported at most (the configured one and those RQ's set of queues names)
MAX_QUEUES = 100


@dataclass(frozen=True)
class QueueReading:
    """One queue as the ingress's gauges show it."""

    queue: str
    #: ids in the queue's list (RQ's ``Queue.count`` without its cleanup)
    depth: int
    #: unix time the oldest queued job was (last) enqueued; ``None`` when the queue is empty
    oldest_enqueued_at: float | None
    #: jobs in the queue's ScheduledJobRegistry: failed attempts waiting for their retry
    retries_scheduled: int
    #: workers registered on the queue whose key has not expired (RQ's worker TTL)
    workers_alive: int


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def read_queues(
    redis: aioredis.Redis, configured: str, shard: keys.Shard = keys.UNSHARDED
) -> list[QueueReading]:
    """Every queue RQ knows in ``shard`` (its set of queues) and ``configured``, sorted by
    name, in three pipelined round trips."""
    found = await redis.smembers(shard.queues_set)
    names = sorted(
        {configured, *(keys.queue_name(shard.rq_key(_text(k), back=True)) for k in found)}
    )[:MAX_QUEUES]
    async with redis.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.llen(shard.queue_key(name))
            pipe.lrange(shard.queue_key(name), 0, HEAD_IDS - 1)
            pipe.zcard(shard.scheduled_key(name))
            pipe.smembers(shard.workers_key(name))
        first = await pipe.execute()
    per_queue = [first[i : i + 4] for i in range(0, len(first), 4)]
    async with redis.pipeline(transaction=False) as pipe:
        for _depth, head, _scheduled, workers in per_queue:
            for job_id in head:
                pipe.hget(shard.job_key(_text(job_id)), "enqueued_at")
            for worker_key in workers:
                pipe.exists(_text(worker_key))
        second = iter(await pipe.execute())
    readings = []
    for name, (depth, head, scheduled, workers) in zip(names, per_queue, strict=True):
        stamps = [next(second) for _ in head]
        alive = sum(1 for _ in workers if next(second))
        oldest = next((_timestamp(s) for s in stamps if s), None)
        readings.append(QueueReading(name, int(depth), oldest, int(scheduled), alive))
    return readings


# -- the commands and the console: what each shard holds -------------------------------------


@dataclass(frozen=True)
class Holding:
    """A job a worker runs now."""

    job_id: str
    description: str | None
    since: dt.datetime | None


@dataclass(frozen=True)
class WorkerReading:
    """A worker registered on a queue, as RQ's ``Worker.refresh`` and
    ``get_current_executions`` read it (in any shard, from any process)."""

    name: str
    state: str
    hostname: str | None
    pid: int | None
    last_heartbeat: dt.datetime | None
    successful_jobs: int
    failed_jobs: int
    holds: list[Holding]


def _when(value: Any) -> dt.datetime | None:
    try:
        return utcparse(_text(value)) if value else None
    except ValueError:
        return None


def read_workers(
    redis: Redis, queue: str, shard: keys.Shard = keys.UNSHARDED
) -> list[WorkerReading]:
    """The live workers of ``queue`` in ``shard`` (a worker whose hash expired is left out),
    with what each runs now, read only (RQ's ``Worker.all`` also cleans up as it reads), in
    three round trips."""
    members = sorted(_text(k) for k in redis.smembers(shard.workers_key(queue)))
    prefix = shard.rq_key(keys.worker_key(""))
    names = [m.removeprefix(prefix) for m in members if m.startswith(prefix)]
    with redis.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.hgetall(shard.rq_key(keys.worker_key(name)))
            pipe.smembers(shard.rq_key(keys.worker_executions_key(name)))
        found = pipe.execute()
    hashes, runs = found[0::2], [sorted(_text(m) for m in ms) for ms in found[1::2]]
    with redis.pipeline(transaction=False) as pipe:
        for composites in runs:
            for composite in composites:
                pipe.hget(shard.rq_key(keys.execution_key(composite)), "created_at")
                pipe.hget(shard.job_key(composite.split(":", 1)[0]), "description")
        details = iter(pipe.execute())
    out = []
    for name, raw, composites in zip(names, hashes, runs, strict=True):
        holds = []
        for composite in composites:
            created, description = next(details), next(details)
            if created is None:  # the execution is over (its hash expired)
                continue
            holds.append(
                Holding(
                    composite.split(":", 1)[0],
                    _text(description) if description is not None else None,
                    dt.datetime.fromtimestamp(float(created), tz=dt.UTC),
                )
            )
        if not raw:
            continue
        data = {_text(k): _text(v) for k, v in raw.items()}
        out.append(
            WorkerReading(
                name=name,
                state=data.get("state", "?"),
                hostname=data.get("hostname") or None,
                pid=int(data["pid"]) if data.get("pid") else None,
                last_heartbeat=_when(data.get("last_heartbeat")),
                successful_jobs=int(data.get("successful_job_count") or 0),
                failed_jobs=int(data.get("failed_job_count") or 0),
                holds=holds,
            )
        )
    return out


@dataclass(frozen=True)
class ShardCounts:
    """One shard's share of a queue: queued, running, waiting to retry, failed jobs."""

    queued: int
    running: int
    waiting_to_retry: int
    failed_jobs: int


def read_counts(redis: Redis, queue: str, shard: keys.Shard = keys.UNSHARDED) -> ShardCounts:
    """Raw counts (RQ's ``count`` would run a cleanup as a side effect), one round trip."""
    with redis.pipeline(transaction=False) as pipe:
        pipe.llen(shard.queue_key(queue))
        pipe.zcard(shard.started_key(queue))
        pipe.zcard(shard.scheduled_key(queue))
        pipe.zcard(shard.failed_key(queue))
        queued, running, scheduled, failed = pipe.execute()
    return ShardCounts(int(queued), int(running), int(scheduled), int(failed))


def enqueue(redis: Redis, job: Job, shard: keys.Shard = keys.UNSHARDED) -> None:
    """Queue ``job`` (built by ``shared.enqueue.build_job``: queued, ``origin`` its queue) in
    ``shard`` as RQ's ``Queue.enqueue_job`` does (the job's hash, the set of queues, the id
    pushed), in one transaction: from any process, whatever its RQ_KEY_PREFIX
    (``tests/test_rqcompat.py`` holds the keys equal to RQ's)."""
    queue = shard.queue_key(job.origin)
    fields = queued_job_fields(job)
    with redis.pipeline() as pipe:
        pipe.hset(shard.job_key(job.id), mapping=dict(zip(fields[0::2], fields[1::2], strict=True)))
        pipe.sadd(shard.queues_set, queue)
        pipe.rpush(queue, job.id)
        pipe.execute()


def _timestamp(value: Any) -> float | None:
    try:
        return utcparse(_text(value)).timestamp()
    except ValueError:
        return None
