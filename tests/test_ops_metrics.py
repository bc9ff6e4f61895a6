"""The metrics operators scale and alert on: the ingress's gauges of queues, retries, workers,
dead letters and Redis memory (read at most every few seconds), the workers' event lag, and
`hookline status`'s Redis memory. Real Redis: the gauges read RQ's own keys."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import socket
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from aiohttp.test_utils import TestClient
from click.testing import CliRunner
from rq import Queue, Worker
from rq.job import Job
from rq.registry import ScheduledJobRegistry
from sqlalchemy import insert

from hookline import printing
from hookline.cli import main
from ingest import metrics as ingest_metrics
from ingest.app import create_app
from shared import migrate
from shared.config import Settings
from shared.db import dead_letters, make_engine, utcnow
from shared.enqueue import JobSpec, claim
from shared.envelope import Envelope
from shared.rqcompat import JobSerializer
from tests.helpers import SOURCES, make_settings, signed
from tests.test_worker import run_worker
from workers import runtime


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one series in a Prometheus text answer, or None when it is not there."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    series = f"{name}{{{wanted}}}" if labels else name
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return None


async def scrape(client: TestClient) -> str:
    resp = await client.get("/metrics")
    assert resp.status == 200
    return await resp.text()


@pytest.fixture
def settings(redis_url: str, tmp_path: Path) -> Settings:
    return make_settings(redis_url, f"sqlite:///{tmp_path / 'hookline.db'}")


@pytest.fixture
async def client(aiohttp_client: Any, settings: Settings) -> TestClient:
    return await aiohttp_client(create_app(settings))  # type: ignore[no-any-return]


async def post(client: TestClient, settings: Settings, n: int) -> None:
    body, headers, _ = signed(settings, "moncash", n=n)
    resp = await client.post("/webhooks/moncash", data=body, headers=headers)
    assert resp.status == 202, await resp.text()


def queue(settings: Settings, client: redis.Redis, name: str | None = None) -> Queue:
    return Queue(name or settings.queue, connection=client, serializer=JobSerializer)


async def test_gauges_show_each_queue_retries_workers_and_redis_memory(
    client: TestClient, settings: Settings, redis_client: redis.Redis
) -> None:
    # Given two events queued by the ingress, the oldest queued 100 s ago
    await post(client, settings, 1)
    await post(client, settings, 2)
    q = queue(settings, redis_client)
    head = q.get_jobs()[0]
    head.enqueued_at = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=100)
    head.save()
    # and one event waiting for its retry, a second queue with one job, a worker on the
    # first queue and a worker gone (its key expired, its name still in RQ's set)
    retrying = Job.create(print, connection=redis_client, serializer=JobSerializer)
    ScheduledJobRegistry(queue=q).schedule(retrying, dt.datetime.now(dt.UTC) + dt.timedelta(1))
    queue(settings, redis_client, "other").enqueue(print)
    Worker([q], connection=redis_client, name="alive").register_birth()
    gone = Worker([q], connection=redis_client, name="gone")
    gone.register_birth()
    redis_client.delete(gone.key)
    # When /metrics is scraped
    text = await scrape(client)
    # Then each queue has its series
    assert sample(text, "hookline_queue_depth", queue="hookline", shard="0") == 2
    assert sample(text, "hookline_queue_depth", queue="other", shard="0") == 1
    age = sample(text, "hookline_queue_oldest_age_seconds", queue="hookline", shard="0")
    assert age is not None and 100 <= age < 200
    other_age = sample(text, "hookline_queue_oldest_age_seconds", queue="other", shard="0")
    assert other_age is not None and 0 <= other_age < 60
    assert sample(text, "hookline_retries_scheduled", queue="hookline", shard="0") == 1
    assert sample(text, "hookline_retries_scheduled", queue="other", shard="0") == 0
    assert sample(text, "hookline_workers_alive", queue="hookline", shard="0") == 1
    assert sample(text, "hookline_workers_alive", queue="other", shard="0") == 0
    # and Redis's memory as INFO tells it
    memory = redis_client.info("memory")
    used = sample(text, "hookline_redis_memory_used_bytes", shard="0")
    assert used is not None and used > 0
    assert sample(text, "hookline_redis_memory_max_bytes", shard="0") == int(memory["maxmemory"])
    # and one series per queue, one value per series
    assert len(re.findall(r'^hookline_queue_depth\{queue="hookline",shard="0"\}', text, re.M)) == 1


async def test_an_empty_queue_is_zero_deep_and_zero_old(client: TestClient) -> None:
    text = await scrape(client)
    assert sample(text, "hookline_queue_depth", queue="hookline", shard="0") == 0
    assert sample(text, "hookline_queue_oldest_age_seconds", queue="hookline", shard="0") == 0
    assert sample(text, "hookline_workers_alive", queue="hookline", shard="0") == 0


async def test_redis_is_read_at_most_once_per_period_whatever_the_scrape_rate(
    client: TestClient, settings: Settings
) -> None:
    # Given a scrape that read one queued event
    await post(client, settings, 1)
    assert sample(await scrape(client), "hookline_queue_depth", queue="hookline", shard="0") == 1
    # When another is queued and /metrics is scraped again at once, many times
    await post(client, settings, 2)
    texts = await asyncio.gather(*(scrape(client) for _ in range(10)))
    # Then they show the reading of the first scrape (READ_EVERY_SECONDS has not passed)
    assert {sample(t, "hookline_queue_depth", queue="hookline", shard="0") for t in texts} == {1}
    # and a scrape after the period reads Redis again
    deadline = time.monotonic() + ingest_metrics.READ_EVERY_SECONDS + 10
    while sample(await scrape(client), "hookline_queue_depth", queue="hookline", shard="0") != 2:
        assert time.monotonic() < deadline, "the gauges were never read again"
        await asyncio.sleep(0.5)


async def test_periodic_reads_once_per_period_and_once_for_concurrent_scrapes() -> None:
    now = [1000.0]
    reads: list[float] = []

    async def read() -> int:
        reads.append(now[0])
        await asyncio.sleep(0.01)
        return len(reads)

    p = ingest_metrics.Periodic("test", read, every=5, clock=lambda: now[0])
    await asyncio.gather(*(p.refresh() for _ in range(5)))
    assert (reads, p.current()) == ([1000.0], 1)
    now[0] += 4.9
    await p.refresh()
    assert (len(reads), p.current()) == (1, 1)
    now[0] += 0.1
    await p.refresh()
    assert (len(reads), p.current()) == (2, 2)
    # a reading older than STALE_AFTER_SECONDS is not shown
    now[0] += ingest_metrics.STALE_AFTER_SECONDS + 1
    assert p.current() is None


async def test_a_failed_read_clears_the_gauges_and_metrics_still_answer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def broken() -> int:
        raise ConnectionError("refused")

    p = ingest_metrics.Periodic("the queues", broken, every=0)
    await p.refresh()
    await p.refresh()
    assert p.current() is None
    # one warning while it keeps failing, not one per scrape
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == ["metrics: cannot read the queues: ConnectionError: refused"]


async def test_redis_unreachable_leaves_the_counters_and_no_gauge(aiohttp_client: Any) -> None:
    settings = make_settings(
        "redis://127.0.0.1:1/0", "sqlite://", ingest={"redis_timeout_seconds": 0.5}
    )
    client = await aiohttp_client(create_app(settings))
    text = await scrape(client)
    assert re.search(r"^# TYPE hookline_ingest_received(_total)? counter$", text, re.M)
    assert "hookline_queue_depth" not in text
    assert "hookline_redis_memory_used_bytes" not in text


async def test_dead_letters_are_counted_in_the_database(
    aiohttp_client: Any, redis_url: str, database_url: str
) -> None:
    # Given a database (SQLite, PostgreSQL) with two dead letters
    settings = make_settings(redis_url, database_url)
    client = await aiohttp_client(create_app(settings))
    migrate.upgrade(settings.database_url)
    engine = make_engine(settings.database_url)
    row = {
        "source": "moncash",
        "reason": "PayloadError: no",
        "permanent": 1,
        "attempts": 1,
        "errors": [],
        "headers": [],
        "body": b"{}",
        "received_at": utcnow(),
        "failed_at": utcnow(),
    }
    with engine.begin() as conn:
        conn.execute(insert(dead_letters), [{**row, "event_id": "a"}, {**row, "event_id": "b"}])
    engine.dispose()
    # When /metrics is scraped, Then the gauge counts them
    assert sample(await scrape(client), "hookline_dead_letters") == 2


async def test_no_database_file_means_no_dead_letter_gauge_and_no_file_made(
    client: TestClient, settings: Settings
) -> None:
    text = await scrape(client)
    assert "hookline_dead_letters" not in text
    assert sample(text, "hookline_queue_depth", queue="hookline", shard="0") == 0
    assert not Path(settings.database_url.removeprefix("sqlite:///")).exists()


def test_worker_observes_the_lag_from_arrival_to_commit(
    redis_client: redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    # Given an event the ingress received 120 s ago, still queued
    url = f"sqlite:///{tmp_path / 'w.db'}"
    migrate.upgrade(url)
    settings = make_settings(redis_url, url, sources={"moncash": SOURCES["moncash"]})
    rt = runtime.configure(settings)
    registry = rt.metrics.registry

    def lag(what: str, **extra: str) -> float:
        name = f"hookline_event_lag_seconds_{what}"
        return registry.get_sample_value(name, {"source": "moncash", **extra}) or 0.0

    before = {k: lag(k) for k in ("count", "sum")}
    before_buckets = {le: lag("bucket", le=le) for le in ("60.0", "300.0")}
    body, headers, _ = signed(settings, "moncash", n=7)
    envelope = Envelope(
        source="moncash",
        event_id="lag-7",
        received_at=time.time() - 120,
        headers=tuple(headers.items()),
        body=body,
    )
    claim(redis_client, envelope, JobSpec.from_settings(settings))
    # When a worker applies it
    run_worker(redis_client, settings)
    rt.engine.dispose()
    # Then the histogram has one observation of 120 s or a little more
    assert lag("count") - before["count"] == 1
    assert 120 <= lag("sum") - before["sum"] < 600
    assert lag("bucket", le="60.0") == before_buckets["60.0"]
    assert lag("bucket", le="300.0") - before_buckets["300.0"] == 1


def test_status_shows_redis_memory(tmp_path: Path, redis_url: str) -> None:
    config = tmp_path / "hookline.toml"
    config.write_text(f'redis_url = "{redis_url}"\ndatabase_url = "sqlite:///{tmp_path}/s.db"\n')
    migrate.upgrade(f"sqlite:///{tmp_path}/s.db")
    maxmemory = int(redis.Redis.from_url(redis_url).config_get("maxmemory")["maxmemory"])
    result = CliRunner().invoke(main, ["status", "--config", str(config), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["redis_memory_used_bytes"] > 0
    assert data["redis_memory_max_bytes"] == maxmemory
    text = CliRunner().invoke(main, ["status", "--config", str(config)]).output
    limit = r"\(no maxmemory\)" if maxmemory == 0 else r"of [\d.]+ \w+ maxmemory \(\d+%\)"
    assert re.search(r"redis memory\s+[\d.]+ (B|KiB|MiB|GiB) " + limit, text), text


@pytest.mark.parametrize(
    "used, most, shown",
    [
        (512, 0, "512 B (no maxmemory)"),
        (1536, 0, "1.5 KiB (no maxmemory)"),
        (90 * 2**20, 100 * 2**20, "90.0 MiB of 100.0 MiB maxmemory (90%)"),
        (3 * 2**30, 4 * 2**30, "3.0 GiB of 4.0 GiB maxmemory (75%)"),
        (None, None, "unknown (INFO refused)"),
    ],
)
def test_status_words_redis_memory_for_people(
    used: int | None, most: int | None, shown: str
) -> None:
    data = {"redis_memory_used_bytes": used, "redis_memory_max_bytes": most}
    assert printing.redis_memory(data) == shown


def test_worker_metrics_port_in_use_is_one_line_and_exit_2(tmp_path: Path, redis_url: str) -> None:
    config = tmp_path / "hookline.toml"
    config.write_text(f'redis_url = "{redis_url}"\ndatabase_url = "sqlite:///{tmp_path}/w.db"\n')
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(
            main, ["worker", "--config", str(config), "--metrics-port", str(port), "--burst"]
        )
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines() == [
        "hookline: Address already in use: pass another port"
    ]
