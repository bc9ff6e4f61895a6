"""Every Redis key hookline reads or writes, with why each TTL is what it is.

RQ owns its keys (jobs, queues, registries, executions) so that ``rq info`` and RQ's own tools
keep working; the names of the ones hookline touches are taken from RQ's own classes here,
never written by hand, so RQ's ``RQ_KEY_PREFIX`` environment variable moves them all. hookline's
own keys (claims, statistics, rejections) live under :data:`PREFIX`, which follows that
variable too: two deployments sharing one Redis with two RQ prefixes share nothing.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from rq import worker_registration
from rq.defaults import RQ_KEY_PREFIX
from rq.intermediate_queue import IntermediateQueue
from rq.job import Job
from rq.queue import Queue
from rq.registry import ScheduledJobRegistry

#: hookline's own keys: ``hookline:`` beside RQ's default ``rq:``, else ``<prefix>:hookline:``
PREFIX = "hookline:" if RQ_KEY_PREFIX == "rq" else f"{RQ_KEY_PREFIX}:hookline:"

#: ``<PREFIX>c:{generation}:{bucket}`` -> a set of 64-bit integers: the claims. A claim is
#: the first 8 bytes of a hash of (source, event id), kept as a member of one small set per
#: (generation, bucket): Redis stores a set of up to ``set-max-intset-entries`` (512) integers
#: as a sorted array of 8 bytes each, so a claim costs ~8 bytes plus its share of the set's key
#: instead of ~190 bytes for a key of its own (measured: ``bench/footprint.py``). Time is cut
#: into generations of ``dedup_ttl_seconds / CLAIM_GENERATIONS``; a claim is written into the
#: current one and looked for in the current one and the CLAIM_GENERATIONS before it, so a
#: redelivery within ``dedup_ttl_seconds`` always meets it (one up to a generation later may
#: too); each set expires when its last lookup window ends. The bucket (the hash's next bits)
#: spreads a generation over ``2 ** CLAIM_BUCKET_BITS`` sets: at 1,000 events/s and the
#: default 3-day window a set holds ~124 claims, well inside 512; at low rates most sets hold
#: one claim and cost about what a key of its own did.
CLAIM = PREFIX + "c:"
#: a lookup checks this many past generations beside the current one: 2 keeps at most 1.5
#: windows of claims (1 would keep 2, with one lookup fewer)
CLAIM_GENERATIONS = 2
#: 2 ** this many sets per generation
CLAIM_BUCKET_BITS = 20

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


@dataclass(frozen=True)
class ClaimKeys:
    """Where the claim of one event is written (``keys[0]``) and looked for (all of
    ``keys``), its member in those sets, and when the set it is written to expires."""

    keys: tuple[str, ...]
    member: int
    expire_at: int


def claim_generation_seconds(dedup_ttl_seconds: int) -> int:
    return max(1, -(-dedup_ttl_seconds // CLAIM_GENERATIONS))


def claim_member(source: str, event_id: str) -> tuple[int, int]:
    """The claim's member (a signed 64-bit integer) and its bucket seed, from a 128-bit hash
    of (source, event id): 84 of its bits tell claims apart, so two events are mistaken for
    one with a chance of ~1e-16 per event even with a billion claims held."""
    digest = hashlib.blake2b(
        source.encode("utf-8", "surrogatepass")
        + b"\x00"
        + event_id.encode("utf-8", "surrogatepass"),
        digest_size=16,
    ).digest()
    return int.from_bytes(digest[:8], "big", signed=True), int.from_bytes(digest[8:12], "big")


def claim_keys(
    source: str,
    event_id: str,
    dedup_ttl_seconds: int,
    now: float,
    bucket_bits: int = CLAIM_BUCKET_BITS,
) -> ClaimKeys:
    """The claim of (source, event id) at time ``now`` (unix seconds)."""
    member, seed = claim_member(source, event_id)
    bucket = f"{seed & ((1 << bucket_bits) - 1):x}"
    length = claim_generation_seconds(dedup_ttl_seconds)
    current = int(now) // length
    gens = [current - i for i in range(CLAIM_GENERATIONS + 1)]
    return ClaimKeys(
        keys=tuple(f"{CLAIM}{g * length}:{bucket}" for g in gens),
        member=member,
        expire_at=(current + CLAIM_GENERATIONS + 1) * length,
    )


def job_key(job_id: str) -> str:
    """RQ's hash of one job."""
    return Job.key_for(job_id)


def queue_key(queue: str) -> str:
    """RQ's list of the ids queued on ``queue``."""
    return Queue.redis_queue_namespace_prefix + queue


def intermediate_key(queue: str) -> str:
    """RQ's list of ids taken from ``queue`` but not yet registered as started."""
    return IntermediateQueue.get_intermediate_queue_key(queue_key(queue))


def scheduled_key(queue: str) -> str:
    """RQ's sorted set of the jobs of ``queue`` waiting for their retry's time."""
    return str(ScheduledJobRegistry.key_template.format(queue))


def workers_key(queue: str) -> str:
    """RQ's set of the keys of the workers listening on ``queue`` (a worker's key expires
    when it stops heartbeating; the set keeps it until someone cleans it up)."""
    return str(worker_registration.WORKERS_BY_QUEUE_KEY % queue)


def queue_name(key: str) -> str:
    """The queue's name from its list's key (the members of :data:`QUEUES_SET`)."""
    return key.removeprefix(Queue.redis_queue_namespace_prefix)


def janitor_lock(queue: str) -> str:
    return JANITOR_LOCK + queue


def rejections_key(source: str) -> str:
    return REJECTIONS + source
