"""The deployment's Redis as its shards: a client for each (``redis_shards``, :mod:`shared.keys`).

On a single Redis (or one behind Sentinel) every shard is served by the one client; on a Redis
Cluster each shard's client talks to the primary serving the shard's hash slot
(:func:`shared.redisconn.connect`), so a shard whose primary is down fails alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import redis.asyncio as aioredis
from redis import Redis

from shared import keys, redisconn
from shared.config import Settings
from shared.errors import ConfigError

C = TypeVar("C")


def layout_for(settings: Settings) -> keys.Layout:
    """The deployment's shards (``ConfigError`` for a layout that cannot work)."""
    try:
        return keys.Layout.of(settings.redis_shards, redisconn.is_cluster(settings.redis_url))
    except ValueError as err:
        raise ConfigError(str(err)) from err


def process_shard(settings: Settings) -> keys.Shard:
    """The shard whose RQ keys this process's RQ names: the one ``hookline worker`` started it
    for (:data:`shared.keys.SHARD_ENV`), or the only one of a deployment not sharded."""
    layout = layout_for(settings)
    index = keys.this_shard()
    if index is None:
        if layout.tagged:
            raise ConfigError(
                "the keys are sharded (redis_shards, or a cluster): start workers with"
                " `hookline worker`, which runs one process per shard"
            )
        return layout.shards[0]
    if not 0 <= index < len(layout.shards):
        raise ConfigError(f"{keys.SHARD_ENV}={index}: there are {len(layout.shards)} shards")
    shard = layout.shards[index]
    if shard.rq_prefix != keys.PROCESS_RQ_PREFIX:
        raise ConfigError(
            f"shard {index}'s process runs with RQ_KEY_PREFIX {keys.PROCESS_RQ_PREFIX!r}, not"
            f" {shard.rq_prefix!r}: start it with `hookline worker --shards {index}`"
        )
    return shard


@dataclass(frozen=True)
class ShardClients(Generic[C]):
    """A client for each shard; shards on one Redis share one client."""

    layout: keys.Layout
    clients: tuple[C, ...]

    @property
    def home(self) -> C:
        """The home shard's client (the deployment's own keys: statistics, rejections)."""
        return self.clients[0]

    def route(self, source: str, event_id: str) -> tuple[keys.Shard, C]:
        shard = self.layout.route(source, event_id)
        return shard, self.clients[shard.index]

    def __iter__(self) -> Iterator[tuple[keys.Shard, C]]:
        return iter(zip(self.layout.shards, self.clients, strict=True))

    def distinct(self) -> list[tuple[list[keys.Shard], C]]:
        """Each client once, with the shards it serves."""
        out: dict[int, tuple[list[keys.Shard], C]] = {}
        for shard, client in self:
            out.setdefault(id(client), ([], client))[0].append(shard)
        return list(out.values())


def clients_of(redis: Redis | ShardClients[Redis]) -> ShardClients[Redis]:
    """``redis`` as shard clients: a lone client is a deployment that is not sharded."""
    if isinstance(redis, ShardClients):
        return redis
    return ShardClients(keys.Layout(), (redis,))


def _clients(
    settings: Settings, layout: keys.Layout, make: Callable[[int | None], C]
) -> ShardClients[C]:
    if not redisconn.is_cluster(settings.redis_url):
        one = make(None)
        return ShardClients(layout, tuple(one for _ in layout.shards))
    return ShardClients(layout, tuple(make(shard.slot) for shard in layout.shards))


def connect(settings: Settings, **options: Any) -> ShardClients[Redis]:
    """A synchronous client for each shard (the commands, the console, the tools)."""
    layout = layout_for(settings)
    return _clients(
        settings, layout, lambda slot: redisconn.connect(settings.redis_url, slot, **options)
    )


def connect_async(settings: Settings, **options: Any) -> ShardClients[aioredis.Redis]:
    """An asyncio client for each shard (the ingress)."""
    layout = layout_for(settings)
    return _clients(
        settings,
        layout,
        lambda slot: redisconn.connect_async(settings.redis_url, slot, **options),
    )


def close(clients: ShardClients[Redis]) -> None:
    for _, client in clients.distinct():
        client.close()


async def aclose(clients: ShardClients[aioredis.Redis]) -> None:
    for _, client in clients.distinct():
        await client.aclose()
