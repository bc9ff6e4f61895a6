"""One way for every process to reach Redis, from ``redis_url``.

Either a plain URL (``redis://``, ``rediss://``, ``unix://``, as redis-py reads them), a
primary managed by Redis Sentinel, or a Redis Cluster::

    redis+sentinel://[user:password@]host:port[,host:port...]/SERVICE_NAME[/DB]
    rediss+sentinel://...        (TLS to the sentinels and to the primary)
    redis+cluster://[user:password@]host:port[,host:port...]
    rediss+cluster://...         (TLS to every node)

The user and password are the primary's (and its replicas'). A client built for a Sentinel URL
asks the sentinels for the current primary on every new connection, so after a failover the
ingress, the workers and the commands find the new primary by themselves: a connection to the
old one fails (it died, or it came back as a read-only replica) and the next one goes to the
primary the sentinels name now.

On a cluster, every key of one shard (:mod:`shared.keys`) is in one hash slot, on one primary,
so each shard is reached by an ordinary client whose connections go to the primary that
serves the shard's slot now (:func:`connect` with ``slot``): RQ, the scripts and the
transactions see a plain Redis, and a shard whose primary is down fails alone. Like the
Sentinel client, a connection asks where to go when it connects (the cluster's slot map,
:class:`SlotMap`, read again after a failure), and one that reaches a node that no longer
serves the slot (it was failed over, or the slot moved: MOVED, ASK, TRYAGAIN, CLUSTERDOWN, a
demoted primary's UNBLOCKED) is closed and its command fails as a lost connection would,
so every caller's reconnect-and-retry path takes it to the slot's primary now.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import redis.asyncio as aioredis
import redis.asyncio.connection as aioconnection
from redis import Redis
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.backoff import NoBackoff
from redis.cluster import parse_cluster_slots
from redis.connection import Connection, ConnectionPool, SSLConnection
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MovedError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry
from redis.sentinel import Sentinel

from shared.errors import ConfigError

_SENTINEL = re.compile(
    r"(?P<scheme>rediss?)\+sentinel://"
    r"(?:(?P<user>[^:@/]*)(?::(?P<password>[^@/]*))?@)?"
    r"(?P<hosts>[^/@]+)/(?P<service>[^/?#]+)(?:/(?P<db>\d+))?/?"
)
_CLUSTER = re.compile(
    r"(?P<scheme>rediss?)\+cluster://"
    r"(?:(?P<user>[^:@/]*)(?::(?P<password>[^@/]*))?@)?"
    r"(?P<hosts>[^/@?#]+)/?"
)
_HOST = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(?P<port>\d{1,5})")
#: how long asking a sentinel may take: failover must not wait on a dead one for long
SENTINEL_TIMEOUT_SECONDS = 0.5


class RedisUnreachable(RedisConnectionError):
    """No Redis to talk to (no sentinel answered, or they know no primary right now)."""


@dataclass(frozen=True)
class SentinelTarget:
    """A parsed ``redis+sentinel://`` URL."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    ssl: bool = False

    def describe(self) -> str:
        hosts = ",".join(f"{h}:{p}" for h, p in self.sentinels)
        return f"sentinel service {self.service!r} at {hosts}"


@dataclass(frozen=True)
class ClusterTarget:
    """A parsed ``redis+cluster://`` URL: the seed nodes, and the nodes' user and password."""

    nodes: tuple[tuple[str, int], ...]
    username: str | None = None
    password: str | None = field(default=None, repr=False)  # never in a log or a message
    ssl: bool = False

    def describe(self) -> str:
        return "cluster at " + ",".join(f"{h}:{p}" for h, p in self.nodes)


def _hosts(text: str) -> tuple[tuple[str, int], ...]:
    out = []
    for part in text.split(","):
        host = _HOST.fullmatch(part.strip())
        if host is None or not 0 < int(host["port"]) < 65536:
            raise ConfigError(f"redis_url: {part.strip()!r} is not host:port")
        out.append((host["host"].strip("[]"), int(host["port"])))
    return tuple(out)


def parse_cluster(url: str) -> ClusterTarget | None:
    """The cluster URL's parts; ``None`` for another URL; ``ConfigError`` naming what is wrong
    with a malformed one (never echoing its password)."""
    if not re.match(r"[a-z]+\+cluster://", url):
        return None
    match = _CLUSTER.fullmatch(url)
    if match is None:
        raise ConfigError(
            "redis_url: a cluster URL is redis+cluster://[user:password@]host:port[,host:port...]"
            " (a cluster has no databases: no /DB)"
        )
    return ClusterTarget(
        nodes=_hosts(match["hosts"]),
        username=unquote(match["user"]) if match["user"] else None,
        password=unquote(match["password"]) if match["password"] else None,
        ssl=match["scheme"] == "rediss",
    )


def is_cluster(url: str) -> bool:
    return parse_cluster(url) is not None


def refused_for_memory(err: BaseException) -> bool:
    """Whether ``err`` is Redis refusing a write at ``maxmemory`` (``noeviction``): redis-py's
    ``OutOfMemoryError`` for a command, and for a script's refused write before Redis 7.2 a
    plain ``ResponseError`` ("Error running script ... -OOM command not allowed when used
    memory > 'maxmemory'")."""
    if isinstance(err, OutOfMemoryError):
        return True
    return isinstance(err, ResponseError) and "command not allowed when used memory" in str(err)


def parse_sentinel(url: str) -> SentinelTarget | None:
    """The Sentinel URL's parts; ``None`` for a plain Redis URL; ``ConfigError`` naming what
    is wrong with a malformed Sentinel URL (never echoing its password)."""
    if not re.match(r"[a-z]+\+sentinel://", url):
        return None
    match = _SENTINEL.fullmatch(url)
    if match is None:
        raise ConfigError(
            "redis_url: a Sentinel URL is redis+sentinel://[user:password@]host:port"
            "[,host:port...]/SERVICE_NAME[/DB]"
        )
    return SentinelTarget(
        sentinels=_hosts(match["hosts"]),
        service=unquote(match["service"]),
        db=int(match["db"] or 0),
        username=unquote(match["user"]) if match["user"] else None,
        password=unquote(match["password"]) if match["password"] else None,
        ssl=match["scheme"] == "rediss",
    )


def validate(url: str) -> None:
    """``ConfigError`` unless ``url`` is a Redis URL hookline can use."""
    if parse_sentinel(url) is not None or parse_cluster(url) is not None:
        return
    if not re.match(r"(rediss?|unix)://", url):
        raise ConfigError(
            "redis_url must be redis://, rediss://, unix://, redis+sentinel:// or redis+cluster://"
        )


def describe(url: str) -> str:
    """The URL without its password, for messages and logs."""
    target = parse_sentinel(url)
    if target is not None:
        return target.describe()
    cluster = parse_cluster(url)
    if cluster is not None:
        return cluster.describe()
    return re.sub(r"://([^:@/]*):[^@/]*@", r"://\1:***@", url)


def _sentinel_options(target: SentinelTarget, options: dict[str, Any]) -> dict[str, Any]:
    sentinel_kwargs: dict[str, Any] = {
        "socket_timeout": SENTINEL_TIMEOUT_SECONDS,
        "socket_connect_timeout": SENTINEL_TIMEOUT_SECONDS,
    }
    if target.ssl:
        sentinel_kwargs["ssl"] = True
    primary = dict(options)
    primary.update(db=target.db, username=target.username, password=target.password)
    if target.ssl:
        primary["ssl"] = True
    return {"sentinel_kwargs": sentinel_kwargs, **primary}


def connect(url: str, slot: int | None = None, **options: Any) -> Redis:
    """A synchronous client (workers, commands, console) for ``url``; on a cluster, for the
    primary serving ``slot`` (a shard's: :attr:`shared.keys.Shard.slot`; ``None``: slot 0's,
    for what any primary answers)."""
    cluster = parse_cluster(url)
    if cluster is not None:
        pool = SlotConnectionPool(slot_map(cluster), slot or 0, **_node_options(cluster, options))
        return Redis.from_pool(pool)
    target = parse_sentinel(url)
    if target is None:
        return Redis.from_url(url, **options)
    kwargs = _sentinel_options(target, options)
    sentinels, sentinel_kwargs = list(target.sentinels), kwargs.pop("sentinel_kwargs")
    sentinel = Sentinel(sentinels, sentinel_kwargs=sentinel_kwargs)  # type: ignore[no-untyped-call, unused-ignore]
    client: Redis = sentinel.master_for(target.service, **kwargs)  # type: ignore[no-untyped-call, unused-ignore]
    return client


def connect_async(url: str, slot: int | None = None, **options: Any) -> aioredis.Redis:
    """An asyncio client (the ingress) for ``url``; on a cluster, as :func:`connect`."""
    cluster = parse_cluster(url)
    if cluster is not None:
        pool = AsyncSlotConnectionPool(
            slot_map(cluster), slot or 0, **_node_options(cluster, options)
        )
        return aioredis.Redis.from_pool(pool)
    target = parse_sentinel(url)
    if target is None:
        return aioredis.Redis.from_url(url, **options)
    kwargs = _sentinel_options(target, options)
    sentinels, sentinel_kwargs = list(target.sentinels), kwargs.pop("sentinel_kwargs")
    sentinel = AsyncSentinel(sentinels, sentinel_kwargs=sentinel_kwargs)  # type: ignore[no-untyped-call, unused-ignore]
    client: aioredis.Redis = sentinel.master_for(target.service, **kwargs)
    return client


def check_at_start(url: str) -> None:
    """What every process does before it starts: with a Sentinel or cluster URL, :func:`check`
    it (a plain Redis that is down is waited for, or answered 503, as before)."""
    if parse_sentinel(url) is not None or parse_cluster(url) is not None:
        check(url)


def check(url: str) -> None:
    """At a command's start: Redis answers. For a Sentinel URL, tells a service no sentinel
    knows (``ConfigError``: a typo) from no sentinel reachable or no primary right now
    (:class:`RedisUnreachable`), each in one line. For a cluster URL, no node answering and
    slots no primary serves are each a ``ConfigError``: nothing can run on that."""
    cluster = parse_cluster(url)
    if cluster is not None:
        slot_map(cluster).check()
        return
    target = parse_sentinel(url)
    if target is None:
        client = Redis.from_url(url, socket_timeout=3, socket_connect_timeout=3)
        try:
            client.ping()
        finally:
            client.close()
        return
    reached, knows = 0, False
    for host, port in target.sentinels:
        sentinel = Redis(
            host,
            port,
            socket_timeout=SENTINEL_TIMEOUT_SECONDS * 4,
            socket_connect_timeout=SENTINEL_TIMEOUT_SECONDS * 4,
            ssl=target.ssl,
        )
        try:
            masters = sentinel.sentinel_masters()
        except (RedisConnectionError, RedisTimeoutError, OSError):
            continue
        except RedisError:
            reached += 1
            continue
        finally:
            sentinel.close()
        reached += 1
        knows = knows or target.service in masters
    if not reached:
        raise RedisUnreachable(f"no sentinel reachable ({target.describe()})")
    if not knows:
        raise ConfigError(f"redis_url: no sentinel knows the service ({target.describe()})")
    client = connect(url, socket_timeout=3, socket_connect_timeout=3)
    try:
        client.ping()
    except RedisError as err:
        raise RedisUnreachable(f"no primary for {target.describe()}: {err}") from err
    finally:
        client.close()


#: ``maxmemory-policy`` values that may evict keys without a TTL: queued events (acknowledged)
#: and their jobs, the workers' registries. hookline refuses to start on them.
_EVICTS_ANY_KEY = ("allkeys-",)


def check_eviction(url: str) -> str | None:
    """At ``serve``, ``worker`` and ``console``'s start: Redis must never evict what hookline
    acknowledged. A ``maxmemory-policy`` that may evict any key (``allkeys-*``) is a
    ``ConfigError`` naming the setting and the fix; ``volatile-*`` (which may evict claims and
    kept finished jobs, keys with a TTL) and a Redis that refuses ``CONFIG GET`` (managed
    services) are a warning, returned. A Redis that does not answer is left to the command
    (it waits, or answers 503). On a cluster, every primary is asked."""
    cluster = parse_cluster(url)
    if cluster is not None:
        warnings = []
        for slot in slot_map(cluster).primary_slots():
            warning = _check_eviction(
                connect(url, slot, socket_timeout=3, socket_connect_timeout=3)
            )
            if warning and warning not in warnings:
                warnings.append(warning)
        return "; ".join(warnings) or None
    return _check_eviction(connect(url, socket_timeout=3, socket_connect_timeout=3))


def _check_eviction(client: Redis) -> str | None:
    try:
        policy = str(client.config_get("maxmemory-policy").get("maxmemory-policy", ""))
    except ResponseError:
        return (
            "this Redis refuses CONFIG GET: make sure its maxmemory-policy is noeviction (an"
            " allkeys-* policy may evict queued events that were acknowledged)"
        )
    except (RedisConnectionError, RedisTimeoutError, OSError):
        return None
    finally:
        client.close()
    if policy.startswith(_EVICTS_ANY_KEY):
        raise ConfigError(
            f"Redis maxmemory-policy is {policy}: it may evict queued events that were"
            " acknowledged; set maxmemory-policy noeviction (CONFIG SET maxmemory-policy"
            " noeviction, and in redis.conf)"
        )
    if policy.startswith("volatile-"):
        return (
            f"Redis maxmemory-policy is {policy}: claims may be evicted when Redis is full (a"
            " redelivery is then accepted again and found a duplicate by the webhook_events"
            " table); noeviction keeps them"
        )
    return None


# -- Redis Cluster: one client per shard, to the primary serving its slot ----------------------

#: how long asking a node for the slot map may take: a failover must not wait on a dead one
SLOT_MAP_TIMEOUT_SECONDS = 0.5
#: the slot map is read again at most this often, however many connections fail meanwhile
SLOT_MAP_REFRESH_SECONDS = 0.2
#: what a node answers for a slot it no longer serves (redis-py's classes for them)
_MOVED = (MovedError, AskError, TryAgainError, ClusterDownError, ReadOnlyError)
_UNBLOCKED = "UNBLOCKED"


class SlotMap:
    """Which primary serves which hash slot, as the cluster's nodes say (``CLUSTER SLOTS``):
    read at first use and again, at most every :data:`SLOT_MAP_REFRESH_SECONDS`, after a
    connection found its node gone or no longer serving its slot. One per cluster and process,
    shared by every client (:func:`slot_map`); thread-safe."""

    def __init__(self, target: ClusterTarget) -> None:
        self.target = target
        self._lock = threading.Lock()
        self._ranges: list[tuple[int, int, tuple[str, int]]] = []
        self._known: list[tuple[str, int]] = []
        #: nodes that did not answer the last time they were asked: asked last
        self._silent: set[tuple[str, int]] = set()
        self._read_at = 0.0
        self._stale = True

    def _node(self, host: str, port: int) -> Redis:
        return Redis(
            host,
            port,
            username=self.target.username,
            password=self.target.password,
            ssl=self.target.ssl,
            socket_timeout=SLOT_MAP_TIMEOUT_SECONDS,
            socket_connect_timeout=SLOT_MAP_TIMEOUT_SECONDS,
            # once: redis-py's default retries a refused connection for seconds, and a dead
            # node must cost one timeout at most
            retry=Retry(NoBackoff(), 0),
        )

    def _read(self) -> list[tuple[int, int, tuple[str, int]]] | None:
        """The slot map from the first node that answers: the nodes it named before first,
        then the seeds, those that did not answer last time last."""
        candidates = list(dict.fromkeys([*self._known, *self.target.nodes]))
        candidates.sort(key=lambda node: node in self._silent)
        for host, port in candidates:
            node = self._node(host, port)
            try:
                raw = node.execute_command("CLUSTER SLOTS")  # type: ignore[no-untyped-call]
            except (RedisConnectionError, RedisTimeoutError, OSError):
                self._silent.add((host, port))
                continue
            except ResponseError as err:
                raise ConfigError(
                    f"redis_url: {host}:{port} is not a cluster node ({err}); use redis:// for"
                    " a single Redis"
                ) from err
            finally:
                node.close()
            self._silent.discard((host, port))
            slots = parse_cluster_slots(raw, current_host=host)
            return sorted(
                (start, end, (str(info["primary"][0]), int(info["primary"][1])))
                for (start, end), info in slots.items()
            )
        return None

    def refresh(self) -> bool:
        """Read the map again (at most every SLOT_MAP_REFRESH_SECONDS); whether a node answered.
        While another thread reads it, the map as last read serves: a shard whose primary is
        fine never waits on a read that asks a dead node first."""
        if not self._lock.acquire(blocking=not self._ranges):
            return True
        try:
            if not self._stale and self._ranges:
                return True
            if time.monotonic() - self._read_at < SLOT_MAP_REFRESH_SECONDS and self._ranges:
                return True
            self._read_at = time.monotonic()
            ranges = self._read()
            if ranges is None:
                return False
            self._ranges = ranges
            self._known = list(dict.fromkeys(primary for _, _, primary in ranges))
            self._stale = False
            return True
        finally:
            self._lock.release()

    def stale(self) -> None:
        """A connection found its node gone or serving the slot no more: read the map again."""
        self._stale = True

    def cached(self, slot: int) -> tuple[str, int] | None:
        """The primary of ``slot`` as last read, when the map is not stale."""
        if self._stale:
            return None
        return self._owner(slot)

    def _owner(self, slot: int) -> tuple[str, int] | None:
        for start, end, primary in self._ranges:
            if start <= slot <= end:
                return primary
        return None

    def address(self, slot: int) -> tuple[str, int]:
        """The primary serving ``slot`` now; ``ConnectionError`` when no node answers or no
        primary serves it (failed, its replica not yet promoted)."""
        if self._stale and not self.refresh():
            raise RedisConnectionError(f"no node of the {self.target.describe()} answers")
        owner = self._owner(slot)
        if owner is None:
            self.stale()
            raise RedisConnectionError(f"no primary serves hash slot {slot} now")
        return owner

    def primary_slots(self) -> list[int]:
        """One slot of each primary (to ask every primary something)."""
        self.refresh()
        first: dict[tuple[str, int], int] = {}
        for start, _end, primary in self._ranges:
            first.setdefault(primary, start)
        return sorted(first.values())

    def check(self) -> None:
        """At a command's start: a node answers and every slot is served, else one line."""
        self.stale()
        if not self.refresh():
            raise ConfigError(f"redis_url: no node of the {self.target.describe()} answers")
        covered = sum(end - start + 1 for start, end, _ in self._ranges)
        if covered < 16384:
            raise ConfigError(
                f"redis_url: the {self.target.describe()} serves {covered} of the 16384 hash"
                " slots: assign the others (redis-cli --cluster fix) before starting hookline"
            )


_SLOT_MAPS: dict[ClusterTarget, SlotMap] = {}
_SLOT_MAPS_LOCK = threading.Lock()


def slot_map(target: ClusterTarget) -> SlotMap:
    """This process's slot map of the cluster ``target`` names."""
    with _SLOT_MAPS_LOCK:
        found = _SLOT_MAPS.get(target)
        if found is None:
            found = _SLOT_MAPS[target] = SlotMap(target)
        return found


def _node_options(target: ClusterTarget, options: dict[str, Any]) -> dict[str, Any]:
    out = dict(options)
    out.update(username=target.username, password=target.password)
    if target.ssl:
        out["ssl"] = True
    return out


def _moved(err: BaseException) -> bool:
    return isinstance(err, _MOVED) or (
        isinstance(err, ResponseError) and str(err).startswith(_UNBLOCKED)
    )


class SlotConnection(Connection):
    """A connection to the primary serving its pool's slot, asked when it connects."""

    def __init__(self, **kwargs: Any) -> None:
        self.slot_pool: SlotConnectionPool = kwargs.pop("slot_pool")
        super().__init__(**kwargs)  # type: ignore[no-untyped-call]

    def connect_check_health(
        self, check_health: bool = True, retry_socket_connect: bool = True
    ) -> None:
        if self._sock:
            return
        self.host, self.port = self.slot_pool.slots.address(self.slot_pool.slot)
        try:
            super().connect_check_health(check_health, retry_socket_connect)
        except (RedisConnectionError, RedisTimeoutError):
            self.slot_pool.slots.stale()
            raise

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().read_response(*args, **kwargs)
        except ResponseError as err:
            if not _moved(err):
                raise
            self.disconnect()  # type: ignore[no-untyped-call]
            self.slot_pool.slots.stale()
            raise RedisConnectionError(
                f"hash slot {self.slot_pool.slot} is not served here now: {err}"
            ) from err


class SlotSSLConnection(SlotConnection, SSLConnection):
    pass


class SlotConnectionPool(ConnectionPool):
    """redis-py's pool, its connections going where :class:`SlotMap` says ``slot`` is."""

    def __init__(self, slots: SlotMap, slot: int, **kwargs: Any) -> None:
        ssl = kwargs.pop("ssl", False)
        kwargs.setdefault("connection_class", SlotSSLConnection if ssl else SlotConnection)
        self.slots, self.slot = slots, slot
        super().__init__(**kwargs)
        self.connection_kwargs["slot_pool"] = self

    def __repr__(self) -> str:
        return f"<SlotConnectionPool slot={self.slot} of {self.slots.target.describe()}>"


class AsyncSlotConnection(aioconnection.Connection):
    """The asyncio twin of :class:`SlotConnection` (the ingress)."""

    def __init__(self, **kwargs: Any) -> None:
        self.slot_pool: AsyncSlotConnectionPool = kwargs.pop("slot_pool")
        super().__init__(**kwargs)

    async def connect_check_health(
        self, check_health: bool = True, retry_socket_connect: bool = True
    ) -> None:
        if self.is_connected:
            return
        slots, slot = self.slot_pool.slots, self.slot_pool.slot
        address = slots.cached(slot)
        if address is None:  # reading the map talks to nodes: not on the event loop
            address = await asyncio.to_thread(slots.address, slot)
        self.host, self.port = address
        try:
            await super().connect_check_health(check_health, retry_socket_connect)
        except (RedisConnectionError, RedisTimeoutError):
            slots.stale()
            raise

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().read_response(*args, **kwargs)
        except ResponseError as err:
            if not _moved(err):
                raise
            await self.disconnect()
            self.slot_pool.slots.stale()
            raise RedisConnectionError(
                f"hash slot {self.slot_pool.slot} is not served here now: {err}"
            ) from err


class AsyncSlotSSLConnection(AsyncSlotConnection, aioconnection.SSLConnection):
    pass


class AsyncSlotConnectionPool(aioconnection.ConnectionPool):
    def __init__(self, slots: SlotMap, slot: int, **kwargs: Any) -> None:
        ssl = kwargs.pop("ssl", False)
        kwargs.setdefault(
            "connection_class", AsyncSlotSSLConnection if ssl else AsyncSlotConnection
        )
        self.slots, self.slot = slots, slot
        super().__init__(**kwargs)
        self.connection_kwargs["slot_pool"] = self
