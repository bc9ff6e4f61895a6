"""The claim-and-enqueue step at its edges: what RQ reads back from a queued event's job, and
the Lua literals the claim script is written with."""

from __future__ import annotations

import redis
from rq.job import Job

from shared import keys
from shared.enqueue import JobSpec, _lua_string, claim
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
    spec = JobSpec.from_settings(make_settings(redis_url))
    result = claim(redis_client, ENVELOPE, spec)
    # When RQ reads its job back
    job = Job.fetch(result.job_id, connection=redis_client, serializer=JobSerializer)
    # Then RQ keeps its result and its failure as long as hookline says (not RQ's defaults),
    # and calls hookline's failure callback when a worker holding it dies
    assert job.result_ttl == keys.RESULT_TTL_SECONDS
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
