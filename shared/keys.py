"""Every Redis key hookline reads or writes, with why each TTL is what it is.

RQ owns its keys (jobs, queues, registries, executions) so that ``rq info`` and RQ's own tools
keep working; the names of the ones hookline touches are taken from RQ's own classes here,
never written by hand, so RQ's ``RQ_KEY_PREFIX`` environment variable moves them all. hookline's
own keys (claims, statistics, rejections) live under :data:`PREFIX`, which follows that
variable too: two deployments sharing one Redis with two RQ prefixes share nothing.
"""

from __future__ import annotations

import hashlib

from rq.defaults import RQ_KEY_PREFIX
from rq.intermediate_queue import IntermediateQueue
from rq.job import Job
from rq.queue import Queue

#: hookline's own keys: ``hookline:`` beside RQ's default ``rq:``, else ``<prefix>:hookline:``
PREFIX = "hookline:" if RQ_KEY_PREFIX == "rq" else f"{RQ_KEY_PREFIX}:hookline:"

#: ``<PREFIX>claim:{source}:{event id}`` -> job id. Lives ``dedup_ttl_seconds`` (3 days by
#: default, longer than the providers' retry horizons) so a redelivery inside that window is
#: answered 200 "duplicate". Long ids are hashed so the key stays small whatever the provider
#: sends; the body is never part of the key.
CLAIM = PREFIX + "claim:"
_MAX_RAW_ID = 128

#: ``<PREFIX>janitor:{queue}``: held for one sweep of the queue's registries by one worker.
#: RQ's own maintenance lock lives 899 s, so a worker killed while holding it would stop every
#: other worker's recovery of abandoned jobs for 15 minutes; this one lives 10 s at most (a
#: sweep takes milliseconds), so a worker killed mid-sweep delays the next by that much.
JANITOR_LOCK = PREFIX + "janitor:"
JANITOR_LOCK_SECONDS = 10
#: ``<PREFIX>archive:prune``: held by the one worker pruning the event log's old bodies
ARCHIVE_LOCK = PREFIX + "archive:prune"

#: the function every queued event runs; a string so the ingress never imports the workers
JOB_FUNC = "workers.tasks.process_event"
#: RQ calls it when it gives up on a job whose worker died (whoever runs the cleanup)
FAILURE_CALLBACK = "workers.tasks.on_job_failure"

#: finished jobs' results are kept one hour: enough for ``rq info`` and debugging; the
#: durable record is the ``webhook_events`` row.
RESULT_TTL_SECONDS = 3600
#: failed jobs stay in RQ's FailedJobRegistry a week: the dead letters hold the event for
#: good, the job is only there for RQ's own tools.
FAILURE_TTL_SECONDS = 7 * 24 * 3600

#: ``<PREFIX>ack-barrier``: a counter a duplicate delivery increments when acknowledgements wait
#: for replicas. Redis's WAIT waits for the writes of the asking connection; a duplicate writes
#: nothing of its own, so it writes this, which replicates after the earlier claim it found:
#: a "duplicate" is answered only once that claim is on the replicas too.
ACK_BARRIER = PREFIX + "ack-barrier"
#: ``<PREFIX>stats:{minute}`` -> {"source\tkind": count}: the ingress's per-minute counts
#: (accepted, duplicate, rejected:<reason>), kept two hours for the console's last hour
STATS = PREFIX + "stats:"
#: ``<PREFIX>stats5:{5-minute bucket}``: the same counts per 5 minutes, kept 25 hours for the
#: console's last day (a day of minutes would be 1,440 hashes read per page); both also hold
#: the queue's depth as the ingress last sampled it in that bucket (field ``"\tqueue_depth"``)
STATS_COARSE = PREFIX + "stats5:"
#: ``<PREFIX>rejections:{source}``: a stream of the source's last 1,000 refused requests (no
#: header value, no body byte); unknown sources share ``<PREFIX>rejections:_unknown``
REJECTIONS = PREFIX + "rejections:"

# -- RQ's keys, named by RQ's classes ---------------------------------------------------------

#: the set of every queue's key (RQ's ``rq:queues``)
QUEUES_SET: str = Queue.redis_queues_keys
#: what every job hash key starts with (RQ's ``rq:job:``)
JOB_PREFIX: str = Job.redis_job_namespace_prefix


def claim_key(source: str, event_id: str) -> str:
    if len(event_id) > _MAX_RAW_ID:
        event_id = "sha256=" + hashlib.sha256(event_id.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{CLAIM}{source}:{event_id}"


def job_key(job_id: str) -> str:
    """RQ's hash of one job."""
    return Job.key_for(job_id)


def queue_key(queue: str) -> str:
    """RQ's list of the ids queued on ``queue``."""
    return Queue.redis_queue_namespace_prefix + queue


def intermediate_key(queue: str) -> str:
    """RQ's list of ids taken from ``queue`` but not yet registered as started."""
    return IntermediateQueue.get_intermediate_queue_key(queue_key(queue))


def janitor_lock(queue: str) -> str:
    return JANITOR_LOCK + queue


def rejections_key(source: str) -> str:
    return REJECTIONS + source
