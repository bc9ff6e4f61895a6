"""One way for every process to reach Redis, from ``redis_url``.

Either a plain URL (``redis://``, ``rediss://``, ``unix://``, as redis-py reads them), or a
primary managed by Redis Sentinel::

    redis+sentinel://[user:password@]host:port[,host:port...]/SERVICE_NAME[/DB]
    rediss+sentinel://...        (TLS to the sentinels and to the primary)

The user and password are the primary's (and its replicas'). A client built for a Sentinel URL
asks the sentinels for the current primary on every new connection, so after a failover the
ingress, the workers and the commands find the new primary by themselves: a connection to the
old one fails (it died, or it came back as a read-only replica) and the next one goes to the
primary the sentinels name now.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import redis.asyncio as aioredis
from redis import Redis
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.sentinel import Sentinel

from shared.errors import ConfigError

_SENTINEL = re.compile(
    r"(?P<scheme>rediss?)\+sentinel://"
    r"(?:(?P<user>[^:@/]*)(?::(?P<password>[^@/]*))?@)?"
    r"(?P<hosts>[^/@]+)/(?P<service>[^/?#]+)(?:/(?P<db>\d+))?/?"
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
    sentinels = []
    for part in match["hosts"].split(","):
        host = _HOST.fullmatch(part.strip())
        if host is None or not 0 < int(host["port"]) < 65536:
            raise ConfigError(f"redis_url: {part.strip()!r} is not host:port")
        sentinels.append((host["host"].strip("[]"), int(host["port"])))
    return SentinelTarget(
        sentinels=tuple(sentinels),
        service=unquote(match["service"]),
        db=int(match["db"] or 0),
        username=unquote(match["user"]) if match["user"] else None,
        password=unquote(match["password"]) if match["password"] else None,
        ssl=match["scheme"] == "rediss",
    )


def validate(url: str) -> None:
    """``ConfigError`` unless ``url`` is a Redis URL hookline can use."""
    if parse_sentinel(url) is not None:
        return
    if not re.match(r"(rediss?|unix)://", url):
        raise ConfigError("redis_url must be redis://, rediss://, unix:// or redis+sentinel://")


def describe(url: str) -> str:
    """The URL without its password, for messages and logs."""
    target = parse_sentinel(url)
    if target is not None:
        return target.describe()
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


def connect(url: str, **options: Any) -> Redis:
    """A synchronous client (workers, commands, console) for ``url``."""
    target = parse_sentinel(url)
    if target is None:
        return Redis.from_url(url, **options)
    kwargs = _sentinel_options(target, options)
    sentinels, sentinel_kwargs = list(target.sentinels), kwargs.pop("sentinel_kwargs")
    sentinel = Sentinel(sentinels, sentinel_kwargs=sentinel_kwargs)  # type: ignore[no-untyped-call, unused-ignore]
    client: Redis = sentinel.master_for(target.service, **kwargs)  # type: ignore[no-untyped-call, unused-ignore]
    return client


def connect_async(url: str, **options: Any) -> aioredis.Redis:
    """An asyncio client (the ingress) for ``url``."""
    target = parse_sentinel(url)
    if target is None:
        return aioredis.Redis.from_url(url, **options)
    kwargs = _sentinel_options(target, options)
    sentinels, sentinel_kwargs = list(target.sentinels), kwargs.pop("sentinel_kwargs")
    sentinel = AsyncSentinel(sentinels, sentinel_kwargs=sentinel_kwargs)  # type: ignore[no-untyped-call, unused-ignore]
    client: aioredis.Redis = sentinel.master_for(target.service, **kwargs)
    return client


def check_at_start(url: str) -> None:
    """What every process does before it starts: with a Sentinel URL, :func:`check` it (a
    plain Redis that is down is waited for, or answered 503, as before)."""
    if parse_sentinel(url) is not None:
        check(url)


def check(url: str) -> None:
    """At a command's start: Redis answers. For a Sentinel URL, tells a service no sentinel
    knows (``ConfigError``: a typo) from no sentinel reachable or no primary right now
    (:class:`RedisUnreachable`), each in one line."""
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
    (it waits, or answers 503)."""
    client = connect(url, socket_timeout=3, socket_connect_timeout=3)
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
