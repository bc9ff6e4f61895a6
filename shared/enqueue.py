"""Claim an event id and queue its job as one atomic step.

The claim (a member of a small set of claims: :func:`shared.keys.claim_keys`) and the RQ
enqueue (job hash, the queues set, ``RPUSH``) run in one Lua script, so no client crash or
dropped connection can leave an event claimed but not queued (which would turn the provider's
retry into a silent "duplicate" and lose the event), and two simultaneous deliveries cannot
both be queued: Redis runs one script at a time.

Redis does not roll a script back when a command in it fails, so every write goes through
``redis.pcall`` and a failure undoes what the script wrote before it. The claim is written last.
The job is an ordinary RQ job: its hash is the one RQ's own ``Queue.enqueue_job`` writes (see
:func:`shared.rqcompat.queued_job_fields`), so ``rq info``, the workers and RQ's registries
understand it. The fields every job of a configuration shares are written into the script
(:func:`claim_script`), so each request sends only what differs.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import random
import time
import uuid
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis import Redis
from rq.callbacks import Callback
from rq.job import Job, JobStatus, Retry
from rq.utils import now as rq_now
from rq.utils import utcformat

from shared import keys
from shared.config import Settings
from shared.envelope import Envelope
from shared.rqcompat import PER_EVENT_FIELDS, JobSerializer, queued_job_fields

_SCRIPT = """
-- KEYS[1] the claims set the claim is written to, KEYS[2..G] the earlier generations' sets it
--         is also looked for in (shared.keys.claim_keys); then the job hash, the queue list and
--         the set of queues (RQ's keys, named by RQ's classes: shared.keys); last, only when
--         the answer waits for replicas: the barrier a duplicate writes (shared.keys.ACK_BARRIER)
-- ARGV[1] the claim (a 64-bit integer), ARGV[2] when its set expires (unix seconds), ARGV[3]
--         the job id, ARGV[4] when it was created and queued, ARGV[5] its data, ARGV[6] its
--         description, ARGV[7] its retry intervals (none with a single attempt)
-- The job hash's fields that every event of this configuration shares are written into the
-- script itself (CONSTANT below, built from a job RQ built: shared.rqcompat), so a request
-- sends seven arguments instead of forty.
local G = @GENERATIONS@
local job, queue, queues, barrier = KEYS[G + 1], KEYS[G + 2], KEYS[G + 3], KEYS[G + 4]
for i = 1, G do
    if redis.call("SISMEMBER", KEYS[i], ARGV[1]) == 1 then
        if barrier then redis.call("INCR", barrier) end
        return {0, ""}
    end
end
local function undo(err, step)
    if step >= 3 then redis.call("LREM", queue, -1, ARGV[3]) end
    if step >= 1 then redis.call("DEL", job) end
    return redis.error_reply(err)
end
local fields = {@CONSTANT@,
    "created_at", ARGV[4], "enqueued_at", ARGV[4], "data", ARGV[5], "description", ARGV[6]}
if ARGV[7] then
    table.insert(fields, "retry_intervals")
    table.insert(fields, ARGV[7])
end
local r = redis.pcall("HSET", job, unpack(fields))
if type(r) == "table" and r.err then return undo(r.err, 1) end
r = redis.pcall("SADD", queues, queue)
if type(r) == "table" and r.err then return undo(r.err, 2) end
r = redis.pcall("RPUSH", queue, ARGV[3])
if type(r) == "table" and r.err then return undo(r.err, 2) end
r = redis.pcall("SADD", KEYS[1], ARGV[1])
if type(r) == "table" and r.err then return undo(r.err, 3) end
redis.call("EXPIREAT", KEYS[1], ARGV[2])
return {1, ARGV[3]}
"""


def _lua_string(value: Any) -> str:
    """A Lua string literal of ``value`` as Redis stores it (bytes, else its text): printable
    ASCII as is, the rest as decimal escapes, so nothing in a configured name can end the
    literal or change the script."""
    data = value if isinstance(value, bytes) else str(value).encode("utf-8")
    return (
        '"'
        + "".join(chr(b) if 32 <= b < 127 and b not in (34, 92) else f"\\{b:03d}" for b in data)
        + '"'
    )


# RQ's Job needs a connection object to exist; building the hash never talks to Redis.
_NO_CONNECTION = Redis(host="127.0.0.1", port=1)


@dataclass(frozen=True)
class JobSpec:
    """How queued event jobs are built: queue, timeout, dedup window and retry policy."""

    queue: str
    timeout_seconds: int
    claim_ttl_seconds: int
    max_attempts: int
    backoff_seconds: tuple[int, ...]
    #: how long a finished job is kept in Redis (RQ's ``result_ttl``); 0: deleted at once
    keep_finished_seconds: int = 0
    #: 2 ** this many claim sets per generation (``shared.keys``); the benchmark lowers it to
    #: measure at a high rate's density with fewer claims
    claim_bucket_bits: int = keys.CLAIM_BUCKET_BITS

    def claim_keys(self, source: str, event_id: str, now: float) -> keys.ClaimKeys:
        """Where the claim of (source, event id) is looked for and written at ``now``."""
        return keys.claim_keys(
            source, event_id, self.claim_ttl_seconds, now, self.claim_bucket_bits
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> JobSpec:
        return cls(
            queue=settings.queue,
            timeout_seconds=settings.worker.job_timeout_seconds,
            claim_ttl_seconds=settings.ingest.dedup_ttl_seconds,
            max_attempts=settings.worker.max_attempts,
            backoff_seconds=settings.worker.backoff_seconds,
            keep_finished_seconds=settings.worker.keep_finished_seconds,
        )


#: one generator for the jitter; a new ``random.Random()`` per event would seed from urandom
_JITTER = random.Random()


def retry_intervals(max_attempts: int, backoff: Sequence[int]) -> list[int]:
    """One interval per retry: the configured backoff (its last value repeated) with +-20 %
    jitter, so a burst of failures does not come back as a burst."""
    base = [backoff[min(i, len(backoff) - 1)] for i in range(max_attempts - 1)]
    return [max(0, round(b * _JITTER.uniform(0.8, 1.2))) for b in base]


def retry_policy(max_attempts: int, backoff: Sequence[int]) -> Retry | None:
    """RQ's ``Retry`` for ``max_attempts`` runs in all."""
    if max_attempts <= 1:
        return None
    return Retry(max=max_attempts - 1, interval=retry_intervals(max_attempts, backoff))


def build_job(envelope: Envelope, spec: JobSpec, job_id: str | None = None) -> Job:
    """The RQ job for ``envelope``, queued state, not yet written anywhere (RQ's own code)."""
    job = Job.create(
        keys.JOB_FUNC,
        args=(envelope.to_dict(),),
        connection=_NO_CONNECTION,
        id=job_id or uuid.uuid4().hex,
        timeout=spec.timeout_seconds,
        result_ttl=spec.keep_finished_seconds,
        failure_ttl=keys.FAILURE_TTL_SECONDS,
        description=_description(envelope),
        retry=retry_policy(spec.max_attempts, spec.backoff_seconds),
        on_failure=Callback(keys.FAILURE_CALLBACK),
        status=JobStatus.QUEUED,
        origin=spec.queue,
        serializer=JobSerializer,
    )
    job.enqueued_at = rq_now()
    return job


def _description(envelope: Envelope) -> str:
    return f"{envelope.source} {envelope.event_id}"


_PROBE = Envelope(source="probe", event_id="probe", received_at=0.0, headers=(), body=b"")


@functools.lru_cache(maxsize=16)
def _constant_fields(spec: JobSpec) -> tuple[Any, ...]:
    """The fields RQ writes that are the same for every event job of ``spec``, taken once
    from a job RQ built itself."""
    flat = queued_job_fields(build_job(_PROBE, spec, "probe"))
    pairs = zip(flat[0::2], flat[1::2], strict=True)
    return tuple(
        x for field, value in pairs if field not in PER_EVENT_FIELDS for x in (field, value)
    )


#: job data up to this size is queued as is: RQ reads it either way (it decompresses, and takes
#: the data as it is when that fails), and compressing a typical webhook (a few KB) costs a
#: tenth of the request's CPU to save about 1 KB of Redis memory while it waits in the queue
#: (the worker's RQ compresses it anyway when it records the job finished)
COMPRESS_ABOVE = 4096


def job_data(envelope: Envelope) -> bytes:
    """The job's ``data`` field: the call, serialised (and compressed when that pays) as RQ
    stores it."""
    data = JobSerializer.dumps((keys.JOB_FUNC, None, (envelope.to_dict(),), {}))
    return zlib.compress(data) if len(data) > COMPRESS_ABOVE else data


@dataclass(frozen=True)
class ClaimScript:
    """The claim-and-enqueue script of one configuration (its constant job fields in it), and
    how to call it for an event."""

    spec: JobSpec
    text: str
    sha: str

    def call(
        self,
        envelope: Envelope,
        *,
        replicated: bool = False,
        job_id: str | None = None,
        now: float | None = None,
        shard: keys.Shard = keys.UNSHARDED,
    ) -> tuple[list[str], list[Any]]:
        """KEYS and ARGV for one event in ``shard`` (the one its (source, event id) routes
        to); ``replicated`` when the answer waits for replicas (a duplicate then writes the
        barrier, so waiting for it waits for the claim)."""
        job_id = job_id or os.urandom(16).hex()  # as unique as uuid4's, a quarter the cost
        at = time.time() if now is None else now
        claim = self.spec.claim_keys(envelope.source, envelope.event_id, at)
        keys_ = [
            *(shard.own_key(k) for k in claim.keys),
            shard.job_key(job_id),
            shard.queue_key(self.spec.queue),
            shard.queues_set,
        ]
        if replicated:
            keys_.append(shard.ack_barrier)
        args: list[Any] = [
            claim.member,
            claim.expire_at,
            job_id,
            utcformat(rq_now()),
            job_data(envelope),
            _description(envelope),
        ]
        if self.spec.max_attempts > 1:
            intervals = retry_intervals(self.spec.max_attempts, self.spec.backoff_seconds)
            args.append(json.dumps(intervals))
        return keys_, args


@functools.lru_cache(maxsize=16)
def claim_script(spec: JobSpec) -> ClaimScript:
    """The script for ``spec``: RQ's job hash for it, but for what differs per event (built
    once from a job RQ built itself; ``tests/test_rqcompat.py`` holds what it writes equal to
    what RQ's own ``enqueue_job`` writes)."""
    constant = ", ".join(_lua_string(v) for v in _constant_fields(spec))
    text = _SCRIPT.replace("@CONSTANT@", constant).replace(
        "@GENERATIONS@", str(keys.CLAIM_GENERATIONS + 1)
    )
    return ClaimScript(spec, text, hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest())


def claim(
    client: Redis,
    envelope: Envelope,
    spec: JobSpec,
    *,
    job_id: str | None = None,
    now: float | None = None,
    shard: keys.Shard = keys.UNSHARDED,
) -> EnqueueResult:
    """Claim and enqueue one event with a synchronous client: what the ingress does, for the
    tools and the tests (``now``: the time the claim is made at, else the clock's)."""
    script = claim_script(spec)
    keys_, args = script.call(envelope, job_id=job_id, now=now, shard=shard)
    return parse_reply(client.eval(script.text, len(keys_), *keys_, *args))


@dataclass(frozen=True)
class EnqueueResult:
    """``accepted`` is False when the id was already claimed (``job_id`` is then empty)."""

    accepted: bool
    job_id: str


def parse_reply(reply: Any) -> EnqueueResult:
    status, job_id = reply
    if isinstance(job_id, bytes):
        job_id = job_id.decode()
    return EnqueueResult(bool(int(status)), str(job_id))


def claims_held(
    client: Redis,
    spec: JobSpec,
    events: Sequence[tuple[str, str]],
    now: float | None = None,
    shard: keys.Shard = keys.UNSHARDED,
) -> list[bool]:
    """For each (source, event id), whether it is claimed in ``shard``: a delivery now would
    be answered "duplicate" (one round trip; for the tools, the tests and the fault runs)."""
    at = time.time() if now is None else now
    claims = [
        shard.claim_keys(spec.claim_keys(source, event_id, at)) for source, event_id in events
    ]
    with client.pipeline(transaction=False) as pipe:
        for claimed in claims:
            for key in claimed.keys:
                pipe.sismember(key, str(claimed.member))
        found = iter(pipe.execute())
    return [any([next(found) for _ in claimed.keys]) for claimed in claims]


def is_claimed(
    client: Redis,
    spec: JobSpec,
    source: str,
    event_id: str,
    now: float | None = None,
    shard: keys.Shard = keys.UNSHARDED,
) -> bool:
    """Whether (source, event id) is claimed (see :func:`claims_held`)."""
    return claims_held(client, spec, [(source, event_id)], now, shard)[0]
