"""Redis refusing a write at ``maxmemory`` is known for what it is, whatever carries it.

A command's refusal reaches redis-py as ``OutOfMemoryError``; a script's refused write, before
Redis 7.2, as a plain ``ResponseError`` ("Error running script ... -OOM command not allowed
..."). The ingress's claim and the workers' bookkeeping are scripts: found by
``chaos/run.py --scenario redis-full`` with ``shed_at_memory_percent = 0`` on Redis 7.0, where
the ingress logged every refusal as "redis unavailable: ResponseError" (its rejections counted
as ``unavailable``, not ``redis_full``, and it asked Redis again for every request instead of
shedding until its next reading) and a worker stopped on one ("cannot reach Redis"). Here on a
real redis-server of the test's own whose ``maxmemory`` is below what it holds."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from aiohttp.test_utils import TestClient

from hookline.dev import redis_server_binary
from ingest.app import create_app
from shared.redisconn import refused_for_memory
from tests.helpers import SOURCES, make_settings, signed
from tests.processes import env_for, free_port, start_in_group, stop_groups, wait_until


@pytest.fixture
def full_redis(tmp_path: Path) -> Iterator[tuple[str, redis.Redis]]:
    port = free_port()
    argv = [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    argv += ["--appendonly", "no", "--maxmemory-policy", "noeviction", "--dir", str(tmp_path)]
    proc = start_in_group(argv, env_for(), tmp_path / "redis.log")
    client = redis.Redis(port=port, socket_timeout=5)
    try:
        wait_until(client.ping, 20, "redis-server answering")
        # full from the start: less room than it already uses
        client.config_set("maxmemory", "100kb")
        yield f"redis://127.0.0.1:{port}/0", client
    finally:
        client.close()
        stop_groups([proc])


def test_a_scripts_refused_write_is_a_refusal_for_memory(
    full_redis: tuple[str, redis.Redis],
) -> None:
    _, client = full_redis
    with pytest.raises(redis.RedisError) as command:
        client.set("k", "v")
    with pytest.raises(redis.RedisError) as script:
        client.register_script("return redis.call('SET', KEYS[1], 'v')")(keys=["k"])
    assert refused_for_memory(command.value)
    assert refused_for_memory(script.value)
    assert not refused_for_memory(redis.ResponseError("WRONGTYPE Operation against a key"))


async def test_the_ingress_answers_a_full_redis_503_counted_as_redis_full(
    aiohttp_client: Any, full_redis: tuple[str, redis.Redis]
) -> None:
    url, client = full_redis
    settings = make_settings(
        url, sources={"moncash": SOURCES["moncash"]}, ingest={"shed_at_memory_percent": 0}
    )
    http: TestClient = await aiohttp_client(create_app(settings))
    # Given a Redis with no room, and an ingress that does not shed before it is full
    body, headers, _ = signed(settings, "moncash", n=1)
    # When an event arrives
    resp = await http.post("/webhooks/moncash", data=body, headers=headers)
    # Then it is refused for now, and nothing of it is in Redis
    assert resp.status == 503 and resp.headers["Retry-After"]
    assert client.dbsize() == 0
    # And the refusal is counted as Redis being full, not as Redis being away
    metrics = await (await http.get("/metrics")).text()
    assert 'hookline_ingest_rejected_total{reason="redis_full",source="moncash"} 1.0' in metrics
    assert 'reason="unavailable"' not in metrics
