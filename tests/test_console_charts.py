"""The overview's charts: what they are drawn from (the ingress's buckets in Redis, the tables on
SQLite and PostgreSQL) and how (SVG a strict CSP allows, lines told apart without colour)."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import time
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient
from sqlalchemy import insert

from console.charts import LOOKS, Chart, Line, nice_ceiling, svg
from hookline.ops import Operations
from shared import activity, keys, traffic
from shared.config import Settings
from shared.db import dead_letters, make_engine, webhook_events
from shared.traffic import Rejection, Traffic
from tests import test_console
from tests.test_console import logged_in

# the console tests' fixtures, requested here by name
env = test_console.env
settings = test_console.settings
client = test_console.client

HOUR = [1_800_000_000.0 + 60 * i for i in range(60)]


@pytest.fixture(autouse=True)
def _no_cached_buckets() -> None:
    """Buckets another test's database filled are not this one's."""
    activity.clear_cache()


def test_each_line_differs_from_the_others_in_dash_and_marker_not_only_colour() -> None:
    assert len({look.dash for look in LOOKS}) == len(LOOKS)
    assert len({look.marker for look in LOOKS}) == len(LOOKS)
    chart = Chart(
        "c1",
        "moncash: requests per minute",
        "per minute",
        HOUR,
        60,
        [Line("accepted", [1.0] * 60), Line("duplicates", [2.0] * 60), Line("rejected", [0] * 60)],
    )
    drawn = str(svg(chart))
    # one group per line, each with its own dash pattern and marker, and a legend entry each
    groups = re.findall(r'<g class="series" data-label="([^"]+)">(.*?)</g>', drawn)
    assert [g[0] for g in groups] == ["accepted", "duplicates", "rejected"]
    assert "stroke-dasharray" not in groups[0][1] and "<circle" in groups[0][1]
    assert 'stroke-dasharray="6 3"' in groups[1][1] and "<rect" in groups[1][1]
    assert 'stroke-dasharray="2 3"' in groups[2][1] and "<polygon" in groups[2][1]
    legend = re.findall(r'<g class="legend">.*?<text[^>]*>([^<]+)</text></g>', drawn)
    assert legend == ["accepted", "duplicates", "rejected"]
    # nothing the CSP forbids, and a description for screen readers
    assert "style=" not in drawn and "<script" not in drawn and " on" not in drawn
    assert '<title id="c1-title">moncash: requests per minute</title>' in drawn
    assert "accepted: total 60, peak 1; duplicates: total 120, peak 2" in drawn


def test_values_are_placed_on_a_round_scale_and_gaps_break_the_line() -> None:
    assert [nice_ceiling(v) for v in (0, 0.3, 1, 7, 11, 240, 2600)] == [
        1,
        0.5,
        1,
        10,
        20,
        250,
        5000,
    ]
    values: list[float | None] = [4.0] * 10 + [None] * 5 + [8.0] * 10
    drawn = str(svg(Chart("c2", "depth", "events", HOUR[:25], 60, [Line("queued", values)])))
    assert drawn.count("<polyline") == 2  # no line drawn through the minutes with no sample
    assert ">10</text>" in drawn  # the scale's top: 8 rounded up


def test_labels_are_escaped() -> None:
    hostile = '<script>alert(1)</script>"'
    drawn = str(svg(Chart("c3", hostile, "per minute", HOUR, 60, [Line(hostile, [1] * 60)])))
    assert "<script>" not in drawn and "&lt;script&gt;" in drawn


def _at(seconds: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, dt.UTC)


def _row(source: str, event_id: str, received: float, processed: float, status: str) -> Any:
    return {
        "source": source,
        "event_id": event_id,
        "event_type": "t",
        "status": status,
        "attempts": 1,
        "received_at": _at(received),
        "processed_at": _at(processed),
    }


def _dead(event_id: str, failed: float) -> dict[str, Any]:
    return {
        "source": "moncash",
        "event_id": event_id,
        "reason": "boom",
        "permanent": 0,
        "attempts": 3,
        "errors": [],
        "headers": [],
        "body": b"{}",
        "received_at": _at(failed - 100),
        "failed_at": _at(failed),
        "replays": 0,
    }


def test_the_workers_activity_is_read_from_the_tables_bucket_by_bucket(
    settings: Settings, redis_client: redis.Redis
) -> None:
    # Given events applied 3 and 1 minutes ago (lags 2 s, 4 s, 30 s), one dead 1 minute ago,
    # one dead event's row (not applied), and one applied 2 hours ago
    now = time.time()
    minute = int(now // 60) * 60
    engine = make_engine(settings.database_url)
    with engine.begin() as conn:
        conn.execute(
            insert(webhook_events),
            [
                _row("moncash", "a", minute - 180 + 5, minute - 180 + 7, "processed"),
                _row("moncash", "b", minute - 180 + 6, minute - 180 + 10, "ignored"),
                _row("moncash", "c", minute - 60 - 20, minute - 60 + 10, "processed"),
                _row("moncash", "d", minute - 60, minute - 60 + 1, "dead"),
                _row("moncash", "e", minute - 7200, minute - 7200 + 1, "processed"),
            ],
        )
        conn.execute(insert(dead_letters), [_dead("d", minute - 60 + 1)])
    engine.dispose()
    # When the console asks for the last hour
    with Operations(settings) as ops:
        data = ops.activity("hour")
    # Then each bucket holds what was applied in it, with its lag, and the dead letter
    assert data["bucket_seconds"] == 60 and len(data["starts"]) == 60
    assert data["starts"][-1] == minute
    applied = data["applied"]
    assert applied[-4] == 2 and applied[-2] == 1 and sum(applied) == 3
    assert data["lag_mean_seconds"][-4] == pytest.approx(3.0, abs=0.01)
    assert data["lag_max_seconds"][-4] == pytest.approx(4.0, abs=0.01)
    assert data["lag_max_seconds"][-2] == pytest.approx(30.0, abs=0.01)
    assert data["lag_mean_seconds"][-3] is None
    assert data["dead_lettered"][-2] == 1 and sum(data["dead_lettered"]) == 1


async def test_the_ingress_counts_go_to_minutes_and_5_minute_buckets_with_the_depth(
    redis_url: str, redis_client: redis.Redis, settings: Settings
) -> None:
    # Given the ingress's counts of this minute and 10 minutes ago, and a depth sample
    now = time.time()
    counts = Traffic()
    for _ in range(3):
        counts.count("moncash", "accepted", now)
    counts.count("moncash", "duplicate", now - 600)
    counts.reject(Rejection(now, "moncash", 401, "invalid_signature", "10.0.0.1", 2, ()))
    counts.reject(Rejection(now, "moncash", 401, "stale_timestamp", "10.0.0.1", 2, ()))
    aclient = aioredis.Redis.from_url(redis_url)
    try:
        await counts.flush(aclient)
        await aclient.rpush(keys.queue_key(settings.queue), "j1", "j2")
        depth = await aclient.llen(keys.queue_key(settings.queue))
        await traffic.sample_depth(aclient, depth, now)
    finally:
        await aclient.aclose()
    # When the console asks for the last hour and the last day
    with Operations(settings) as ops:
        hour, day = ops.activity("hour"), ops.activity("day")
    # Then both show them in their buckets, rejections of every reason together
    moncash = hour["sources"]["moncash"]
    assert (moncash["accepted"][-1], moncash["rejected"][-1]) == (3, 2)
    assert moncash["duplicate"][-11] == 1 and sum(moncash["duplicate"]) == 1
    assert hour["queue_depth"][-1] == 2 and hour["queue_depth"][-2] is None
    assert len(day["starts"]) == 288 and day["bucket_seconds"] == 300
    assert sum(day["sources"]["moncash"]["accepted"]) == 3
    assert day["sources"]["moncash"]["accepted"][-1] == 3 or (
        day["sources"]["moncash"]["accepted"][-2] == 3  # the minute just turned a bucket
    )
    assert day["queue_depth"][-1] == 2
    # and the last hour's table still lists sources only (the depth is not one)
    with Operations(settings) as ops:
        assert list(ops.last_hour()) == ["moncash"]
    ttl = redis_client.ttl(traffic.coarse_key(int(now // traffic.COARSE_SECONDS)))
    assert traffic.STATS_TTL_SECONDS < ttl <= traffic.COARSE_TTL_SECONDS


async def test_the_overview_draws_the_charts_of_the_span_asked(
    client: TestClient, redis_url: str, settings: Settings
) -> None:
    counts = Traffic()
    counts.count("moncash", "accepted")
    counts.count("flaky", "duplicate")
    aclient = aioredis.Redis.from_url(redis_url)
    try:
        await counts.flush(aclient)
    finally:
        await aclient.aclose()
    await logged_in(client)
    # When the operator opens the overview, then its last day
    hour = await (await client.get("/")).text()
    day = await (await client.get("/?span=day")).text()
    # Then each shows the workers' charts and one chart per source with traffic
    for page, per in ((hour, "per minute"), (day, "per 5 minutes")):
        assert page.count('<svg class="chart"') == 5
        assert f"<figcaption>moncash: requests {per}</figcaption>" in page
        assert f"<figcaption>flaky: requests {per}</figcaption>" in page
        assert f"<figcaption>Events applied and dead-lettered {per}</figcaption>" in page
        assert "Queue depth" in page and "Lag from received to committed" in page
    assert '<a href="/?span=day" aria-current="page">' in day
    assert '<a href="/?span=hour" aria-current="page">' in hour
    # and a span it does not know is refused
    wrong = await client.get("/?span=week")
    assert wrong.status == 400 and "span: &#39;week&#39; is not hour or day" in await wrong.text()


async def test_the_api_gives_the_charts_numbers(client: TestClient, redis_url: str) -> None:
    counts = Traffic()
    counts.count("moncash", "accepted")
    aclient = aioredis.Redis.from_url(redis_url)
    try:
        await counts.flush(aclient)
    finally:
        await aclient.aclose()
    bearer = {"Authorization": f"Bearer {test_console.TOKEN}"}
    day = await (await client.get("/api/activity?span=day", headers=bearer)).json()
    assert day["bucket_seconds"] == 300 and len(day["applied"]) == 288
    assert sum(day["sources"]["moncash"]["accepted"]) == 1
    hour = await (await client.get("/api/activity", headers=bearer)).json()
    assert hour["span"] == "hour" and len(hour["queue_depth"]) == 60
    wrong = await client.get("/api/activity?span=week", headers=bearer)
    assert wrong.status == 400
    assert (await wrong.json())["message"] == "span: 'week' is not hour or day"
    assert (await client.get("/api/activity")).status == 401


async def test_a_running_ingress_samples_the_queue_depth(
    aiohttp_client: Any, redis_url: str, redis_client: redis.Redis
) -> None:
    from ingest.app import create_app
    from tests.helpers import make_settings

    # Given three events waiting in the queue
    redis_client.rpush(keys.queue_key("hookline"), "j1", "j2", "j3")
    # When an ingress runs for a moment
    await aiohttp_client(create_app(make_settings(redis_url)))
    deadline = time.monotonic() + 10
    minute = traffic.stats_key(int(time.time() // 60))
    while time.monotonic() < deadline and not redis_client.hget(minute, traffic.DEPTH_FIELD):
        await asyncio.sleep(0.2)
        minute = traffic.stats_key(int(time.time() // 60))
    # Then it has written the depth for the console's charts
    assert redis_client.hget(minute, traffic.DEPTH_FIELD) == b"3"


def test_settled_buckets_are_read_once_and_the_last_ones_every_time(
    settings: Settings, redis_client: redis.Redis
) -> None:
    # Given the console has drawn the last hour once
    minute = int(time.time() // 60) * 60
    with Operations(settings) as ops:
        ops.activity("hour")
    # When events are committed into a bucket 30 minutes old (settled: a replay's row, say)
    # and into the current one
    engine = make_engine(settings.database_url)
    with engine.begin() as conn:
        conn.execute(
            insert(webhook_events),
            [
                _row("moncash", "old", minute - 1800 + 1, minute - 1800 + 2, "processed"),
                _row("moncash", "new", time.time() - 2, time.time() - 1, "processed"),
            ],
        )
    engine.dispose()
    with Operations(settings) as ops:
        again = ops.activity("hour")
    # Then the current bucket is read again, the settled one comes from the cache
    settled = again["starts"].index(minute - 1800)
    assert sum(again["applied"][-2:]) == 1 and again["applied"][settled] == 0
    activity.clear_cache()
    with Operations(settings) as ops:
        fresh = ops.activity("hour")
    assert fresh["applied"][fresh["starts"].index(minute - 1800)] == 1
