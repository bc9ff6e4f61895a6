"""The batch loop of :class:`~workers.worker.EventWorker`: many events per Redis round trip.

RQ's in-process worker spends several Redis round trips and most of its time on bookkeeping
for each job (dequeue, execution records, heartbeats, status, result). Webhook jobs are tiny,
so that bookkeeping dominated. This loop keeps RQ's data model, so ``rq info``, RQ's
registries, retries, the failed registry and abandoned-job recovery work unchanged, but does
the bookkeeping for a whole batch at once:

1. one Lua script moves up to :data:`BATCH_SIZE` job ids from the queue into RQ's
   StartedJobRegistry (``rq:wip:<queue>``, scored with the expiry RQ uses for abandoned jobs)
   and marks them ``started``; nothing is ever only in this process's memory, so a
   ``kill -9`` leaves them to the janitor exactly as RQ's own worker would;
2. one pipeline fetches the jobs;
3. the events are applied in one transaction (:func:`workers.effects.apply_events`); if any
   of them fails, none is, and each is applied again in a transaction of its own, under
   RQ's job-timeout death penalty, so one bad event never changes another's outcome;
4. one pipeline records every success the way RQ does (status, result, finished registry,
   TTL); a failure goes through RQ's own ``handle_job_failure`` (retry or failed registry).

When the queue is empty the worker blocks on ``BLMOVE`` into RQ's intermediate list, as RQ's
own worker does, so an idle worker costs nothing and a new event starts at once.
"""

from __future__ import annotations

import datetime
import logging
import time
import traceback
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rq import Queue, SimpleWorker
from rq.job import Job
from rq.timeouts import JobTimeoutException, UnixSignalDeathPenalty
from rq.utils import now as rq_now
from rq.utils import utcformat

from workers import tasks

if TYPE_CHECKING:
    from workers.worker import EventWorker

log = logging.getLogger("hookline.worker")

#: events taken per round trip: large enough to amortise Redis, small enough that a crash
#: leaves little to recover and one slow event delays few others
BATCH_SIZE = 50
#: how long past its timeout a running job's registry entry lives (RQ adds 60 s): the time
#: to record a finished batch, which is one pipeline
HEARTBEAT_MARGIN_SECONDS = 15
#: seconds an idle worker blocks waiting for work before checking for a stop request
IDLE_BLOCK_SECONDS = 1

# KEYS: queue list, intermediate list, started registry
# ARGV: max ids, registry score, worker name, started_at, ids already moved to intermediate...
TAKE_BATCH = """
local ids = {}
for i = 5, #ARGV do
    if redis.call("LREM", KEYS[2], 1, ARGV[i]) > 0 then table.insert(ids, ARGV[i]) end
end
local more = tonumber(ARGV[1]) - #ids
if more > 0 then
    local popped = redis.call("LPOP", KEYS[1], more)
    if popped then
        for _, id in ipairs(popped) do table.insert(ids, id) end
    end
end
local taken = {}
for _, id in ipairs(ids) do
    local key = "rq:job:" .. id
    if redis.call("EXISTS", key) == 1 then
        local entry = id .. ":" .. ARGV[3] .. "-" .. id
        redis.call("ZADD", KEYS[3], ARGV[2], entry)
        redis.call("HSET", key, "status", "started", "started_at", ARGV[4], "worker_name", ARGV[3])
        redis.call("PERSIST", key)
        table.insert(taken, id)
        table.insert(taken, entry)
    end
end
return taken
"""


class BatchRunner:
    """Runs batches for one worker and one queue."""

    def __init__(self, worker: EventWorker, queue: Queue) -> None:
        self.worker = worker
        self.queue = queue
        self.connection = queue.connection
        self.take = self.connection.register_script(TAKE_BATCH)
        self.registry = queue.started_job_registry
        #: the timeout the batch's registry entries are scored with (jobs carry their own)
        self.max_timeout = worker.job_timeout

    def wait_for_work(self) -> list[str]:
        """Block until one id is available (moved into RQ's intermediate list)."""
        moved = self.connection.blmove(
            self.queue.key, self.queue.intermediate_queue.key, IDLE_BLOCK_SECONDS, "LEFT", "RIGHT"
        )
        if moved is None:
            return []
        return [moved.decode() if isinstance(moved, bytes) else str(moved)]

    def run_batch(self, already_moved: Sequence[str] = ()) -> int:
        """Take and run up to BATCH_SIZE jobs; returns how many were taken."""
        score = time.time() + self.max_timeout + HEARTBEAT_MARGIN_SECONDS
        reply = self.take(
            keys=[self.queue.key, self.queue.intermediate_queue.key, self.registry.key],
            args=[BATCH_SIZE, score, self.worker.name, utcformat(rq_now()), *already_moved],
        )
        pairs = [x.decode() if isinstance(x, bytes) else str(x) for x in reply]
        if not pairs:
            return 0
        ids, entries = pairs[0::2], pairs[1::2]
        found = Job.fetch_many(ids, connection=self.connection, serializer=self.queue.serializer)
        missing = [entry for job, entry in zip(found, entries, strict=True) if job is None]
        if missing:
            self.connection.zrem(self.registry.key, *missing)
        batch = [(job, entry) for job, entry in zip(found, entries, strict=True) if job is not None]
        done = self._run_together(batch) if len(batch) > 1 else None
        if done is None:
            done = self._run_each(batch)
        self._record_successes(done)
        self.worker.heartbeat()
        return len(ids)

    def _run_together(self, batch: list[tuple[Job, str]]) -> list[tuple[Job, str, Any]] | None:
        """All events in one transaction, under one death penalty; ``None`` if any failed."""
        try:
            with UnixSignalDeathPenalty(self.max_timeout, JobTimeoutException):
                outcomes = tasks.process_batch([job for job, _ in batch])
        except JobTimeoutException:
            outcomes = None
        if outcomes is None:
            return None
        return [(job, entry, out) for (job, entry), out in zip(batch, outcomes, strict=True)]

    def _run_each(self, batch: list[tuple[Job, str]]) -> list[tuple[Job, str, Any]]:
        """One transaction per event: after a batch failed, or for a batch of one."""
        done: list[tuple[Job, str, Any]] = []
        if len(batch) > 1:
            # after a failed batch run, which may have used the whole timeout
            self._refresh([e for _, e in batch])
        refreshed = time.monotonic()
        for i, (job, entry) in enumerate(batch):
            if time.monotonic() - refreshed > HEARTBEAT_MARGIN_SECONDS / 2:
                # a slow batch: keep the rest of it from looking abandoned
                self._refresh([e for _, e in batch[i:]])
                refreshed = time.monotonic()
            ok, value = self._run_one(job, entry)
            if ok:
                done.append((job, entry, value))
        return done

    def _refresh(self, entries: Sequence[str]) -> None:
        score = time.time() + self.max_timeout + HEARTBEAT_MARGIN_SECONDS
        self.connection.zadd(self.registry.key, dict.fromkeys(entries, score), xx=True)

    def _run_one(self, job: Job, entry: str) -> tuple[bool, Any]:
        try:
            timeout = job.timeout or self.max_timeout
            with UnixSignalDeathPenalty(timeout, JobTimeoutException, job_id=job.id):
                value = tasks.process(job.args[0], job)
            return True, value
        except Exception:
            exc_string = traceback.format_exc()
            self.connection.zrem(self.registry.key, entry)
            # the job recorded this failure itself: RQ's own handling, not the worker's
            # override for failures found outside a run
            SimpleWorker.handle_job_failure(
                self.worker,
                job,
                self.queue,
                started_job_registry=self.registry,
                exc_string=exc_string,
            )
            return False, None

    def _record_successes(self, done: list[tuple[Job, str, Any]]) -> None:
        if not done:
            return
        with self.connection.pipeline(transaction=False) as pipe:
            ended = datetime.datetime.now(datetime.UTC)
            for job, entry, value in done:
                result_ttl = job.get_result_ttl(self.worker.default_result_ttl)
                job._result = value
                job.ended_at = ended
                job._handle_success(result_ttl, pipeline=pipe, worker_name=self.worker.name)
                job.cleanup(result_ttl, pipeline=pipe, remove_from_queue=False)
                pipe.zrem(self.registry.key, entry)
            self.worker.increment_successful_job_count(pipeline=pipe)
            pipe.execute()
