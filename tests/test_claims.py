"""The ingress claims the events of one loop turn in one Redis round trip, and each request
still gets its own answer once its own claim is in Redis."""

from __future__ import annotations

import asyncio
from typing import Any

import redis
from aiohttp.test_utils import TestClient
from rq import Queue

from ingest.app import CLAIMS, create_app
from ingest.claims import Claims
from shared.rqcompat import JobSerializer
from tests.helpers import make_settings, signed


async def test_concurrent_requests_share_round_trips_and_each_gets_its_answer(
    aiohttp_client: Any, redis_url: str, redis_client: redis.Redis, monkeypatch: Any
) -> None:
    settings = make_settings(redis_url)
    app = create_app(settings)
    client: TestClient = await aiohttp_client(app)
    trips: list[int] = []
    real = Claims._round_trip

    async def counted(self: Claims, calls: Any) -> Any:
        trips.append(len(calls))
        return await real(self, calls)

    monkeypatch.setattr(Claims, "_round_trip", counted)
    deliveries = [signed(settings, "moncash", n=i) for i in range(40)]
    # When forty deliveries arrive at once, and one of them twice
    deliveries.append(deliveries[0])
    answers = await asyncio.gather(
        *(client.post("/webhooks/moncash", data=b, headers=h) for b, h, _ in deliveries)
    )
    statuses = sorted(r.status for r in answers)
    # Then each got its own answer: forty accepted, one duplicate, forty jobs queued
    assert statuses == [200] + [202] * 40
    assert Queue("hookline", connection=redis_client, serializer=JobSerializer).count == 40
    # And they went to Redis in far fewer round trips than requests
    assert sum(trips) == 41 and len(trips) < 20, trips


async def test_a_redis_that_forgot_the_script_is_taught_it_again(
    aiohttp_client: Any, redis_url: str, redis_client: redis.Redis
) -> None:
    settings = make_settings(redis_url)
    app = create_app(settings)
    client: TestClient = await aiohttp_client(app)
    body, headers, _ = signed(settings, "moncash", n=1)
    assert (await client.post("/webhooks/moncash", data=body, headers=headers)).status == 202
    # When Redis restarts (its scripts are gone)
    redis_client.script_flush()
    assert not redis_client.script_exists(app[CLAIMS][0].sha)[0]
    body, headers, _ = signed(settings, "moncash", n=2)
    # Then the next event is still accepted, not 503
    assert (await client.post("/webhooks/moncash", data=body, headers=headers)).status == 202
