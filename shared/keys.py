"""Every Redis key hookline reads or writes, with why each TTL is what it is.

RQ owns its keys (jobs, queues, registries, executions) so that ``rq info`` and RQ's own tools
keep working; the names of the ones hookline touches are taken from RQ's own classes here,
never written by hand, so RQ's ``RQ_KEY_PREFIX`` environment variable moves them all. hookline's
own keys (claims, statistics, rejections) live under :data:`PREFIX`, which follows that
variable too: two deployments sharing one Redis with two RQ prefixes share nothing.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from functools import cached_property

from redis.crc import key_slot
from rq import worker_registration
from rq.defaults import RQ_KEY_PREFIX
from rq.executions import WORKER_EXECUTIONS_KEY_TEMPLATE, Execution
from rq.intermediate_queue import IntermediateQueue
from rq.job import Job
from rq.queue import Queue
from rq.registry import FailedJobRegistry, ScheduledJobRegistry, StartedJobRegistry
from rq.worker import Worker

#: RQ's key prefix in this process (RQ's ``RQ_KEY_PREFIX``: a shard's worker runs with its shard's)
PROCESS_RQ_PREFIX: str = RQ_KEY_PREFIX
#: a worker process started for one shard has RQ_KEY_PREFIX set to the shard's prefix and this
#: variable set to the shard's number
SHARD_ENV = "HOOKLINE_SHARD"
#: a shard's worker process also has the deployment's own RQ_KEY_PREFIX, before the shard's tag
BASE_PREFIX_ENV = "HOOKLINE_BASE_KEY_PREFIX"
#: the deployment's RQ_KEY_PREFIX, the shards' prefixes are made from
BASE_RQ_PREFIX: str = (
    os.environ.get(BASE_PREFIX_ENV, RQ_KEY_PREFIX) if os.environ.get(SHARD_ENV) else RQ_KEY_PREFIX
)
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


def event_hash(source: str, event_id: str) -> bytes:
    """A 128-bit hash of (source, event id): the claim's member (bytes 0-7), its bucket (8-11)
    and its shard (12-15) come from it, each from bits of their own."""
    return hashlib.blake2b(
        source.encode("utf-8", "surrogatepass")
        + b"\x00"
        + event_id.encode("utf-8", "surrogatepass"),
        digest_size=16,
    ).digest()


def claim_member(source: str, event_id: str) -> tuple[int, int]:
    """The claim's member (a signed 64-bit integer) and its bucket seed, from a 128-bit hash
    of (source, event id): 84 of its bits tell claims apart, so two events are mistaken for
    one with a chance of ~1e-16 per event even with a billion claims held."""
    digest = event_hash(source, event_id)
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


def started_key(queue: str) -> str:
    """RQ's sorted set of the executions of ``queue``'s jobs running now."""
    return str(StartedJobRegistry.key_template.format(queue))


def failed_key(queue: str) -> str:
    """RQ's sorted set of ``queue``'s failed jobs."""
    return str(FailedJobRegistry.key_template.format(queue))


def worker_key(name: str) -> str:
    """RQ's hash of the worker ``name``."""
    return str(Worker.redis_worker_namespace_prefix) + name


def worker_executions_key(name: str) -> str:
    """RQ's set of what the worker ``name`` runs now (``job id:execution id``)."""
    return WORKER_EXECUTIONS_KEY_TEMPLATE.format(name)


def execution_key(composite: str) -> str:
    """RQ's hash of one execution (``job id:execution id``)."""
    return str(Execution.from_composite_key(composite, connection=None).key)  # type: ignore[arg-type]


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


# -- shards ------------------------------------------------------------------------------------
#
# ``redis_shards = N`` splits the keys into N shards. Every key of one shard (RQ's and hookline's)
# carries the shard's hash tag, so on a Redis Cluster a shard lives in one hash slot, on one
# primary: the claim-and-enqueue script and RQ's transactions touch one slot and stay atomic.
# A shard's keys are RQ's own names under the shard's prefix, as RQ names them when
# ``RQ_KEY_PREFIX`` is that prefix: the processes that run RQ's code for a shard (its workers)
# run with it, and the others (the ingress, the commands, the console) name a shard's keys by
# putting the shard's prefix in place of theirs (:meth:`Shard.rq_key`).

#: the hash slots of a Redis Cluster
SLOTS = 16384
#: the most shards a deployment may have (each is a set of keys, a worker process, a gauge)
MAX_SHARDS = 256


@dataclass(frozen=True)
class Shard:
    """One shard: its number, the ``RQ_KEY_PREFIX`` its keys are RQ's names under, and the
    prefix of hookline's own keys in it."""

    index: int
    rq_prefix: str
    own_prefix: str
    #: the hash tag every key of the shard carries ("" when the deployment is not sharded)
    tag: str = ""

    def rq_key(self, name: str, *, back: bool = False) -> str:
        """One of RQ's keys (named by RQ's classes in this process, under its RQ_KEY_PREFIX)
        as it is in this shard; ``back``: the reverse, a key of this shard as this process's
        RQ names it."""
        if not self.tag:  # not sharded: the keys are where RQ names them
            return name
        old, new = (self.rq_prefix, RQ_KEY_PREFIX) if back else (RQ_KEY_PREFIX, self.rq_prefix)
        if not name.startswith(old):
            raise ValueError(f"{name!r} is not one of RQ's keys under {old!r}")
        return new + name[len(old) :]

    def own_key(self, name: str) -> str:
        """One of hookline's keys (under this process's :data:`PREFIX`) as it is in this shard."""
        if not self.tag:
            return name
        if not name.startswith(PREFIX):
            raise ValueError(f"{name!r} is not one of hookline's keys under {PREFIX!r}")
        return self.own_prefix + name[len(PREFIX) :]

    @property
    def slot(self) -> int | None:
        """The cluster hash slot of every key of the shard (``None`` when not sharded)."""
        return key_slot(("{" + self.tag + "}").encode()) if self.tag else None

    def job_key(self, job_id: str) -> str:
        return self.rq_key(job_key(job_id))

    def queue_key(self, queue: str) -> str:
        return self.rq_key(queue_key(queue))

    def scheduled_key(self, queue: str) -> str:
        return self.rq_key(scheduled_key(queue))

    def workers_key(self, queue: str) -> str:
        return self.rq_key(workers_key(queue))

    def started_key(self, queue: str) -> str:
        return self.rq_key(started_key(queue))

    def failed_key(self, queue: str) -> str:
        return self.rq_key(failed_key(queue))

    @property
    def queues_set(self) -> str:
        return self.rq_key(QUEUES_SET)

    @property
    def ack_barrier(self) -> str:
        return self.own_key(ACK_BARRIER)

    def claim_keys(self, claim: ClaimKeys) -> ClaimKeys:
        """The claim's keys in this shard."""
        return ClaimKeys(tuple(self.own_key(k) for k in claim.keys), claim.member, claim.expire_at)

    def child_env(self) -> dict[str, str]:
        """The environment a worker process for this shard runs with."""
        return {
            "RQ_KEY_PREFIX": self.rq_prefix,
            SHARD_ENV: str(self.index),
            BASE_PREFIX_ENV: BASE_RQ_PREFIX,
        }


#: the one shard of a deployment that is not sharded: its keys are where they always were
UNSHARDED = Shard(0, RQ_KEY_PREFIX, PREFIX)


def shard_tag(index: int, count: int) -> str:
    """Shard ``index`` of ``count``'s hash tag: the first of ``h<index>.<k>`` (k = 0, 1, ...)
    whose slot lies in the middle half of the index-th of ``count`` equal ranges of the 16,384
    slots. A cluster made by ``redis-cli --cluster create`` gives its P primaries equal ranges
    (their ends rounded its own way: hence the middle, never an end), so with ``count`` a
    multiple of P each primary holds ``count / P`` shards."""
    low, high = index * SLOTS / count, (index + 1) * SLOTS / count
    quarter = (high - low) / 4
    k = 0
    while True:
        tag = f"h{index}.{k}"
        if low + quarter <= key_slot(tag.encode()) < high - quarter:
            return tag
        k += 1


@dataclass(frozen=True)
class Layout:
    """The deployment's shards. With one shard and no cluster, the keys are where they
    always were (RQ_KEY_PREFIX and :data:`PREFIX`); else every shard's carry its tag."""

    count: int = 1
    tagged: bool = False

    @cached_property
    def shards(self) -> tuple[Shard, ...]:
        if not self.tagged:
            return (UNSHARDED,)
        out = []
        for i in range(self.count):
            tag = shard_tag(i, self.count)
            prefix = f"{BASE_RQ_PREFIX}:{{{tag}}}"
            out.append(Shard(i, prefix, f"{prefix}:hookline:", tag))
        return tuple(out)

    @classmethod
    def of(cls, count: int, cluster: bool) -> Layout:
        if not 1 <= count <= MAX_SHARDS:
            raise ValueError(f"redis_shards must be 1 to {MAX_SHARDS}")
        tagged = cluster or count > 1
        if tagged and ("{" in BASE_RQ_PREFIX or "}" in BASE_RQ_PREFIX):
            raise ValueError(
                f"RQ_KEY_PREFIX {BASE_RQ_PREFIX!r} holds a hash tag: with shards or a cluster"
                " hookline tags each shard's keys itself; leave { } out of it"
            )
        return cls(count, tagged)

    @property
    def home(self) -> Shard:
        """Where the deployment's own keys live (the ingress's statistics and rejections)."""
        return self.shards[0]

    def route(self, source: str, event_id: str) -> Shard:
        """The shard of (source, event id): the same for every delivery of the event, so a
        redelivery meets its claim."""
        if self.count == 1:
            return self.shards[0]
        seed = int.from_bytes(event_hash(source, event_id)[12:16], "big")
        return self.shards[seed % self.count]


def this_shard() -> int | None:
    """The shard a worker process was started for (``None``: not one shard's process)."""
    value = os.environ.get(SHARD_ENV)
    return int(value) if value else None
