"""The aiohttp application: ``POST /webhooks/{source}``, ``/healthz``, ``/readyz``, ``/metrics``.

The request flow, in order: source known (404) -> body within the limit (413) and read within
the time limit -> source address allowed (403) -> signature (401) -> a provider's setup
handshake, answered at once (200) -> event id found (400) -> claim and enqueue in one Redis
script (202 accepted / 200 duplicate / 503 when Redis is away).
Request errors map to answers in one place, :func:`_reject`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.log import access_logger
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from ingest.addresses import allowed, client_address
from ingest.body import Reading
from ingest.claims import Claims
from ingest.memory import MemoryGuard
from ingest.metrics import (
    COUNT_DEAD_EVERY_SECONDS,
    READ_EVERY_SECONDS,
    DeadLetterCounter,
    IngestMetrics,
    OpsGauges,
    Periodic,
    RedisReading,
)
from shared import keys, logs, redisconn, rqcompat, shards, telemetry, traffic
from shared.config import Settings, SourceSettings
from shared.enqueue import JobSpec, claim_script, parse_reply
from shared.envelope import Envelope, redact_headers
from shared.errors import (
    ConfigError,
    EventIdNotFound,
    IpNotAllowed,
    RequestRejected,
    UnknownSource,
)
from shared.locators import MAX_ID_LENGTH, JsonBody, locate
from shared.traffic import UNKNOWN, Rejection, Traffic, header_names

log = logging.getLogger("hookline.ingest")

SETTINGS = web.AppKey("settings", Settings)
#: the home shard's client (the deployment's statistics and rejections; the only one when the
#: deployment is not sharded)
REDIS = web.AppKey("redis", aioredis.Redis)
#: every shard's client (:mod:`shared.shards`)
SHARDS: web.AppKey[shards.ShardClients[aioredis.Redis]] = web.AppKey("shards")
METRICS = web.AppKey("metrics", IngestMetrics)
#: the gauges read from Redis and the database (also in METRICS's registry)
GAUGES = web.AppKey("gauges", OpsGauges)
JOB_SPEC = web.AppKey("job_spec", JobSpec)
#: the claims' pipelines, one per shard (shards on one Redis share one)
CLAIMS: web.AppKey[list[Claims]] = web.AppKey("claims")
TRAFFIC = web.AppKey("traffic", Traffic)
#: this process's traces, ``None`` when ``[telemetry] traces`` is off
TRACING: web.AppKey[telemetry.Tracing | None] = web.AppKey("tracing")
#: the requests whose body is being read (a stopping process answers them at once)
READING = web.AppKey("reading", Reading)
#: what each shard's Redis holds, one per shard (shards on one Redis share one)
MEMORY: web.AppKey[list[MemoryGuard]] = web.AppKey("memory")
#: a request's body size once read, for its rejection record
BODY_SIZE = web.RequestKey("body_size", int)

#: aiohttp server options. Lingering (reading and discarding the rest of a body after the
#: answer) is cut to half a second: a body over the limit or a trickling client is answered
#: and then dropped, not read for aiohttp's default 10 s.
SERVER_OPTIONS: dict[str, Any] = {"lingering_time": 0.5}

#: seconds a client is told to wait before retrying while Redis is unreachable
RETRY_AFTER_SECONDS = 5
#: how often the traffic counts and rejections are written to Redis
TRAFFIC_FLUSH_SECONDS = 1.0
#: how often the queue's depth is sampled for the console's charts (a minute holds the last)
DEPTH_SAMPLE_SECONDS = 10.0


def create_app(settings: Settings, redis: aioredis.Redis | None = None) -> web.Application:
    """Build the ingress. ``redis`` may be passed in (tests: it then serves every shard);
    otherwise a client per shard is opened from ``settings.redis_url`` and closed with the
    app."""
    tracing = telemetry.setup(settings, "hookline-ingress")
    app = web.Application(
        # a safety net only: the handler reads the body itself, bounded by max_body_bytes
        client_max_size=settings.ingest.max_body_bytes + 1,
        # traced: the request's span outermost, so it sees the answer a rejection becomes
        middlewares=[_errors_middleware] if tracing is None else [_traced, _errors_middleware],
    )
    app[TRACING] = tracing
    app[SETTINGS] = settings
    app[METRICS] = IngestMetrics.create()
    app[JOB_SPEC] = JobSpec.from_settings(settings)
    app[TRAFFIC] = Traffic()
    app[READING] = Reading()
    app.on_shutdown.append(_stop_reading)
    app.cleanup_ctx.append(_redis_ctx(settings, redis))
    app.cleanup_ctx.append(_traffic_ctx)
    app.cleanup_ctx.append(_gauges_ctx)
    app.router.add_post("/webhooks/{source}", receive)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app


def _redis_ctx(
    settings: Settings, given: aioredis.Redis | None
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        timeout = settings.ingest.redis_timeout_seconds
        if given is not None:
            layout = shards.layout_for(settings)
            clients = shards.ShardClients(layout, tuple(given for _ in layout.shards))
        else:
            clients = shards.connect_async(
                settings,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                health_check_interval=30,
                client_name="hookline-ingress",
                # after a Redis restart each pooled connection fails once ("closed by
                # server"): try once more on a fresh one rather than answer 503 while Redis is
                # up (on a cluster, once more where the slot's primary is now). Sending the
                # claim script twice is safe: a second run answers "duplicate".
                retry=Retry(NoBackoff(), 1),
                retry_on_error=[RedisConnectionError],
            )
        app[SHARDS] = clients
        app[REDIS] = clients.home
        script = claim_script(app[JOB_SPEC]).text
        per_client = {
            id(client): (
                Claims(client, script, settings.ingest),
                MemoryGuard(settings.ingest.shed_at_memory_percent),
            )
            for _, client in clients.distinct()
        }
        app[CLAIMS] = [per_client[id(client)][0] for _, client in clients]
        app[MEMORY] = [per_client[id(client)][1] for _, client in clients]
        if settings.ingest.ack_fsync:
            for _, client in clients.distinct():
                await _check_waitaof(client)
        yield
        if given is None:
            await shards.aclose(clients)

    return ctx


async def _gauges_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    counter = DeadLetterCounter(settings.database_url)

    async def read_client(served: list[keys.Shard], client: aioredis.Redis) -> list[RedisReading]:
        """The shards one Redis serves: its memory read once for them all."""
        memory = await client.info("memory")
        used, most = int(memory["used_memory"]), int(memory.get("maxmemory", 0))
        return [
            RedisReading(await rqcompat.read_queues(client, settings.queue, s), used, most, s.index)
            for s in served
        ]

    async def read_redis() -> list[RedisReading]:
        """Every shard's reading; a shard whose Redis cannot be read is left out (its series
        go missing, as a down target's do), the others are shown."""
        async with asyncio.timeout(settings.ingest.redis_timeout_seconds * 2):
            found = await asyncio.gather(
                *(read_client(served, client) for served, client in app[SHARDS].distinct()),
                return_exceptions=True,
            )
        readings = sorted(
            (r for one in found if isinstance(one, list) for r in one), key=lambda r: r.shard
        )
        if not readings:
            raise next(e for e in found if isinstance(e, BaseException))
        return readings

    gauges = OpsGauges(
        Periodic("the queues from Redis", read_redis, READ_EVERY_SECONDS),
        Periodic("the dead letters from the database", counter.count, COUNT_DEAD_EVERY_SECONDS),
    )
    app[GAUGES] = gauges
    app[METRICS].registry.register(gauges)
    yield
    app[METRICS].registry.unregister(gauges)
    await gauges.close()
    counter.close()


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON answer (orjson: the same JSON as the standard library, several times faster)."""
    return web.Response(
        body=orjson.dumps(data), status=status, headers=headers, content_type="application/json"
    )


async def _stop_reading(app: web.Application) -> None:
    """On SIGTERM aiohttp stops reading from its connections but lets handlers finish: a body
    still arriving would never come, so its request is answered 503 + Retry-After now rather
    than 408 after ``read_timeout_seconds``. Requests with their body are answered as usual."""
    app[READING].stop()


async def _traffic_ctx(app: web.Application) -> AsyncIterator[None]:
    """Write the traffic counts and rejections once a second, and a last time on the way out;
    read Redis's memory as often (:mod:`ingest.memory`)."""

    # Stopped by an event as well as cancelled: a cancellation that lands as one of the steps'
    # own deadlines passes (a loop blocked past it) comes out of asyncio.timeout as a
    # TimeoutError on Python 3.11, which the step takes for Redis being slow, and the loop
    # would go on for ever, holding up the process's exit.
    stopping = asyncio.Event()

    async def flush_forever() -> None:
        sampled = 0.0
        while not stopping.is_set():
            await asyncio.sleep(TRAFFIC_FLUSH_SECONDS)
            await _flush(app)
            await _read_memory(app)
            if time.monotonic() - sampled >= DEPTH_SAMPLE_SECONDS:
                sampled = time.monotonic()
                await _sample_depth(app)

    await _read_memory(app)
    task = asyncio.create_task(flush_forever())
    yield
    stopping.set()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await _flush(app)


async def _flush(app: web.Application) -> None:
    try:
        async with asyncio.timeout(app[SETTINGS].ingest.redis_timeout_seconds * 2):
            await app[TRAFFIC].flush(app[REDIS], app[SHARDS].layout.home)
    except (RedisError, OSError, TimeoutError) as err:
        log.debug("traffic not written yet: %s", type(err).__name__)


async def _read_memory(app: web.Application) -> None:
    for served, client in app[SHARDS].distinct():
        try:
            async with asyncio.timeout(app[SETTINGS].ingest.redis_timeout_seconds * 2):
                await app[MEMORY][served[0].index].refresh(client)
        except (RedisError, OSError, TimeoutError) as err:
            log.debug("Redis memory not read: %s", type(err).__name__)


async def _sample_depth(app: web.Application) -> None:
    """The queue's depth (every shard's), for the console's charts."""
    try:
        async with asyncio.timeout(app[SETTINGS].ingest.redis_timeout_seconds * 2):
            depth = 0
            for shard, client in app[SHARDS]:
                depth += int(await client.llen(shard.queue_key(app[JOB_SPEC].queue)))
            await traffic.sample_depth(app[REDIS], depth, home=app[SHARDS].layout.home)
    except (RedisError, OSError, TimeoutError) as err:
        log.debug("queue depth not sampled: %s", type(err).__name__)


async def _check_waitaof(client: aioredis.Redis) -> None:
    """``ack_fsync`` needs WAITAOF (Redis 7.2+) and an append-only file: a startup error
    naming the version otherwise. A Redis not reachable yet is checked by its first answer."""
    try:
        async with asyncio.timeout(3):
            server = await client.info("server")
            persistence = await client.info("persistence")
    except (RedisError, OSError, TimeoutError) as err:
        log.warning("ack_fsync: Redis not reachable to check WAITAOF yet (%s)", type(err).__name__)
        return
    version = str(server.get("redis_version", "0"))
    if tuple(int(x) for x in re.findall(r"\d+", version)[:2]) < (7, 2):
        raise ConfigError(
            f"ingest.ack_fsync needs Redis 7.2 or later (WAITAOF); this Redis is {version}"
        )
    if not int(persistence.get("aof_enabled", 0)):
        raise ConfigError("ingest.ack_fsync needs Redis's append-only file (appendonly yes)")


@web.middleware
async def _errors_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except RequestRejected as err:
        return _reject(request, err)


@web.middleware
async def _traced(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """With traces on: a SERVER span for each webhook request (not for probes and scrapes)."""
    tracing = _tracing(request)
    if tracing is None or not request.path.startswith("/webhooks/"):
        return await handler(request)
    source = request.match_info.get("source", "")
    attributes = {
        "http.request.method": request.method,
        "http.route": "/webhooks/{source}",
        "url.path": request.path,
        "hookline.source": source,
    }
    with tracing.server(request.headers, "POST /webhooks/{source}", attributes) as span:
        response = await handler(request)
        span.set_attribute("http.response.status_code", response.status)
        if response.status >= 500:
            from opentelemetry.trace import Status, StatusCode

            span.set_status(Status(StatusCode.ERROR))
        return response


def _tracing(request: web.Request) -> telemetry.Tracing | None:
    return request.app[TRACING]


def _reject(request: web.Request, err: RequestRejected) -> web.Response:
    source = request.match_info.get("source", "")
    label = source if source in request.app[SETTINGS].sources else UNKNOWN
    _remember_rejection(request, label, err.status, err.code)
    # the reason only: never the headers, which may carry secrets or signatures
    log.info("rejected %s %s: %s", label, err.status, err.code, extra={"source": label})
    headers = {"Retry-After": str(err.retry_after)} if err.retry_after else None
    response = _json({"error": err.code}, status=err.status, headers=headers)
    if err.close_connection:
        response.force_close()
    return response


def _remember_rejection(request: web.Request, source: str, status: int, reason: str) -> None:
    """The metric, and the record operators see (header names only, never a value)."""
    request.app[METRICS].rejected.labels(source, reason).inc()
    size = request.get(BODY_SIZE)
    if size is None and (request.content_length or 0) >= 0:
        size = request.content_length
    request.app[TRAFFIC].reject(
        Rejection(
            at=time.time(),
            source=source,
            status=status,
            reason=reason,
            remote=request.remote or "",
            size=size,
            header_names=header_names(request.headers.keys()),
        )
    )


async def receive(request: web.Request) -> web.Response:
    """``POST /webhooks/{source}``."""
    app = request.app
    settings = app[SETTINGS]
    source = settings.sources.get(request.match_info["source"])
    if source is None:
        raise UnknownSource("unknown source")
    app[METRICS].source(source.name).received.inc()
    _check_address(request, source, settings)  # before reading: nothing read for strangers
    body = await app[READING].read(request, settings.ingest)
    request[BODY_SIZE] = len(body)
    now = time.time()
    tracing = _tracing(request)
    if tracing is None:
        source.scheme.verify(request.headers, body, now)
    else:
        with tracing.span("verify signature", **{"hookline.scheme": source.scheme.name}):
            source.scheme.verify(request.headers, body, now)
    answer = source.scheme.handshake(body)
    if answer is not None:
        # the provider checking the endpoint (Slack's url_verification): no event, nothing queued
        log.info("handshake answered for %s", source.name)
        return _json(answer, status=200)
    event_id = _event_id(request, source, body)
    envelope = Envelope(
        source=source.name,
        event_id=event_id,
        received_at=now,
        headers=redact_headers(request.headers.items(), source.scheme.sensitive()),
        body=body,
        remote=request.remote,
    )
    if tracing is not None:
        return await _traced_claim(request, envelope, tracing)
    return await _claim_and_enqueue(request, envelope)


def _check_address(request: web.Request, source: SourceSettings, settings: Settings) -> None:
    if not source.allowed_ips:
        return
    addr = client_address(
        request.remote,
        request.headers.getall("X-Forwarded-For", []),
        settings.ingest.trusted_proxies,
    )
    if not allowed(addr, source.allowed_ips):
        raise IpNotAllowed("address not allowed")


def _event_id(request: web.Request, source: SourceSettings, body: bytes) -> str:
    event_id = locate(source.event_id, request.headers, body, JsonBody(body))
    if event_id is None:
        raise EventIdNotFound(f"event id not found at {source.event_id.text}")
    if len(event_id) > MAX_ID_LENGTH or not event_id.isprintable():
        raise EventIdNotFound("event id is too long or not printable")
    return event_id


async def _claim_and_enqueue(request: web.Request, envelope: Envelope) -> web.Response:
    app = request.app
    metrics = app[METRICS]
    ingest = app[SETTINGS].ingest
    shard = app[SHARDS].layout.route(envelope.source, envelope.event_id)
    memory = app[MEMORY][shard.index]
    if memory.shedding:
        # Redis is (nearly) full: room is kept for the workers to drain it
        return _unavailable(request, envelope.source, "redis_memory_high")
    replicated = bool(ingest.ack_replicas or ingest.ack_fsync)
    keys_, args = claim_script(app[JOB_SPEC]).call(envelope, replicated=replicated, shard=shard)
    started = time.perf_counter()
    try:
        claimed = await app[CLAIMS][shard.index].claim(keys_, args)
    except (RedisError, OSError, TimeoutError) as err:
        if redisconn.refused_for_memory(err):
            # Redis refused the event's writes (the script undid what it wrote): nothing queued
            log.warning("redis is full (maxmemory) for %s: 503", envelope.source)
            memory.full()
            return _unavailable(request, envelope.source, "redis_full")
        # nothing is acknowledged that is not queued: the provider will retry
        log.warning(
            "redis unavailable for %s: %s",
            envelope.source,
            type(err).__name__,
            extra=logs.event_fields(envelope),
        )
        return _unavailable(request, envelope.source, "unavailable")
    metrics.enqueue_seconds.observe(time.perf_counter() - started)
    result = parse_reply(claimed.reply)
    if not claimed.acknowledged:
        # claimed and queued on the primary (now, or by an earlier delivery), not yet on enough
        # replicas: not acknowledged. The provider's retry is answered once the claim is on
        # them (a duplicate), or, if this primary died first, is accepted again on the new
        # one; either way it is applied once.
        log.warning(
            "event of %s not replicated in time: 503",
            envelope.source,
            extra=logs.event_fields(envelope),
        )
        return _unavailable(request, envelope.source, "not_replicated")
    if not result.accepted:
        metrics.source(envelope.source).duplicates.inc()
        app[TRAFFIC].count(envelope.source, "duplicate")
        return _json({"status": "duplicate", "event_id": envelope.event_id}, status=200)
    metrics.source(envelope.source).accepted.inc()
    app[TRAFFIC].count(envelope.source, "accepted")
    memory.queued(len(envelope.body))
    return _json({"status": "accepted", "event_id": envelope.event_id}, status=202)


async def _traced_claim(
    request: web.Request, envelope: Envelope, tracing: telemetry.Tracing
) -> web.Response:
    """The claim and enqueue as the event's PRODUCER span, whose context the job carries."""
    attributes = {"hookline.source": envelope.source, "hookline.event_id": envelope.event_id}
    with tracing.producer(request.app[JOB_SPEC].queue, **attributes) as span:
        envelope = dataclasses.replace(envelope, trace=tracing.traceparent())
        response = await _claim_and_enqueue(request, envelope)
        outcome = {202: "accepted", 200: "duplicate"}.get(response.status, "unavailable")
        span.set_attribute("hookline.outcome", outcome)
        return response


def _unavailable(request: web.Request, source: str, reason: str) -> web.Response:
    _remember_rejection(request, source, 503, reason)
    return _json(
        {"error": "unavailable"}, status=503, headers={"Retry-After": str(RETRY_AFTER_SECONDS)}
    )


async def healthz(_request: web.Request) -> web.Response:
    return _json({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready while Redis answers; sharded, while one shard's Redis answers (a shard whose
    primary is down answers its own events 503, the others are still taken), the shards
    that do not answer named."""

    async def ping(client: aioredis.Redis) -> bool:
        try:
            async with asyncio.timeout(request.app[SETTINGS].ingest.redis_timeout_seconds):
                await client.ping()
        except (RedisError, OSError, TimeoutError):
            return False
        return True

    distinct = request.app[SHARDS].distinct()
    answers = await asyncio.gather(*(ping(client) for _, client in distinct))
    down = sorted(
        s.index for (served, _), ok in zip(distinct, answers, strict=True) if not ok for s in served
    )
    if not any(answers):
        return _json({"status": "unavailable", "redis": False}, status=503)
    if down:
        return _json({"status": "ready", "redis": True, "shards_down": down})
    return _json({"status": "ready", "redis": True})


async def metrics(request: web.Request) -> web.Response:
    """This process's metrics, or, under ``serve --processes N``, every process's counters
    added up; the gauges are this process's reading of Redis and the database either way."""
    gauges = request.app[GAUGES]
    await gauges.refresh()
    registry = request.app[METRICS].registry
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        registry.register(gauges)
    resp = web.Response(body=generate_latest(registry))
    resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return resp


def access_log_options(settings: Settings) -> dict[str, Any]:
    """aiohttp's server options for the ingress: the access log (never headers) and
    :data:`SERVER_OPTIONS`."""
    return {
        "access_log": access_logger if settings.ingest.access_log else None,
        "access_log_format": '%a "%r" %s %b %Tf',
        **SERVER_OPTIONS,
    }


def run(settings: Settings, host: str, port: int, **kwargs: Any) -> None:
    """``hookline serve`` in one process, on uvloop when available."""
    try:
        import uvloop

        loop_factory: Any = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
        loop_factory = None
    web.run_app(
        create_app(settings),
        host=host,
        port=port,
        loop=loop_factory() if loop_factory else None,
        **{**access_log_options(settings), **kwargs},
    )
