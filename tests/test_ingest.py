"""The ingress as a provider sees it: HTTP answers, and what lands in Redis (real Redis)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient
from rq import Queue

from ingest.app import SERVER_OPTIONS, create_app
from shared import keys
from shared.config import Settings
from shared.enqueue import JobSpec, is_claimed
from shared.envelope import REDACTED, Envelope
from shared.rqcompat import JobSerializer
from tests.helpers import SECRET_VALUES, SOURCES, make_settings, signed

ALL = sorted(SOURCES)


@pytest.fixture
def settings(redis_url: str) -> Settings:
    return make_settings(redis_url)


@pytest.fixture
async def client(aiohttp_client: Any, settings: Settings) -> TestClient:
    return await aiohttp_client(create_app(settings))  # type: ignore[no-any-return]


def queued_jobs(redis_client: redis.Redis, queue: str = "hookline") -> list[Any]:
    return Queue(queue, connection=redis_client, serializer=JobSerializer).get_jobs()


async def post(
    client: TestClient, source: str, body: bytes, headers: dict[str, str]
) -> tuple[int, Any]:
    resp = await client.post(f"/webhooks/{source}", data=body, headers=headers)
    return resp.status, await resp.json()


@pytest.mark.parametrize("source", ALL)
async def test_authentic_event_is_accepted_and_queued_as_an_rq_job(
    client: TestClient, settings: Settings, redis_client: redis.Redis, source: str
) -> None:
    # Given an authentic delivery signed with the scheme's own code
    body, headers, _ = signed(settings, source)
    # When it is posted
    status, answer = await post(client, source, body, headers)
    # Then it is accepted and exactly one ordinary RQ job holds the raw body
    assert status == 202, answer
    assert answer["status"] == "accepted"
    jobs = queued_jobs(redis_client)
    assert len(jobs) == 1
    job = jobs[0]
    assert job.func_name == keys.JOB_FUNC
    assert job.get_status() == "queued"
    # read as the workers read it, whatever the queued form of the body
    envelope = Envelope.from_dict(job.args[0])
    assert envelope.body == body
    assert envelope.source == source
    assert envelope.event_id == answer["event_id"]
    # and no signature or secret is stored with it
    sensitive = settings.sources[source].scheme.sensitive()
    for name, value in envelope.headers:
        if name.lower() in sensitive:
            assert value == REDACTED
    stored = json.dumps(job.args[0]["headers"])
    for secret in SECRET_VALUES:
        assert secret not in stored


@pytest.mark.parametrize("source", ALL)
async def test_redelivery_is_a_duplicate_and_queues_nothing(
    client: TestClient, settings: Settings, redis_client: redis.Redis, source: str
) -> None:
    body, headers, _ = signed(settings, source, n=7)
    first = await post(client, source, body, headers)
    # a redelivery carries a fresh signature, as providers do
    body2, headers2, _ = signed(settings, source, n=7, now=time.time() + 1, body=body)
    second = await post(client, source, body2, headers2)
    assert first[0] == 202
    assert second == (200, {"status": "duplicate", "event_id": first[1]["event_id"]})
    assert len(queued_jobs(redis_client)) == 1


async def test_simultaneous_deliveries_queue_exactly_one_job(
    client: TestClient, settings: Settings, redis_client: redis.Redis
) -> None:
    # Given 20 deliveries of one event arriving at the same moment
    body, headers, _ = signed(settings, "stripe", n=1)
    results = await asyncio.gather(*(post(client, "stripe", body, headers) for _ in range(20)))
    statuses = sorted(r[0] for r in results)
    # Then exactly one is accepted, the others are duplicates, and one job is queued
    assert statuses == [200] * 19 + [202]
    assert len(queued_jobs(redis_client)) == 1


async def test_duplicate_after_the_job_finished_is_still_a_duplicate(
    client: TestClient, settings: Settings, redis_client: redis.Redis
) -> None:
    body, headers, _ = signed(settings, "moncash", n=3)
    assert (await post(client, "moncash", body, headers))[0] == 202
    # When the job has run and RQ has expired its data
    job = queued_jobs(redis_client)[0]
    redis_client.delete(job.key, keys.queue_key("hookline"))
    # Then a redelivery inside the dedup window is answered 200 and queues nothing
    status, answer = await post(client, "moncash", body, headers)
    assert (status, answer["status"]) == (200, "duplicate")
    assert queued_jobs(redis_client) == []
    spec = JobSpec.from_settings(settings)
    claim = spec.claim_keys("moncash", answer["event_id"], time.time())
    ttl = redis_client.ttl(claim.keys[0])
    assert settings.ingest.dedup_ttl_seconds <= ttl <= settings.ingest.dedup_ttl_seconds * 1.5


async def test_redis_failure_between_claim_and_enqueue_leaves_neither(
    client: TestClient, settings: Settings, redis_client: redis.Redis
) -> None:
    # Given a Redis that fails the push onto the queue (the key holds the wrong type)
    redis_client.set(keys.queue_key("hookline"), "not a list")
    body, headers, _ = signed(settings, "moncash", n=4)
    status, answer = await post(client, "moncash", body, headers)
    # Then the answer is 503 and neither the claim nor the job exists
    assert status == 503 and answer == {"error": "unavailable"}
    event_id = json.loads(body)["id"]
    assert not is_claimed(redis_client, JobSpec.from_settings(settings), "moncash", event_id)
    assert [k for k in redis_client.scan_iter("rq:job:*")] == []
    # And the provider's retry, once Redis is healthy, is accepted (not a silent duplicate)
    redis_client.delete(keys.queue_key("hookline"))
    assert (await post(client, "moncash", body, headers))[0] == 202
    assert len(queued_jobs(redis_client)) == 1


async def test_redis_failure_when_claiming_leaves_no_job(
    client: TestClient, settings: Settings, redis_client: redis.Redis
) -> None:
    # Given the claim write itself fails (the claim key is a list: SET would succeed, so make
    # the registry set fail instead: the step between the job hash and the queue push)
    redis_client.rpush(keys.QUEUES_SET, "wrong type")
    body, headers, _ = signed(settings, "stripe", n=5)
    status, _ = await post(client, "stripe", body, headers)
    assert status == 503
    assert [k for k in redis_client.scan_iter("rq:job:*")] == []
    assert [k for k in redis_client.scan_iter(keys.CLAIM + "*")] == []


async def test_redis_unreachable_is_503_with_retry_after_within_a_second(
    aiohttp_client: Any,
) -> None:
    # Given Redis cannot be reached (nothing listens on the port)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = make_settings(f"redis://127.0.0.1:{port}/0")
    client = await aiohttp_client(create_app(settings))
    body, headers, _ = signed(settings, "github")
    started = time.monotonic()
    resp = await client.post("/webhooks/github", data=body, headers=headers)
    elapsed = time.monotonic() - started
    assert resp.status == 503
    assert await resp.json() == {"error": "unavailable"}
    assert int(resp.headers["Retry-After"]) > 0
    assert elapsed < settings.ingest.redis_timeout_seconds + 1.0
    assert (await client.get("/readyz")).status == 503
    assert (await client.get("/healthz")).status == 200


async def test_redis_too_slow_is_503(
    aiohttp_client: Any, redis_url: str, redis_client: redis.Redis
) -> None:
    # Given a Redis that is busy for longer than the ingress waits (a blocking script)
    settings = make_settings(redis_url, ingest={"redis_timeout_seconds": 0.3})
    client = await aiohttp_client(create_app(settings))
    body, headers, _ = signed(settings, "stripe")
    blocker = aioredis.Redis.from_url(redis_url)
    spin = (
        "local s = redis.call('TIME') local t0 = s[1] * 1e6 + s[2] "
        "repeat local n = redis.call('TIME') until n[1] * 1e6 + n[2] > t0 + 1.5e6 return 1"
    )
    busy = asyncio.ensure_future(blocker.eval(spin, 0))
    await asyncio.sleep(0.1)
    try:
        status, _answer = await post(client, "stripe", body, headers)
    finally:
        await busy
        await blocker.aclose()
    assert status == 503
    # nothing acknowledged was lost: the answer was 503, the provider retries and is accepted
    await asyncio.sleep(0.2)
    retry = await post(client, "stripe", body, headers)
    assert retry[0] in (200, 202)
    assert len(queued_jobs(redis_client)) <= 1


async def test_unknown_source_is_404(client: TestClient) -> None:
    assert await post(client, "nope", b"{}", {}) == (404, {"error": "unknown_source"})


async def test_event_id_missing_where_the_source_says_is_400(
    client: TestClient, settings: Settings, redis_client: redis.Redis
) -> None:
    # an authentic moncash body without its "id"
    body, headers, _ = signed(settings, "moncash", body=b'{"event":"payment.completed"}')
    status, answer = await post(client, "moncash", body, headers)
    assert status == 400 and answer == {"error": "event_id_not_found"}
    assert queued_jobs(redis_client) == []


SLACK_CHALLENGE = "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"


def url_verification(challenge: Any = SLACK_CHALLENGE) -> bytes:
    """Slack's Events API handshake: signed like any request, with no event_id."""
    doc = {"token": "Jhj5dZrVaK7ZwHHjRyZWjbDl", "challenge": challenge, "type": "url_verification"}
    return json.dumps(doc).encode()


def nothing_queued(redis_client: redis.Redis, queue: str = "hookline") -> bool:
    """No job id on the queue, no job hash and no claim."""
    return (
        redis_client.llen(keys.queue_key(queue)) == 0
        and list(redis_client.scan_iter(keys.job_key("*"))) == []
        and list(redis_client.scan_iter(keys.CLAIM + "*")) == []
    )


async def test_slack_url_verification_is_answered_with_its_challenge_and_queues_nothing(
    client: TestClient, settings: Settings, redis_client: redis.Redis
) -> None:
    # Given Slack checking a new request URL with a signed url_verification
    body, headers, _ = signed(settings, "slack", body=url_verification())
    # When it is posted
    resp = await client.post("/webhooks/slack", data=body, headers=headers)
    # Then the challenge comes back as JSON, as Slack requires, and nothing is queued
    assert resp.status == 200
    assert resp.content_type == "application/json"
    assert await resp.json() == {"challenge": SLACK_CHALLENGE}
    assert nothing_queued(redis_client)


async def test_forged_or_unsigned_url_verification_is_401(
    client: TestClient, settings: Settings, redis_client: redis.Redis
) -> None:
    body, headers, _ = signed(settings, "slack", body=url_verification())
    forged = {**headers, "X-Slack-Signature": headers["X-Slack-Signature"][:-2] + "00"}
    if forged == headers:
        forged["X-Slack-Signature"] = headers["X-Slack-Signature"][:-2] + "11"
    assert await post(client, "slack", body, forged) == (401, {"error": "invalid_signature"})
    assert await post(client, "slack", body, {}) == (401, {"error": "missing_signature"})
    stale, stale_headers, _ = signed(settings, "slack", now=time.time() - 3600, body=body)
    assert await post(client, "slack", stale, stale_headers) == (
        401,
        {"error": "stale_timestamp"},
    )
    assert nothing_queued(redis_client)


@pytest.mark.parametrize("challenge", [42, None, ["x"], {"a": "b"}, "", "c" * 1001])
async def test_url_verification_with_an_unusable_challenge_is_an_ordinary_event(
    client: TestClient, settings: Settings, redis_client: redis.Redis, challenge: Any
) -> None:
    # an authentic body that is not a handshake we answer: it has no event_id, so it is a 400
    body, headers, _ = signed(settings, "slack", body=url_verification(challenge))
    assert await post(client, "slack", body, headers) == (400, {"error": "event_id_not_found"})
    assert nothing_queued(redis_client)


async def test_event_id_override_from_a_header(aiohttp_client: Any, redis_url: str) -> None:
    sources = {"hmac": {**SOURCES["hmac"], "event_id": "header:X-Request-Id"}}
    settings = make_settings(redis_url, sources=sources)
    client = await aiohttp_client(create_app(settings))
    body, headers, _ = signed(settings, "hmac")
    assert (await post(client, "hmac", body, headers))[0] == 400
    headers["X-Request-Id"] = "req-42"
    assert await post(client, "hmac", body, headers) == (
        202,
        {"status": "accepted", "event_id": "req-42"},
    )


async def test_oversized_body_is_413_by_content_length(aiohttp_client: Any, redis_url: str) -> None:
    settings = make_settings(redis_url, ingest={"max_body_bytes": 1000})
    client = await aiohttp_client(create_app(settings))
    body, headers, _ = signed(settings, "github", body=b"x" * 1001)
    assert await post(client, "github", body, headers) == (413, {"error": "body_too_large"})


async def test_oversized_chunked_body_is_413(aiohttp_client: Any, redis_url: str) -> None:
    settings = make_settings(redis_url, ingest={"max_body_bytes": 1000})
    client = await aiohttp_client(create_app(settings))
    body, headers, _ = signed(settings, "github", body=b"y" * 5000)

    async def chunks() -> Any:
        for i in range(0, len(body), 500):
            yield body[i : i + 500]

    resp = await client.post("/webhooks/github", data=chunks(), headers=headers)
    assert resp.status == 413


async def in_pieces(body: bytes, size: int = 300, pause: float = 0.0) -> AsyncIterator[bytes]:
    """``body`` as a chunked upload, ``size`` bytes at a time, ``pause`` s between pieces."""
    for i in range(0, len(body), size):
        yield body[i : i + size]
        if pause:
            await asyncio.sleep(pause)


async def test_chunked_body_one_byte_over_the_limit_is_413_and_at_the_limit_202(
    aiohttp_client: Any, redis_url: str, redis_client: redis.Redis
) -> None:
    settings = make_settings(redis_url, ingest={"max_body_bytes": 1000})
    client = await aiohttp_client(create_app(settings))
    # a body of limit + 1 bytes, without Content-Length, authentic in full
    over, over_headers, _ = signed(settings, "github", body=b"y" * 1001)
    resp = await client.post("/webhooks/github", data=in_pieces(over), headers=over_headers)
    assert resp.request_info.headers.get("Transfer-Encoding") == "chunked"
    assert "Content-Length" not in resp.request_info.headers
    assert (resp.status, await resp.json()) == (413, {"error": "body_too_large"})
    assert nothing_queued(redis_client)
    # and exactly the limit, chunked, is read whole and accepted
    at, at_headers, _ = signed(settings, "github", body=b"z" * 1000)
    resp = await client.post("/webhooks/github", data=in_pieces(at), headers=at_headers)
    assert resp.request_info.headers.get("Transfer-Encoding") == "chunked"
    assert resp.status == 202, await resp.text()


async def test_body_at_the_limit_is_accepted(aiohttp_client: Any, redis_url: str) -> None:
    settings = make_settings(redis_url, ingest={"max_body_bytes": 1000})
    client = await aiohttp_client(create_app(settings))
    body, headers, _ = signed(settings, "github", body=b"z" * 1000)
    assert (await post(client, "github", body, headers))[0] == 202


async def test_ip_not_allowed_is_403_before_the_signature(
    aiohttp_client: Any, redis_url: str
) -> None:
    sources = {"helloasso": {**SOURCES["helloasso"], "allowed_ips": ["51.138.206.200"]}}
    settings = make_settings(redis_url, sources=sources)
    client = await aiohttp_client(create_app(settings))
    # even a request with no signature at all gets 403, not 401
    assert await post(client, "helloasso", b"{}", {}) == (403, {"error": "ip_not_allowed"})


async def test_forwarded_for_is_believed_only_from_trusted_proxies(
    aiohttp_client: Any, redis_url: str
) -> None:
    sources = {"ip-allowlist": {**SOURCES["ip-allowlist"], "allowed_ips": ["51.138.206.200"]}}
    body = b'{"id":"a"}'
    untrusted = make_settings(redis_url, sources=sources)
    c1 = await aiohttp_client(create_app(untrusted))
    xff = {"X-Forwarded-For": "51.138.206.200"}
    assert (await post(c1, "ip-allowlist", body, xff))[0] == 403
    trusted = make_settings(redis_url, sources=sources, ingest={"trusted_proxies": ["127.0.0.1"]})
    c2 = await aiohttp_client(create_app(trusted))
    assert (await post(c2, "ip-allowlist", body, xff))[0] == 202
    # the client cannot forge an entry left of the one the proxy appended
    forged = {"X-Forwarded-For": "51.138.206.200, 203.0.113.9"}
    assert (await post(c2, "ip-allowlist", b'{"id":"b"}', forged))[0] == 403


async def test_forwarded_for_from_a_peer_that_is_not_a_trusted_proxy_is_ignored(
    aiohttp_client: Any, redis_url: str, redis_client: redis.Redis
) -> None:
    # Given proxies are trusted, but the peer (127.0.0.1) is not one of them
    sources = {"ip-allowlist": {**SOURCES["ip-allowlist"], "allowed_ips": ["51.138.206.200"]}}
    settings = make_settings(redis_url, sources=sources, ingest={"trusted_proxies": ["10.0.0.0/8"]})
    client = await aiohttp_client(create_app(settings))
    # When it claims to forward an allowed address, Then its claim is not believed
    xff = {"X-Forwarded-For": "51.138.206.200"}
    assert await post(client, "ip-allowlist", b'{"id":"a"}', xff) == (
        403,
        {"error": "ip_not_allowed"},
    )
    assert nothing_queued(redis_client)


async def test_a_claims_set_redis_refuses_leaves_no_job_and_no_claim(
    aiohttp_client: Any, settings: Settings, redis_client: redis.Redis
) -> None:
    # Given the set the event's claim goes to holds the wrong type (Redis refuses to read it)
    client = await aiohttp_client(create_app(settings))
    body, headers, _ = signed(settings, "moncash", n=8)
    event_id = json.loads(body)["id"]
    claim = JobSpec.from_settings(settings).claim_keys("moncash", event_id, time.time())
    redis_client.set(claim.keys[0], "not a set")
    # Then the answer is 503, with no job id on the queue, no job and no claim
    assert await post(client, "moncash", body, headers) == (503, {"error": "unavailable"})
    redis_client.delete(claim.keys[0])
    assert nothing_queued(redis_client)
    # And once the set is usable again the provider's retry is accepted, once
    assert (await post(client, "moncash", body, headers))[0] == 202
    assert (await post(client, "moncash", body, headers))[0] == 200


@contextlib.asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[int]:
    """The ingress served as ``hookline serve`` serves it (same server options); its port."""
    runner = web.AppRunner(create_app(settings), **SERVER_OPTIONS)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


@pytest.fixture
async def live_port(redis_url: str) -> AsyncIterator[int]:
    async with serving(make_settings(redis_url, ingest={"read_timeout_seconds": 1})) as port:
        yield port


async def test_declared_length_over_the_limit_is_413_at_once_without_the_body(
    redis_url: str,
) -> None:
    # Given a client that declares limit + 1 bytes and then sends nothing
    settings = make_settings(redis_url, ingest={"max_body_bytes": 1000, "read_timeout_seconds": 3})
    async with serving(settings) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            started = time.monotonic()
            writer.write(
                b"POST /webhooks/github HTTP/1.1\r\nHost: x\r\nContent-Length: 1001\r\n\r\n"
            )
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
            elapsed = time.monotonic() - started
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    # Then it is answered 413 by the declared size alone, not 408 after waiting for the body
    assert head.startswith(b"HTTP/1.1 413"), head
    assert elapsed < settings.ingest.read_timeout_seconds / 3, elapsed


async def test_trickled_body_is_dropped(live_port: int) -> None:
    port = live_port
    loop = asyncio.get_running_loop()

    def trickle() -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=8) as s:
            s.sendall(
                b"POST /webhooks/github HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123"
            )
            data = b""
            while True:
                try:
                    chunk = s.recv(4096)
                except TimeoutError:
                    return b"TIMEOUT " + data
                if not chunk:
                    return data
                data += chunk

    # Then it is answered 408 and the connection is closed (not held open by the client)
    answer = await loop.run_in_executor(None, trickle)
    assert answer.startswith(b"HTTP/1.1 408"), answer


async def test_health_ready_and_metrics(client: TestClient, settings: Settings) -> None:
    assert (await client.get("/healthz")).status == 200
    assert (await client.get("/readyz")).status == 200
    body, headers, _ = signed(settings, "github")
    await post(client, "github", body, headers)
    await post(client, "github", body, headers)
    await post(client, "github", body, {})
    text = await (await client.get("/metrics")).text()
    assert 'hookline_ingest_accepted_total{source="github"} 1.0' in text
    assert 'hookline_ingest_duplicates_total{source="github"} 1.0' in text
    assert 'hookline_ingest_rejected_total{reason="missing_signature",source="github"} 1.0' in text
    assert "hookline_ingest_enqueue_seconds_count 2.0" in text


async def test_logs_never_hold_secrets_or_signatures(
    client: TestClient, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    sent_signatures: list[str] = []
    for source in ALL:
        body, headers, _ = signed(settings, source)
        sensitive = settings.sources[source].scheme.sensitive()
        sent_signatures += [v for k, v in headers.items() if k.lower() in sensitive]
        await post(client, source, body, headers)
        forged = {k: (v[:-2] + "00" if k.lower() in sensitive else v) for k, v in headers.items()}
        await post(client, source, body, forged)
    text = caplog.text
    for value in SECRET_VALUES + [s for s in sent_signatures if len(s) > 8]:
        assert value not in text


def _hostile_variants(settings: Settings, source: str) -> list[tuple[str, bytes, dict[str, str]]]:
    """The same hostile inputs for every scheme: (case, body, headers)."""
    now = time.time()
    body, headers, _ = signed(settings, source)
    sensitive = [k for k in headers if k.lower() in settings.sources[source].scheme.sensitive()]
    out: list[tuple[str, bytes, dict[str, str]]] = [
        ("body changed after signing", body + b" ", headers),
        ("empty body, old signature", b"", headers),
        ("non-UTF-8 body, old signature", b"\xff\xfe\x00garbage", headers),
        ("stale", *signed(settings, source, now=now - 3600)[:2]),
        ("future", *signed(settings, source, now=now + 3600)[:2]),
    ]
    for name in sensitive:
        value = headers[name]
        out += [
            (f"{name} missing", body, {k: v for k, v in headers.items() if k != name}),
            (f"{name} truncated", body, {**headers, name: value[: len(value) // 2]}),
            (
                f"{name} forged",
                body,
                {**headers, name: value[:-2] + ("00" if value[-2:] != "00" else "11")},
            ),
            (f"{name} not hex/base64", body, {**headers, name: "zz!!" * 16}),
            (f"{name} upper-cased", body, {**headers, name: value.upper()}),
            (f"{name} empty", body, {**headers, name: ""}),
            (f"{name} 8 KB", body, {**headers, name: "a" * 8000}),
        ]
    return out


@pytest.mark.parametrize("source", ALL)
async def test_hostile_inputs_are_4xx_never_5xx(
    client: TestClient, settings: Settings, redis_client: redis.Redis, source: str
) -> None:
    for case, body, headers in _hostile_variants(settings, source):
        resp = await client.post(f"/webhooks/{source}", data=body, headers=headers)
        text = await resp.text()
        # authentic-but-odd inputs may still be accepted (the ip-allowlist scheme has no
        # signature; upper-case hex is valid hex); everything else must be a clear 4xx
        assert resp.status < 500, (case, resp.status, text)
        if resp.status >= 400:
            assert "error" in json.loads(text), (case, text)


async def test_repeated_signature_header_is_401(client: TestClient, settings: Settings) -> None:
    from multidict import CIMultiDict

    body, headers, _ = signed(settings, "github")
    doubled = CIMultiDict(headers)
    doubled.add("X-Hub-Signature-256", headers["X-Hub-Signature-256"])
    resp = await client.post("/webhooks/github", data=body, headers=doubled)
    assert (resp.status, await resp.json()) == (401, {"error": "invalid_signature"})


async def test_oversized_body_for_every_scheme_is_413(aiohttp_client: Any, redis_url: str) -> None:
    settings = make_settings(redis_url, ingest={"max_body_bytes": 2048})
    client = await aiohttp_client(create_app(settings))
    for source in ALL:
        body, headers, _ = signed(settings, source)
        big = body + b" " * 4096
        status, answer = await post(client, source, big, headers)
        assert (status, answer) == (413, {"error": "body_too_large"}), source


async def test_idle_connections_do_not_stop_others(live_port: int, redis_url: str) -> None:
    settings = make_settings(redis_url)
    body, headers, _ = signed(settings, "stripe")
    loop = asyncio.get_running_loop()

    def scenario() -> int:
        # Given 1,000 connections that connect and then say nothing
        idle = [socket.create_connection(("127.0.0.1", live_port), timeout=10) for _ in range(1000)]
        try:
            # When an authentic event arrives, Then it is answered as usual
            req = urllib.request.Request(
                f"http://127.0.0.1:{live_port}/webhooks/stripe", data=body, headers=headers
            )
            with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310
                return int(resp.status)
        finally:
            for s in idle:
                s.close()

    # the server runs on this loop: the clients run in a thread beside it
    assert await loop.run_in_executor(None, scenario) == 202


async def test_connections_closed_by_redis_are_retried_not_503(
    aiohttp_client: Any, redis_url: str, redis_client: redis.Redis
) -> None:
    # Given an ingress whose pooled connections Redis has closed (as after a Redis restart)
    settings = make_settings(redis_url)
    client = await aiohttp_client(create_app(settings))
    first = signed(settings, "stripe", n=1)
    assert (await post(client, "stripe", *first[:2]))[0] == 202
    db = redis_client.connection_pool.connection_kwargs.get("db", 0)
    for conn in redis_client.client_list():
        if conn.get("name") == "hookline-ingress" and int(conn.get("db", -1)) == db:
            redis_client.client_kill_filter(_id=conn["id"])
    # When the next event arrives, Then it is accepted, not refused with 503
    second = signed(settings, "stripe", n=2)
    assert (await post(client, "stripe", *second[:2]))[0] == 202
