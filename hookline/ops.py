"""What operators can see and do, for the command line and the console alike.

:class:`Operations` holds one Redis client and one database engine; every method is a plain
synchronous call (the console runs them in a thread). Printing is :mod:`hookline.printing`'s.
Names in the answers are the ones the JSON API and ``--json`` show.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from redis import Redis
from redis.exceptions import RedisError, ResponseError
from sqlalchemy import Engine

from shared import activity, eventlog, redisconn, rqcompat, shards, traffic
from shared.config import Settings
from shared.db import make_engine
from shared.enqueue import JobSpec
from shared.eventlog import EventDetail, Filter, Page
from workers import deadletters

#: the charts' spans: bucket width (seconds) and number of buckets
ACTIVITY_SPANS = {
    "hour": (60, 60),
    "day": (traffic.COARSE_SECONDS, 24 * 3600 // traffic.COARSE_SECONDS),
}


TRAFFIC_KINDS = ("accepted", "duplicate", "rejected")


def connect_redis(settings: Settings) -> shards.ShardClients[Redis]:
    """The deployment's Redis, a client per shard (through Sentinel, or to each shard's
    primary on a cluster, when ``redis_url`` says so), checked first so a Sentinel service no
    sentinel knows, or a cluster not serving every slot, is one clear line."""
    redisconn.check_at_start(settings.redis_url)
    return shards.connect(settings, socket_timeout=5, socket_connect_timeout=3)


#: the figures of ``hookline status`` and the console's overview, in order: key, label, and
#: what it counts, in one line. (``failed_jobs``, RQ's FailedJobRegistry, is only in the JSON:
#: it repeats the dead letters in RQ's form, the job of each event that ended dead-lettered,
#: kept 7 days for RQ's own tools.)
FIGURES = (
    ("queued", "queued", "events waiting for a worker"),
    ("running", "running", "events a worker is applying now"),
    (
        "waiting_to_retry",
        "waiting to retry",
        "events whose last attempt failed, tried again after their backoff",
    ),
    (
        "dead_letters",
        "dead letters",
        "events that failed every attempt or permanently: inspect, replay or purge them",
    ),
    ("workers_alive", "workers alive", "worker processes with a recent heartbeat"),
)


class Operations:
    """One deployment as its operators see it."""

    def __init__(
        self, settings: Settings, *, engine: Engine | None = None, redis: Redis | None = None
    ) -> None:
        """``redis``: one client for every shard (tests), else opened from the settings."""
        self.settings = settings
        self._engine = engine
        self._shards: shards.ShardClients[Redis] | None = None
        self._own_redis = redis is None
        if redis is not None:
            layout = shards.layout_for(settings)
            self._shards = shards.ShardClients(layout, tuple(redis for _ in layout.shards))

    # the command line opens what a command needs, and only that
    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = make_engine(self.settings.database_url)
        return self._engine

    @property
    def shards(self) -> shards.ShardClients[Redis]:
        """Every shard's client."""
        if self._shards is None:
            self._shards = connect_redis(self.settings)
        return self._shards

    @property
    def redis(self) -> Redis:
        """The home shard's client: the deployment's statistics and rejections."""
        return self.shards.home

    @property
    def home(self) -> Any:
        return self.shards.layout.home

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
        if self._shards is not None and self._own_redis:
            shards.close(self._shards)

    def __enter__(self) -> Operations:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- status ----------------------------------------------------------------------------

    def status(self, *, details: bool = False) -> dict[str, Any]:
        """The queue's counts (every shard's added up), dead letters, workers; each shard's
        own when there are several (``shards``, a shard whose Redis does not answer marked
        so, its figures left out of the sums); with ``details``, what each worker holds and
        the last hour's traffic by source."""
        queue = self.settings.queue
        totals = dict.fromkeys(("queued", "running", "waiting_to_retry", "failed_jobs"), 0)
        workers: list[rqcompat.WorkerReading] = []
        per_shard: list[dict[str, Any]] = []
        down: list[str] = []
        memories: dict[int, dict[str, int | None]] = {}  # shards on one Redis read it once
        for shard, client in self.shards:
            try:
                counts = rqcompat.read_counts(client, queue, shard)
                found = rqcompat.read_workers(client, queue, shard)
                if id(client) not in memories:
                    memories[id(client)] = redis_memory(client)
                memory = memories[id(client)]
            except RedisError as err:
                if len(self.shards.layout.shards) == 1:
                    raise
                down.append(f"shard {shard.index}: {err}")
                per_shard.append({"shard": shard.index, "reachable": False})
                continue
            for name in totals:
                totals[name] += getattr(counts, name)
            workers += found
            per_shard.append(
                {
                    "shard": shard.index,
                    "reachable": True,
                    **vars(counts),
                    "workers_alive": len(found),
                    **memory,
                }
            )
        if len(down) == len(per_shard):
            raise redisconn.RedisUnreachable("; ".join(down))
        out: dict[str, Any] = {
            "queue": queue,
            **totals,
            "dead_letters": deadletters.count(self.engine),
            "workers_alive": len(workers),
            "workers": [{"name": w.name, "state": w.state} for w in workers],
            **{
                k: per_shard[0].get(k)
                for k in ("redis_memory_used_bytes", "redis_memory_max_bytes")
            },
        }
        if len(per_shard) > 1:
            out["shards"] = per_shard
            # the fullest shard's Redis: the first to refuse writes
            fullest = max(
                (p for p in per_shard if p["reachable"]),
                key=lambda p: (
                    (p["redis_memory_used_bytes"] or 0) / (p["redis_memory_max_bytes"] or 1 << 60)
                ),
            )
            out["redis_memory_shard"] = fullest["shard"]
            for key in ("redis_memory_used_bytes", "redis_memory_max_bytes"):
                out[key] = fullest[key]
        if details:
            out["workers"] = [_worker(w) for w in workers]
            out["last_hour"] = self.last_hour()
        return out

    def last_hour(self) -> dict[str, dict[str, Any]]:
        """Per source: accepted, duplicates, and rejected by reason, over the last hour."""
        out: dict[str, dict[str, Any]] = {}
        for source, kinds in sorted(traffic.last_hour(self.redis, home=self.home).items()):
            rejected = {k.split(":", 1)[1]: n for k, n in kinds.items() if ":" in k}
            out[source] = {
                "accepted": kinds.get("accepted", 0),
                "duplicates": kinds.get("duplicate", 0),
                "rejected": dict(sorted(rejected.items())),
            }
        return out

    def activity(self, span: str) -> dict[str, Any]:
        """The console's charts over the last hour (per minute) or day (per 5 minutes): the
        ingress's accepted, duplicates and rejected by source, and the queue's sampled depth
        (Redis), events applied and dead-lettered and their lag (the tables)."""
        width, count = ACTIVITY_SPANS[span]
        seen = traffic.buckets(self.redis, width, count, home=self.home)
        done = activity.activity(self.engine, seen.starts, width)
        return {
            "span": span,
            "bucket_seconds": width,
            "starts": seen.starts,
            "sources": {
                source: {
                    k: kinds.get(k, [0] * count) for k in ("accepted", "duplicate", "rejected")
                }
                for source, kinds in seen.counts.items()
            },
            "queue_depth": seen.depth,
            "applied": done.applied,
            "dead_lettered": done.dead,
            "lag_mean_seconds": done.lag_mean,
            "lag_max_seconds": done.lag_max,
        }

    # -- the event log ---------------------------------------------------------------------

    def events(self, flt: Filter, *, limit: int = 50, before: int | None = None) -> Page:
        return eventlog.list_events(self.engine, flt, limit=limit, before=before)

    def event(self, source: str, event_id: str) -> EventDetail | None:
        return eventlog.get_event(self.engine, source, event_id)

    def ignored_to_replay(
        self, flt: Filter, keys: Sequence[tuple[str, str]] | None = None
    ) -> list[tuple[str, str]]:
        return eventlog.ignored_to_replay(self.engine, flt, keys)

    def replay_ignored(
        self, keys: Sequence[tuple[str, str]], *, by: str
    ) -> Iterator[tuple[str, str]]:
        """``by``: who asks (cli, console, api), for the events' timelines."""
        spec = JobSpec.from_settings(self.settings)
        return eventlog.replay_ignored(self.engine, self.shards, spec, keys, by=by)

    def prune(self, older_than_days: float) -> int:
        return eventlog.prune(self.engine, older_than_days)

    # -- dead letters ----------------------------------------------------------------------

    def dead_letters(self, flt: Filter, *, limit: int = 50, before: int | None = None) -> Page:
        return deadletters.list_page(self.engine, flt, limit=limit, before=before)

    def dead_letter(self, dead_letter_id: int) -> dict[str, Any] | None:
        return deadletters.get_row(self.engine, dead_letter_id)

    def dead_letter_ids(self, flt: Filter, *, waiting_replay: bool = True) -> list[int]:
        return deadletters.matching_ids(self.engine, flt, waiting_replay=waiting_replay)

    def existing_dead_letters(self, ids: Sequence[int]) -> list[int]:
        return deadletters.existing(self.engine, ids)

    def replay_dead(
        self,
        ids: Sequence[int],
        on_each: Callable[[int, str], None] | None = None,
        *,
        by: str,
    ) -> Iterator[int]:
        """``by``: who asks (cli, console, api), for the events' timelines."""
        spec = JobSpec.from_settings(self.settings)
        return deadletters.replay(self.engine, self.shards, spec, ids, on_each, by=by)

    def replay_outcomes(self, queued: Mapping[int, dt.datetime]) -> dict[int, str]:
        return deadletters.replay_outcomes(self.engine, queued)

    def purge_dead(self, ids: Sequence[int]) -> int:
        return deadletters.purge(self.engine, ids)

    # -- rejections ------------------------------------------------------------------------

    def rejections(self, source: str | None = None, limit: int = 100) -> list[traffic.Rejection]:
        """The newest rejections of ``source``, or of every configured source and the
        unknown ones."""
        sources = [source] if source else [*sorted(self.settings.sources), traffic.UNKNOWN]
        return traffic.recent_rejections(self.redis, sources, limit=limit, home=self.home)


def redis_memory(redis: Redis) -> dict[str, int | None]:
    """Redis's INFO memory: what it uses, and its ``maxmemory`` (0: no limit), in bytes;
    ``None`` for both where INFO is refused (a managed Redis's ACL)."""
    try:
        memory = redis.info("memory")
    except ResponseError:
        return {"redis_memory_used_bytes": None, "redis_memory_max_bytes": None}
    return {
        "redis_memory_used_bytes": int(memory["used_memory"]),
        "redis_memory_max_bytes": int(memory.get("maxmemory", 0)),
    }


def _worker(worker: rqcompat.WorkerReading) -> dict[str, Any]:
    return {
        "name": worker.name,
        "state": worker.state,
        "hostname": worker.hostname,
        "pid": worker.pid,
        "last_heartbeat": worker.last_heartbeat,
        "successful_jobs": worker.successful_jobs,
        "failed_jobs": worker.failed_jobs,
        "holds": [
            {"job_id": h.job_id, "event": h.description, "since": h.since} for h in worker.holds
        ],
    }


def body_for_humans(body: bytes | None) -> dict[str, Any]:
    """``{"body": text}`` (JSON pretty-printed), or ``{"body_base64": ...}`` when it is not
    text, or ``{}`` when the body is no longer kept."""
    if body is None:
        return {}
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return {"body_base64": base64.b64encode(body).decode()}
    try:
        return {"body": json.dumps(json.loads(text), indent=2, ensure_ascii=False)}
    except ValueError:
        return {"body": text}


def event_json(detail: EventDetail) -> dict[str, Any]:
    """An event as ``events show --json`` and the API answer it."""
    out: dict[str, Any] = {
        **detail.row,
        "timeline": detail.timeline,
        "headers": detail.headers,
        "replayable": detail.replayable,
        "dead_letter_id": detail.dead_letter_id,
    }
    if detail.body is not None:
        try:
            out["body"] = detail.body.decode("utf-8")
        except UnicodeDecodeError:
            out["body_base64"] = base64.b64encode(detail.body).decode()
    return out


def dead_letter_json(row: dict[str, Any]) -> dict[str, Any]:
    out = dict(row)
    body: bytes = out.pop("body")
    try:
        out["body"] = body.decode("utf-8")
    except UnicodeDecodeError:
        out["body_base64"] = base64.b64encode(body).decode()
    return out
