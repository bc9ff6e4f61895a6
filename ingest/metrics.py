"""Prometheus metrics of the ingress, on a registry of its own (one per app, so tests and
several apps in one process do not collide).

Two kinds:

- the request counters and the enqueue histogram, counted by the process that answered (under
  ``serve --processes N`` prometheus-client's multiprocess mode adds the processes up);
- :class:`OpsGauges`, the state of the deployment that operators scale and alert on (queue
  depth and age, retries, dead letters, workers, Redis memory). They are read, not counted:
  from Redis at most every :data:`READ_EVERY_SECONDS` and from the database at most every
  :data:`COUNT_DEAD_EVERY_SECONDS` per process, whatever the scrape rate, by the scrape that
  finds its reading older than that. Every process reads the same values, so the answering
  process's reading is the deployment's (never added up across processes).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine
from sqlalchemy.engine import make_url

from shared import db
from shared.rqcompat import QueueReading

log = logging.getLogger("hookline.ingest")

#: Redis is read for the gauges at most this often per process: a scrape every second from
#: several Prometheus servers costs Redis one read per process every 5 s
READ_EVERY_SECONDS = 5.0
#: the dead letters are counted in the database at most this often per process (a count of
#: a table that is small when all is well, but a query all the same)
COUNT_DEAD_EVERY_SECONDS = 15.0
#: a scrape waits this long for a reading under way, then answers with the last one
SCRAPE_WAIT_SECONDS = 2.0
#: a reading older than this is not shown (its series disappear) rather than shown stale
STALE_AFTER_SECONDS = 60.0

T = TypeVar("T")


@dataclass(frozen=True)
class SourceMetrics:
    """One source's counters (label children of :class:`IngestMetrics`'s)."""

    received: Counter
    accepted: Counter
    duplicates: Counter


@dataclass
class IngestMetrics:
    registry: CollectorRegistry
    received: Counter
    accepted: Counter
    duplicates: Counter
    rejected: Counter
    enqueue_seconds: Histogram

    def __post_init__(self) -> None:
        self._sources: dict[str, SourceMetrics] = {}

    def source(self, name: str) -> SourceMetrics:
        """The counters of one source, their label children looked up once."""
        found = self._sources.get(name)
        if found is None:
            found = self._sources[name] = SourceMetrics(
                received=self.received.labels(name),
                accepted=self.accepted.labels(name),
                duplicates=self.duplicates.labels(name),
            )
        return found

    @classmethod
    def create(cls) -> IngestMetrics:
        r = CollectorRegistry()
        return cls(
            registry=r,
            received=Counter(
                "hookline_ingest_received", "Webhook requests received", ["source"], registry=r
            ),
            accepted=Counter(
                "hookline_ingest_accepted", "Events claimed and queued", ["source"], registry=r
            ),
            duplicates=Counter(
                "hookline_ingest_duplicates",
                "Deliveries of an already claimed event",
                ["source"],
                registry=r,
            ),
            rejected=Counter(
                "hookline_ingest_rejected",
                "Requests refused, by reason",
                ["source", "reason"],
                registry=r,
            ),
            enqueue_seconds=Histogram(
                "hookline_ingest_enqueue_seconds",
                "Claim-and-enqueue round trip to Redis",
                buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
                registry=r,
            ),
        )


class Periodic(Generic[T]):
    """A value read by ``read`` at most once every ``every`` seconds: :meth:`refresh` starts
    a read when the last one started that long ago (one at a time, however many scrapes ask)
    and waits for it a little. A failed read clears the value; so does age."""

    def __init__(
        self,
        what: str,
        read: Callable[[], Awaitable[T]],
        every: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.what = what
        self._read = read
        self.every = every
        self._clock = clock
        self._value: T | None = None
        self._value_at = 0.0
        self._started: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    async def refresh(self) -> None:
        now = self._clock()
        if self._task is None and (self._started is None or now - self._started >= self.every):
            self._started = now
            self._task = asyncio.create_task(self._run())
        if self._task is not None:
            # never cancelled by a scrape that stops waiting: the next one finds it done
            await asyncio.wait({self._task}, timeout=SCRAPE_WAIT_SECONDS)

    def current(self) -> T | None:
        if self._value is not None and self._clock() - self._value_at > STALE_AFTER_SECONDS:
            return None
        return self._value

    async def _run(self) -> None:
        try:
            self._value = await self._read()
            self._value_at = self._clock()
            if self._failing:
                log.info("metrics: %s read again", self.what)
            self._failing = False
        except Exception as err:  # whatever it was, /metrics still answers, without these
            self._value = None
            if not self._failing:
                log.warning("metrics: cannot read %s: %s", self.what, _one_line(err))
            self._failing = True
        finally:
            self._task = None

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}"[:200] if text else type(err).__name__


@dataclass(frozen=True)
class RedisReading:
    """One shard's queues and its Redis's memory."""

    queues: list[QueueReading]
    memory_used_bytes: int
    #: Redis's ``maxmemory``: 0 means no limit
    memory_max_bytes: int
    shard: int = 0


class DeadLetterCounter:
    """Counts the rows of ``dead_letters`` in a thread, on an engine of one connection opened
    at the first count. A SQLite file that does not exist yet is not created: no count."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._engine: Engine | None = None

    def _open(self) -> Engine:
        if self._engine is None:
            parsed = make_url(self.url)
            if parsed.get_backend_name() == "sqlite":
                if parsed.database in (None, "", ":memory:"):
                    raise FileNotFoundError("an in-memory SQLite database holds no dead letters")
                if not Path(parsed.database).exists():
                    raise FileNotFoundError(f"no SQLite database at {parsed.database}")
                self._engine = db.make_engine(self.url)
            else:
                args = {"connect_timeout": 3, "options": "-c statement_timeout=5000"}
                self._engine = db.make_engine(
                    self.url, pool_size=1, max_overflow=0, connect_args=args
                )
        return self._engine

    def count_now(self) -> int:
        return db.dead_letter_count(self._open())

    async def count(self) -> int:
        return await asyncio.to_thread(self.count_now)

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()


class OpsGauges(Collector):
    """The gauges of the deployment's state, from the last readings (see the module's
    docstring). ``queue`` labels one series per queue; a ``shard`` label joins it once a
    queue may span shards."""

    def __init__(
        self,
        redis: Periodic[list[RedisReading]],
        dead_letters: Periodic[int],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.redis = redis
        self.dead_letters = dead_letters
        self._clock = clock

    async def refresh(self) -> None:
        await asyncio.gather(self.redis.refresh(), self.dead_letters.refresh())

    async def close(self) -> None:
        await asyncio.gather(self.redis.close(), self.dead_letters.close())

    def collect(self) -> Iterator[Metric]:
        readings = self.redis.current()
        if readings is not None:
            yield from self._queues(readings)
            used = GaugeMetricFamily(
                "hookline_redis_memory_used_bytes",
                "Memory the shard's Redis uses (INFO memory: used_memory)",
                labels=["shard"],
            )
            most = GaugeMetricFamily(
                "hookline_redis_memory_max_bytes",
                "The shard's Redis's maxmemory (INFO memory); 0 means no limit",
                labels=["shard"],
            )
            for reading in readings:
                used.add_metric([str(reading.shard)], reading.memory_used_bytes)
                most.add_metric([str(reading.shard)], reading.memory_max_bytes)
            yield used
            yield most
        dead = self.dead_letters.current()
        if dead is not None:
            yield GaugeMetricFamily(
                "hookline_dead_letters",
                "Rows in the dead_letters table (replayed ones included)",
                value=dead,
            )

    def _queues(self, readings: list[RedisReading]) -> Iterator[Metric]:
        now = self._clock()
        labels = ["queue", "shard"]
        families = {
            "depth": GaugeMetricFamily(
                "hookline_queue_depth", "Events queued, waiting for a worker", labels=labels
            ),
            "age": GaugeMetricFamily(
                "hookline_queue_oldest_age_seconds",
                "Age of the oldest queued event (since it was last queued); 0 when empty",
                labels=labels,
            ),
            "retries": GaugeMetricFamily(
                "hookline_retries_scheduled",
                "Events waiting for the time of their next attempt",
                labels=labels,
            ),
            "workers": GaugeMetricFamily(
                "hookline_workers_alive",
                "Workers listening on the queue (heartbeating)",
                labels=labels,
            ),
        }
        for reading in readings:
            shard = str(reading.shard)
            for q in reading.queues:
                age = 0.0 if q.oldest_enqueued_at is None else max(0.0, now - q.oldest_enqueued_at)
                families["depth"].add_metric([q.queue, shard], q.depth)
                families["age"].add_metric([q.queue, shard], age)
                families["retries"].add_metric([q.queue, shard], q.retries_scheduled)
                families["workers"].add_metric([q.queue, shard], q.workers_alive)
        yield from families.values()
