"""The claim-and-enqueue step at its edges: what RQ reads back from a queued event's job, and
the Lua literals the claim script is written with."""

from __future__ import annotations

import re
import time
import zlib
from dataclasses import replace

import pytest
import redis
from rq.job import Job

from shared import keys
from shared.enqueue import (
    COMPRESS_ABOVE,
    JobSpec,
    _lua_string,
    claim,
    claim_script,
    claims_held,
    is_claimed,
    parse_reply,
)
from shared.envelope import Envelope
from shared.rqcompat import JobSerializer
from tests.helpers import make_settings

ENVELOPE = Envelope(
    source="moncash", event_id="evt_edge", received_at=1_700_000_000.0, headers=(), body=b"{}"
)


def test_a_queued_event_job_keeps_hooklines_ttls_and_failure_callback(
    redis_url: str, redis_client: redis.Redis
) -> None:
    # Given an event claimed and queued as the ingress does
    spec = JobSpec.from_settings(make_settings(redis_url, worker={"job_timeout_seconds": 77}))
    result = claim(redis_client, ENVELOPE, spec)
    # When RQ reads its job back
    job = Job.fetch(result.job_id, connection=redis_client, serializer=JobSerializer)
    # Then RQ keeps its result and its failure as long as hookline says (not RQ's defaults),
    # and calls hookline's failure callback when a worker holding it dies
    assert job.timeout == 77
    assert re.fullmatch("[0-9a-f]{32}", job.id)
    assert job.result_ttl == 0  # [worker] keep_finished_seconds: gone once applied
    assert job.failure_ttl == keys.FAILURE_TTL_SECONDS
    assert job.failure_callback is not None
    assert f"{job.failure_callback.__module__}.{job.failure_callback.__name__}" == (
        keys.FAILURE_CALLBACK
    )


def test_every_byte_survives_a_lua_literal(redis_client: redis.Redis) -> None:
    # Given a value holding every byte, as Redis may store a job field (bytes)
    value = bytes(range(256))
    # When Redis's Lua evaluates the literal the claim script would be written with
    back = redis_client.eval(f"return {_lua_string(value)}", 0)
    # Then it is the same bytes, and text is written as its UTF-8 bytes
    assert back == value
    text = 'café "q" \\'
    assert redis_client.eval("return " + _lua_string(text), 0) == text.encode()


@pytest.mark.parametrize("max_attempts", [1, 2])
def test_a_queued_event_job_has_one_retry_interval_per_retry(
    redis_client: redis.Redis, max_attempts: int
) -> None:
    result = claim(redis_client, ENVELOPE, JobSpec("hookline", 60, 100, max_attempts, (30,)))
    job = Job.fetch(result.job_id, connection=redis_client, serializer=JobSerializer)
    if max_attempts == 1:  # no retry: no intervals, as RQ's own enqueue writes it
        assert not redis_client.hexists(keys.job_key(job.id), "retry_intervals")
    else:
        assert job.retry_intervals is not None and len(job.retry_intervals) == 1
        assert 24 <= job.retry_intervals[0] <= 36


def test_retry_intervals_follow_the_backoff_within_20_percent_jitter(
    redis_client: redis.Redis,
) -> None:
    # Given events queued with backoff 10 s then 1000 s, for 200 retries
    spec = JobSpec("hookline", 60, 100, 201, (10, 1000))
    result = claim(redis_client, ENVELOPE, spec)
    job = Job.fetch(result.job_id, connection=redis_client, serializer=JobSerializer)
    intervals = job.retry_intervals
    assert intervals is not None and len(intervals) == 200
    # Then the first is about 10 s, every other about 1000 s (+-20 %), and they are spread out
    assert 8 <= intervals[0] <= 12
    later = intervals[1:]
    assert all(800 <= i <= 1200 for i in later)
    assert min(later) < 850 and max(later) > 1150


def test_job_data_is_stored_as_is_up_to_the_threshold_and_compressed_above(
    redis_client: redis.Redis,
) -> None:
    spec = JobSpec("hookline", 60, 100, 1, (30,))

    def queued(event_id: str) -> tuple[bytes, bytes]:
        """RQ's own data for the event's job, and the data the claim stored."""
        env = replace(ENVELOPE, event_id=event_id)
        job = Job.create(
            keys.JOB_FUNC, args=(env.to_dict(),), connection=redis_client, serializer=JobSerializer
        )
        job_id = claim(redis_client, env, spec).job_id
        stored = redis_client.hget(keys.job_key(job_id), "data")
        assert stored is not None
        return job.data, stored

    short = len(queued("e")[0])
    plain, stored = queued("e" * (1 + COMPRESS_ABOVE - short))
    assert len(plain) == COMPRESS_ABOVE and stored == plain
    plain, stored = queued("e" * (2 + COMPRESS_ABOVE - short))
    assert stored != plain and zlib.decompress(stored) == plain


def test_only_a_replicated_duplicate_writes_the_ack_barrier(redis_client: redis.Redis) -> None:
    # Given an event claimed once
    spec = JobSpec("hookline", 60, 100, 1, (30,))
    first = claim(redis_client, ENVELOPE, spec)
    # When it comes again, first as the synchronous tools claim it
    again = claim(redis_client, ENVELOPE, spec)
    # Then it is a duplicate of the first, and no barrier is written
    assert first.accepted and (again.accepted, again.job_id) == (False, "")
    assert not redis_client.exists(keys.ACK_BARRIER)
    # When it comes again where the answer waits for replicas
    script = claim_script(spec)
    keys_, args = script.call(ENVELOPE, replicated=True)
    reply = parse_reply(redis_client.eval(script.text, len(keys_), *keys_, *args))
    # Then it is a duplicate too, and the barrier was written
    assert (reply.accepted, reply.job_id) == (False, "")
    assert redis_client.get(keys.ACK_BARRIER) == b"1"


# -- claims: small sets of 64-bit integers, by generation and bucket --------------------------

DAY = 86_400


def _next_generation() -> int:
    """The start of the next claims generation of a 3-day window (1.5 days long): claims made
    around it expire in the future, as Redis needs them to."""
    length = keys.claim_generation_seconds(3 * DAY)
    return (int(time.time()) // length + 1) * length


@pytest.mark.parametrize("later", [0, 1, DAY, 2 * DAY, 3 * DAY - 1])
@pytest.mark.parametrize("offset", [-1, 0, 1])
def test_a_redelivery_within_the_window_is_a_duplicate_wherever_the_generations_fall(
    redis_client: redis.Redis, offset: int, later: int
) -> None:
    # Given an event claimed with a 3-day window just before, at and after a generation starts
    at = _next_generation() + offset
    spec = JobSpec("hookline", 60, 3 * DAY, 1, (30,))
    assert claim(redis_client, ENVELOPE, spec, now=at).accepted
    # When it comes again inside the window
    again = claim(redis_client, ENVELOPE, spec, now=at + later)
    # Then it is a duplicate, nothing more is queued, and its set outlives the window
    assert not again.accepted
    assert redis_client.llen(keys.queue_key("hookline")) == 1
    written = spec.claim_keys(ENVELOPE.source, ENVELOPE.event_id, at)
    assert written.expire_at >= at + 3 * DAY
    assert redis_client.expiretime(written.keys[0]) == written.expire_at


def test_a_redelivery_after_the_window_and_a_half_is_accepted_again(
    redis_client: redis.Redis,
) -> None:
    spec = JobSpec("hookline", 60, 3 * DAY, 1, (30,))
    at = _next_generation() + 7
    assert claim(redis_client, ENVELOPE, spec, now=at).accepted
    # a claim is looked for until its generation's set expires: at most 1.5 windows
    claimed = spec.claim_keys(ENVELOPE.source, ENVELOPE.event_id, at)
    assert claimed.expire_at <= at + 3 * DAY + 1.5 * DAY
    assert claim(redis_client, ENVELOPE, spec, now=claimed.expire_at).accepted


def test_distinct_events_are_never_taken_for_each_other_and_share_few_sets(
    redis_client: redis.Redis,
) -> None:
    # Given 5,000 distinct events of two sources (same ids), with 16 sets per generation
    at = _next_generation()
    spec = JobSpec("hookline", 60, 3 * DAY, 1, (30,), claim_bucket_bits=4)
    events = [
        replace(ENVELOPE, source=source, event_id=f"evt_{n}")
        for n in range(2_500)
        for source in ("a", "b")
    ]
    script = claim_script(spec)
    with redis_client.pipeline(transaction=False) as pipe:
        for event in events:
            keys_, args = script.call(event, now=at)
            pipe.eval(script.text, len(keys_), *keys_, *args)
        replies = [parse_reply(r) for r in pipe.execute()]
    # Then every one is accepted, the claims live in at most 16 sets as integers, and each
    # is found again
    assert all(r.accepted for r in replies)
    sets = list(redis_client.scan_iter(keys.CLAIM + "*"))
    assert 1 <= len(sets) <= 16
    assert sum(redis_client.scard(s) for s in sets) == 5_000
    assert all(
        redis_client.object("encoding", s) == b"intset"
        for s in sets
        if redis_client.scard(s) <= 512
    )
    held = claims_held(redis_client, spec, [(e.source, e.event_id) for e in events], now=at + 1)
    assert all(held)
    assert not is_claimed(redis_client, spec, "c", "evt_1", now=at + 1)
