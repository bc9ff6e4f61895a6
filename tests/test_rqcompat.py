"""hookline's layer over RQ (shared/rqcompat.py) writes what RQ itself writes.

The same job goes once through RQ's own code (``Queue.enqueue_job``, ``SimpleWorker``) and once
through hookline's (the ingress's claim-and-enqueue script, the batch loop), each time into an
empty Redis database; every key left behind is compared: type, value, expiry, timestamps and
generated ids aside. An RQ upgrade that changes what RQ writes fails here first.
"""

from __future__ import annotations

import json
import pickle
import re
import zlib
from pathlib import Path
from typing import Any

import pytest
import redis
from rq import SimpleWorker
from rq.job import Job

from shared import keys
from shared.config import Settings
from shared.enqueue import JobSpec, build_job, claim, is_claimed
from shared.envelope import Envelope, InvalidEnvelope
from shared.rqcompat import JobSerializer
from tests.helpers import make_settings
from tests.services import flush_except_lock
from workers import runtime
from workers.worker import EventWorker, drain, queues_for

JOB_ID = "compare-job"  # not 32 hex digits: the normaliser tells it from generated ids
ENVELOPE = Envelope(
    source="flaky",
    event_id="cmp-1",
    received_at=1_700_000_000.5,
    headers=(("Content-Type", "application/json"),),
    body=b'{"id": "cmp-1", "type": "x"}',
    remote="127.0.0.1",
)
_TIME = re.compile(
    rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z?|\b1[6-9]\d{8}(\.\d+)?\b|\b1[6-9]\d{11}-\d+\b"
)
_GENERATED_ID = re.compile(rb"\b[0-9a-f]{32}\b")
#: fields whose text differs between two runs of the same job by nature
_VARYING = {b"exc_info": b"<traceback>", b"exc_string": b"<traceback>", b"pid": b"<pid>"}


def _norm(value: bytes) -> bytes:
    return _GENERATED_ID.sub(b"<id>", _TIME.sub(b"<time>", value))


def _maybe_decompress(value: bytes) -> bytes:
    try:
        return zlib.decompress(value)
    except zlib.error:
        return value


def _hash(raw: dict[bytes, bytes]) -> dict[bytes, Any]:
    out: dict[bytes, Any] = {}
    for field, value in raw.items():
        if field in _VARYING:
            out[field] = _VARYING[field]
        elif field == b"data":
            # RQ always compresses; hookline only data worth it (RQ reads both the same way)
            out[field] = JobSerializer.loads(_maybe_decompress(value))
        elif field in (b"retry_intervals", b"total_working_time"):
            out[field] = "<jittered>" if field == b"retry_intervals" else "<seconds>"
        else:
            out[field] = _norm(value)
    return out


def snapshot(client: redis.Redis, skip: tuple[bytes, ...] = ()) -> dict[bytes, Any]:
    """Every key (but the test run's lock and ``skip`` prefixes), normalised."""
    out: dict[bytes, Any] = {}
    for key in client.scan_iter(count=1000):
        if key == b"hookline-test-run-lock" or key.startswith(skip):
            continue
        kind = client.type(key)
        ttl = client.ttl(key)
        value: Any
        if kind == b"hash":
            value = _hash(client.hgetall(key))
        elif kind == b"list":
            value = [_norm(v) for v in client.lrange(key, 0, -1)]
        elif kind == b"set":
            value = sorted(_norm(v) for v in client.smembers(key))
        elif kind == b"zset":
            value = sorted(_norm(m) for m in client.zrange(key, 0, -1))
        elif kind == b"stream":
            value = [_hash(fields) for _id, fields in client.xrange(key)]
        else:
            value = _norm(client.get(key) or b"")
        out[_norm(key)] = (kind, value, "expires" if ttl > 0 else ttl)
    return out


def diff(ours: dict[bytes, Any], rqs: dict[bytes, Any]) -> list[str]:
    problems = [f"only hookline wrote {k!r}: {ours[k]}" for k in ours.keys() - rqs.keys()]
    problems += [f"only RQ wrote {k!r}: {rqs[k]}" for k in rqs.keys() - ours.keys()]
    for k in ours.keys() & rqs.keys():
        if ours[k] != rqs[k]:
            problems.append(f"{k!r}:\n  hookline {ours[k]}\n  RQ       {rqs[k]}")
    return problems


# -- the ingress ------------------------------------------------------------------------------


SPEC = JobSpec("hookline", 60, 100, 8, (5, 30, 120))


def rq_enqueued(redis_client: redis.Redis) -> dict[bytes, Any]:
    """Every key RQ's own Queue.enqueue_job writes for the test's event, normalised."""
    queue = queues_for(make_settings(sources={}), [], redis_client)[0]
    job = build_job(ENVELOPE, SPEC, JOB_ID)
    job.connection = redis_client
    queue.enqueue_job(job)
    return snapshot(redis_client)


def test_the_claim_script_writes_the_job_rq_enqueue_writes(
    redis_client: redis.Redis, redis_url: str
) -> None:
    spec = SPEC
    # Given the job RQ's own Queue.enqueue_job writes for an event
    rqs = rq_enqueued(redis_client)
    # When the ingress's claim-and-enqueue script queues the same event with the same id
    flush_except_lock(redis_url)
    assert claim(redis_client, ENVELOPE, spec, job_id=JOB_ID).accepted
    ours = snapshot(redis_client, skip=(keys.CLAIM.encode(),))
    # Then every key RQ wrote is there, the same (the claim is hookline's own)
    assert diff(ours, rqs) == []
    assert is_claimed(redis_client, spec, ENVELOPE.source, ENVELOPE.event_id)


def test_a_replay_writes_the_job_rq_enqueue_writes_in_any_shard(
    redis_client: redis.Redis, redis_url: str
) -> None:
    from shared import rqcompat

    spec = SPEC
    # Given the job RQ's own Queue.enqueue_job writes for an event
    rqs = rq_enqueued(redis_client)
    # When a replay queues the same job (the commands and the console, in any shard)
    flush_except_lock(redis_url)
    rqcompat.enqueue(redis_client, build_job(ENVELOPE, spec, JOB_ID))
    # Then it wrote the same keys
    assert diff(snapshot(redis_client), rqs) == []
    # And in a shard, the same under the shard's prefix
    flush_except_lock(redis_url)
    shard = keys.Layout.of(3, cluster=True).shards[1]
    rqcompat.enqueue(redis_client, build_job(ENVELOPE, spec, JOB_ID), shard)
    ours = snapshot(redis_client)
    assert ours and all(k.startswith(shard.rq_prefix.encode() + b":") for k in ours)
    base, tagged = keys.PROCESS_RQ_PREFIX.encode(), shard.rq_prefix.encode()
    assert diff(_untagged(ours, tagged, base), rqs) == []


def _untagged(found: dict[bytes, Any], tagged: bytes, base: bytes) -> dict[bytes, Any]:
    """A shard's snapshot with the shard's prefix put back to RQ's, in names and members."""

    def back(value: Any) -> Any:
        if isinstance(value, bytes) and value.startswith(tagged):
            return base + value[len(tagged) :]
        if isinstance(value, list):
            return [back(v) for v in value]
        return value

    return {back(k): (kind, back(v), ttl) for k, (kind, v, ttl) in found.items()}


# -- the workers ------------------------------------------------------------------------------


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HOOKLINE_TEST_STATE", str(tmp_path))
    return tmp_path


def _settings(redis_url: str, tmp: Path, name: str, **worker: Any) -> Settings:
    from shared.migrate import upgrade

    db = f"sqlite:///{tmp / name}.db"
    upgrade(db)
    sources = {
        "flaky": {
            "scheme": "hmac",
            "secrets": ["f"],
            "event_id": "json:id",
            "event_type": "json:type",
        }
    }
    return make_settings(
        redis_url,
        db,
        sources=sources,
        worker={"handlers": ["tests.handlers_for_tests"], **worker},
    )


def _run(client: redis.Redis, settings: Settings, engine: str) -> dict[bytes, Any]:
    """Queue ENVELOPE's job (by RQ's own enqueue), run it with ``engine``, snapshot Redis."""
    runtime.configure(settings)
    queue = queues_for(settings, [], client)[0]
    job = build_job(ENVELOPE, JobSpec.from_settings(settings), JOB_ID)
    job.connection = client
    queue.enqueue_job(job)
    if engine == "rq":
        SimpleWorker([queue], connection=client, serializer=JobSerializer).work(burst=True)
    else:
        keep = settings.worker.keep_finished_seconds
        drain(EventWorker([queue], connection=client, keep_finished=keep), [queue])
    # the workers' own registrations differ by nature (names, pids, birth): compare the jobs'
    return snapshot(client, skip=(b"rq:worker", b"rq:workers", b"rq:clean_registries"))


@pytest.mark.parametrize(
    "case, worker, fail",
    [
        ("finished", {"max_attempts": 3, "backoff_seconds": [30]}, 0),
        ("kept", {"max_attempts": 3, "keep_finished_seconds": 3600}, 0),
        ("retried", {"max_attempts": 3, "backoff_seconds": [30]}, 1),
        ("failed", {"max_attempts": 1}, 1),
    ],
)
def test_the_batch_loop_writes_what_rqs_own_worker_writes(
    redis_client: redis.Redis,
    redis_url: str,
    tmp_path: Path,
    state: Path,
    case: str,
    worker: dict[str, Any],
    fail: int,
) -> None:
    # Given the same event job run by RQ's own SimpleWorker, and by hookline's batch loop
    results = {}
    for engine in ("rq", "hookline"):
        flush_except_lock(redis_url)
        (state / f"fail_{ENVELOPE.event_id}").write_text(str(fail))
        settings = _settings(redis_url, tmp_path, engine, **worker)
        results[engine] = _run(redis_client, settings, engine)
    # Then what each left in Redis is the same, key for key
    assert diff(results["hookline"], results["rq"]) == [], case
    expected = {"kept": "finished", "retried": "scheduled", "failed": "failed"}.get(case)
    if expected is None:  # finished, not kept: nothing of the job is left (RQ's result_ttl 0)
        assert not redis_client.exists(keys.job_key(JOB_ID))
        left = {k.decode() for k in results["hookline"]}
        assert left <= {keys.QUEUES_SET, "rq:clean_groups"}, left
        return
    job = Job.fetch(JOB_ID, connection=redis_client, serializer=JobSerializer)
    assert job.get_status() == expected


# -- no pickle -------------------------------------------------------------------------------


class _Boom:
    def __reduce__(self) -> tuple[Any, ...]:
        return (print, ("pwned",))


def test_job_data_is_json_and_a_pickle_that_names_a_function_is_refused() -> None:
    data = JobSerializer.dumps((keys.JOB_FUNC, None, (ENVELOPE.to_dict(),), {}))
    assert json.loads(data)[2][0]["body"] == "eyJpZCI6ICJjbXAtMSIsICJ0eXBlIjogIngifQ=="
    with pytest.raises(pickle.UnpicklingError, match="refused"):
        JobSerializer.loads(pickle.dumps((keys.JOB_FUNC, None, (_Boom(),), {})))


def test_jobs_queued_before_the_upgrade_are_read() -> None:
    # the version 1 envelope, pickled by RQ's default serializer (what hookline queued before)
    old = {
        "v": 1,
        "source": "moncash",
        "event_id": "evt_old",
        "received_at": 1.5,
        "headers": [["A", "b"]],
        "body": b"{}",
        "remote": None,
        "replay": True,
    }
    data = pickle.dumps((keys.JOB_FUNC, None, (old,), {}), protocol=pickle.HIGHEST_PROTOCOL)
    _, _, (envelope_data,), _ = JobSerializer.loads(data)
    envelope = Envelope.from_dict(envelope_data)
    assert (envelope.event_id, envelope.body, envelope.replay) == ("evt_old", b"{}", "dead")


@pytest.mark.parametrize(
    "data, reason",
    [
        ("not a dict", "not an event envelope"),
        ({"v": 3}, "unknown envelope version"),
        ({"v": 2, "body": "***"}, "not base64"),
        ({"v": 2, "body": "", "source": "", "event_id": "e"}, "source is not text"),
        ({"v": 1, "body": "text"}, "body is not bytes"),
        (
            {"v": 2, "body": "", "source": "s", "event_id": "e", "received_at": "x"},
            "received_at",
        ),
        (
            {"v": 2, "body": "", "source": "s", "event_id": "e", "received_at": 1, "headers": 7},
            "headers",
        ),
        ({"v": 2, "body": "", "replay": 1}, "replay"),
    ],
)
def test_envelopes_that_are_not_what_hookline_wrote_are_refused(data: Any, reason: str) -> None:
    with pytest.raises(InvalidEnvelope, match=reason):
        Envelope.from_dict(data)


def test_a_queue_name_cannot_change_the_claim_script(redis_client: redis.Redis) -> None:
    # a name that would end a Lua string and run code, if it were pasted in as is
    name = 'q" .. redis.call("FLUSHDB") .. "\\\n\x00é'
    spec = JobSpec(name, 60, 100, 2, (5,))
    redis_client.set("canary", 1)
    assert claim(redis_client, ENVELOPE, spec, job_id=JOB_ID).accepted
    assert redis_client.get("canary") == b"1"
    job = Job.fetch(JOB_ID, connection=redis_client, serializer=JobSerializer)
    assert job.origin == name
    assert redis_client.llen(keys.queue_key(name)) == 1


@pytest.mark.parametrize("size, compressed", [(100, False), (5000, True)])
def test_job_data_is_compressed_when_it_pays_and_rq_reads_it_either_way(
    redis_client: redis.Redis, size: int, compressed: bool
) -> None:
    from dataclasses import replace

    envelope = replace(ENVELOPE, body=b"x" * size)
    spec = JobSpec("hookline", 60, 100, 2, (5,))
    assert claim(redis_client, envelope, spec, job_id=JOB_ID).accepted
    stored = redis_client.hget(keys.job_key(JOB_ID), "data")
    assert stored is not None and (stored[:1] == b"x") == compressed
    job = Job.fetch(JOB_ID, connection=redis_client, serializer=JobSerializer)
    assert Envelope.from_dict(job.args[0]).body == envelope.body


def test_what_orjson_refuses_is_written_and_read_by_the_standard_library() -> None:
    # a header aiohttp decoded with surrogateescape (not UTF-8 on the wire), a huge integer
    envelope = Envelope("s", "e", 1.0, (("X-Odd", "caf\udce9"),), b"{}")
    data = JobSerializer.dumps((keys.JOB_FUNC, None, (envelope.to_dict(), 10**30), {}))
    _, _, (back, big), _ = JobSerializer.loads(data)
    assert Envelope.from_dict(back).headers == envelope.headers and big == 10**30
