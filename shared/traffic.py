"""What the ingress remembers of its traffic, for operators (``hookline rejections``, the
console): per-minute counts by source (accepted, duplicate, rejected by reason), and the last
:data:`REJECTIONS_KEPT` rejected requests of each source (unknown sources share one stream).

A rejection keeps the time, source, answer, reason, remote address, body size and the request's
header *names*: never a header value, never a body byte, so never a secret or a signature.

The ingress keeps both in memory and writes them to Redis once a second, in one pipeline
(:meth:`Traffic.flush`): a request never waits for them and accepted events cost no Redis
write. Memory is bounded whatever arrives: at most :data:`REJECTIONS_KEPT` rejections per
source wait for a flush (older ones are dropped and counted), and each Redis stream is capped
at the same length.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from shared import keys

#: rejections kept per source (and for all unknown sources together)
REJECTIONS_KEPT = 1000
#: per-minute counts are kept two hours: the console shows the last one
STATS_TTL_SECONDS = 2 * 3600
#: the coarse buckets (the console's last day): their width, and how long they are kept
COARSE_SECONDS = 300
COARSE_TTL_SECONDS = 25 * 3600
#: the field of a stats hash holding the queue's depth (no source is empty)
DEPTH_FIELD = "\tqueue_depth"
#: header names kept per rejection, and their length: a hostile request may send thousands
MAX_HEADER_NAMES = 40
MAX_HEADER_NAME = 64
#: the source a request for an unknown source is recorded under
UNKNOWN = "_unknown"


@dataclass(frozen=True)
class Rejection:
    """One refused request."""

    at: float
    source: str
    status: int
    reason: str
    remote: str
    size: int | None
    header_names: tuple[str, ...]

    def fields(self) -> dict[str, str]:
        return {
            "at": f"{self.at:.6f}",
            "source": self.source,
            "status": str(self.status),
            "reason": self.reason,
            "remote": self.remote,
            "size": "" if self.size is None else str(self.size),
            "headers": "\n".join(self.header_names),
        }

    @classmethod
    def from_fields(cls, raw: dict[bytes, bytes]) -> Rejection:
        f = {k.decode(): v.decode("utf-8", "replace") for k, v in raw.items()}
        return cls(
            at=float(f.get("at") or 0),
            source=f.get("source", ""),
            status=int(f.get("status") or 0),
            reason=f.get("reason", ""),
            remote=f.get("remote", ""),
            size=int(f["size"]) if f.get("size") else None,
            header_names=tuple(n for n in f.get("headers", "").split("\n") if n),
        )

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["header_names"] = list(self.header_names)
        return out


def header_names(names: Iterable[str]) -> tuple[str, ...]:
    """The names only, bounded in number and length."""
    out: list[str] = []
    for name in names:
        if len(out) == MAX_HEADER_NAMES:
            break
        out.append(name[:MAX_HEADER_NAME])
    return tuple(out)


# The statistics and rejections are the deployment's, not a shard's: they live in the home
# shard (``home``, :attr:`shared.keys.Layout.home`; the one shard of a deployment not sharded).


def stats_key(minute: int, home: keys.Shard = keys.UNSHARDED) -> str:
    return home.own_key(f"{keys.STATS}{minute}")


def coarse_key(bucket: int, home: keys.Shard = keys.UNSHARDED) -> str:
    """The hash of the :data:`COARSE_SECONDS` bucket number ``bucket`` (seconds // width)."""
    return home.own_key(f"{keys.STATS_COARSE}{bucket}")


async def sample_depth(
    redis: AsyncRedis, depth: int, now: float | None = None, home: keys.Shard = keys.UNSHARDED
) -> None:
    """Record the queue's depth now (every shard's) in this minute's and this 5-minute
    bucket's hash (the last sample of a bucket stands for it)."""
    at = time.time() if now is None else now
    minute, bucket = int(at // 60), int(at // COARSE_SECONDS)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hset(stats_key(minute, home), DEPTH_FIELD, depth)
        pipe.expire(stats_key(minute, home), STATS_TTL_SECONDS)
        pipe.hset(coarse_key(bucket, home), DEPTH_FIELD, depth)
        pipe.expire(coarse_key(bucket, home), COARSE_TTL_SECONDS)
        await pipe.execute()


class Traffic:
    """The ingress's memory of its traffic until the next flush."""

    def __init__(self) -> None:
        self._counts: collections.Counter[tuple[int, str, str]] = collections.Counter()
        self._rejections: dict[str, collections.deque[Rejection]] = {}
        #: rejections dropped before a flush could write them (a flood): counted, not kept
        self.dropped = 0

    def waiting(self) -> int:
        """Rejections waiting for the next flush."""
        return sum(len(w) for w in self._rejections.values())

    def count(self, source: str, kind: str, now: float | None = None) -> None:
        """One more ``kind`` (accepted, duplicate, rejected:<reason>) for ``source``."""
        minute = int((time.time() if now is None else now) // 60)
        self._counts[(minute, source, kind)] += 1

    def reject(self, rejection: Rejection) -> None:
        self.count(rejection.source, "rejected:" + rejection.reason, rejection.at)
        waiting = self._rejections.get(rejection.source)
        if waiting is None:
            waiting = self._rejections[rejection.source] = collections.deque(maxlen=REJECTIONS_KEPT)
        if len(waiting) == REJECTIONS_KEPT:
            self.dropped += 1
        waiting.append(rejection)

    async def flush(self, redis: AsyncRedis, home: keys.Shard = keys.UNSHARDED) -> None:
        """Write what is waiting in one pipeline. On failure (Redis away) it stays waiting,
        bounded, for the next flush."""
        counts, rejections = self._counts, self._rejections
        if not counts and not rejections:
            return
        self._counts, self._rejections = collections.Counter(), {}
        try:
            async with redis.pipeline(transaction=False) as pipe:
                minutes, coarse = set(), set()
                for (minute, source, kind), n in counts.items():
                    bucket = minute * 60 // COARSE_SECONDS
                    pipe.hincrby(stats_key(minute, home), f"{source}\t{kind}", n)
                    pipe.hincrby(coarse_key(bucket, home), f"{source}\t{kind}", n)
                    minutes.add(minute)
                    coarse.add(bucket)
                for minute in minutes:
                    pipe.expire(stats_key(minute, home), STATS_TTL_SECONDS)
                for bucket in coarse:
                    pipe.expire(coarse_key(bucket, home), COARSE_TTL_SECONDS)
                for source, waiting in rejections.items():
                    for rejection in waiting:
                        pipe.xadd(
                            home.own_key(keys.rejections_key(source)),
                            rejection.fields(),  # type: ignore[arg-type]
                            maxlen=REJECTIONS_KEPT,
                            approximate=False,
                        )
                await pipe.execute()
        except Exception:
            # put back what was not written, within the same bounds, for the next flush
            self._counts.update(counts)
            for source, waiting in rejections.items():
                merged = collections.deque(waiting, maxlen=REJECTIONS_KEPT)
                merged.extend(self._rejections.get(source, ()))
                self._rejections[source] = merged
            raise


# -- reading (the command line, the console) ---------------------------------------------------


def recent_rejections(
    redis: Redis,
    sources: Iterable[str],
    *,
    limit: int = 100,
    home: keys.Shard = keys.UNSHARDED,
) -> list[Rejection]:
    """The newest ``limit`` rejections of ``sources`` (``_unknown`` for unknown ones), newest
    first."""
    found: list[Rejection] = []
    with redis.pipeline(transaction=False) as pipe:
        for source in sources:
            pipe.xrevrange(home.own_key(keys.rejections_key(source)), count=limit)
        for entries in pipe.execute():
            found += [Rejection.from_fields(fields) for _id, fields in entries]
    return sorted(found, key=lambda r: r.at, reverse=True)[:limit]


def last_hour(
    redis: Redis, now: float | None = None, home: keys.Shard = keys.UNSHARDED
) -> dict[str, dict[str, int]]:
    """Counts by source over the last 60 minutes: ``{source: {kind: n}}``."""
    current = int((time.time() if now is None else now) // 60)
    totals: dict[str, dict[str, int]] = {}
    with redis.pipeline(transaction=False) as pipe:
        for minute in range(current - 59, current + 1):
            pipe.hgetall(stats_key(minute, home))
        for bucket in pipe.execute():
            for field, n in bucket.items():
                source, _, kind = field.decode("utf-8", "replace").partition("\t")
                if not source:  # the queue's depth, not a source's count
                    continue
                by_kind = totals.setdefault(source, {})
                by_kind[kind] = by_kind.get(kind, 0) + int(n)
    return totals


@dataclass(frozen=True)
class Buckets:
    """The ingress's counts over a window, bucket by bucket (oldest first): ``starts`` (unix
    seconds), ``counts[source][kind][i]`` with kind ``accepted``, ``duplicate`` or
    ``rejected`` (all reasons), and the queue's sampled ``depth[i]`` (``None``: no sample)."""

    starts: list[float]
    counts: dict[str, dict[str, list[int]]]
    depth: list[int | None]


def buckets(
    redis: Redis,
    width: int,
    count: int,
    now: float | None = None,
    home: keys.Shard = keys.UNSHARDED,
) -> Buckets:
    """The last ``count`` buckets of ``width`` seconds (60: the minute hashes, else
    :data:`COARSE_SECONDS`), the current one last; one round trip."""
    at = time.time() if now is None else now
    current = int(at // width)
    numbers = range(current - count + 1, current + 1)
    key = stats_key if width == 60 else coarse_key
    counts: dict[str, dict[str, list[int]]] = {}
    depth: list[int | None] = [None] * count
    with redis.pipeline(transaction=False) as pipe:
        for number in numbers:
            pipe.hgetall(key(number, home))
        for i, bucket in enumerate(pipe.execute()):
            for field, n in bucket.items():
                source, _, kind = field.decode("utf-8", "replace").partition("\t")
                if not source:
                    depth[i] = int(n)
                    continue
                kind = "rejected" if kind.startswith("rejected:") else kind
                by_kind = counts.setdefault(source, {})
                series = by_kind.setdefault(kind, [0] * count)
                series[i] += int(n)
    return Buckets([float(n * width) for n in numbers], dict(sorted(counts.items())), depth)
