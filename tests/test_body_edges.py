"""Edges of the bounded body reader (ingest/body.py) as a provider and an operator see them:
a chunked body over the limit that arrives in pieces, a body still arriving when the process
stops, and nothing kept once a request is answered."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import time
from typing import Any

import pytest
import redis
from aiohttp import StreamReader, web
from rq import Queue

from ingest.app import SERVER_OPTIONS, create_app
from shared import keys
from shared.envelope import Envelope
from shared.rqcompat import JobSerializer
from tests.helpers import make_settings, signed
from tests.test_ingest import in_pieces


def nothing_queued(redis_client: redis.Redis) -> bool:
    """No job id on the queue, no job hash and no claim."""
    return (
        redis_client.llen(keys.queue_key("hookline")) == 0
        and list(redis_client.scan_iter(keys.job_key("*"))) == []
        and list(redis_client.scan_iter(keys.CLAIM + "*")) == []
    )


async def test_chunked_body_over_the_limit_arriving_in_pieces_each_under_it_is_413(
    aiohttp_client: Any, redis_url: str, redis_client: redis.Redis
) -> None:
    # Given a limit of 1000 bytes and an authentic chunked body of 1200 bytes, sent in three
    # pieces of 400 with a pause between them (each piece alone is under the limit)
    settings = make_settings(redis_url, ingest={"max_body_bytes": 1000})
    client = await aiohttp_client(create_app(settings))
    body, headers, _ = signed(settings, "github", body=b"y" * 1200)

    resp = await client.post(
        "/webhooks/github", data=in_pieces(body, 400, pause=0.05), headers=headers
    )
    # Then the size counted is the whole body's, not the last piece's: 413, nothing queued
    assert resp.request_info.headers.get("Transfer-Encoding") == "chunked"
    assert (resp.status, await resp.json()) == (413, {"error": "body_too_large"})
    assert nothing_queued(redis_client)


async def test_chunked_body_arriving_in_pieces_is_queued_exactly_as_sent(
    aiohttp_client: Any, redis_url: str, redis_client: redis.Redis
) -> None:
    # Given an authentic chunked body of 900 bytes under a limit of 1000, sent in three pieces
    # with a pause between them (so the ingress reads it in several reads)
    settings = make_settings(redis_url, ingest={"max_body_bytes": 1000})
    client = await aiohttp_client(create_app(settings))
    body, headers, _ = signed(settings, "github", body=b'{"id":"p"}' + b" " * 890)

    resp = await client.post(
        "/webhooks/github", data=in_pieces(body, 300, pause=0.05), headers=headers
    )
    # Then it is accepted, and the body queued is the one sent, byte for byte
    assert resp.request_info.headers.get("Transfer-Encoding") == "chunked"
    assert resp.status == 202, await resp.text()
    jobs = Queue("hookline", connection=redis_client, serializer=JobSerializer).get_jobs()
    assert [Envelope.from_dict(job.args[0]).body for job in jobs] == [body]


async def exchange(port: int, head: str, body: bytes = b"") -> bytes:
    """One request on its own connection: the whole answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head.encode() + b"Connection: close\r\n\r\n" + body)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), timeout=10)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


async def received_one(port: int) -> None:
    """Wait until the ingress's metrics show the request received (it is then being read)."""
    deadline = time.monotonic() + 10
    seen = b'hookline_ingest_received_total{source="github"} 1.0'
    while seen not in await exchange(port, "GET /metrics HTTP/1.1\r\nHost: x\r\n"):
        assert time.monotonic() < deadline, "the request never reached the handler"
        await asyncio.sleep(0.02)


async def test_body_still_arriving_when_the_process_stops_is_answered_503_at_once(
    redis_url: str, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="hookline.ingest")
    # Given an ingress that would wait 2 s for a body, and a client that declared 100 bytes
    # and sent 4
    settings = make_settings(redis_url, ingest={"read_timeout_seconds": 2})
    runner = web.AppRunner(create_app(settings), **SERVER_OPTIONS)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    stopping: asyncio.Task[None] | None = None
    try:
        writer.write(
            b"POST /webhooks/github HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123"
        )
        await writer.drain()
        await received_one(port)  # the handler is now waiting for the rest of the body
        # When the process stops (as on SIGTERM)
        started = time.monotonic()
        stopping = asyncio.create_task(runner.cleanup())
        answer = await asyncio.wait_for(reader.read(), timeout=10)  # until the server closes
        elapsed = time.monotonic() - started
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        if stopping is None:
            await runner.cleanup()
        else:
            await stopping
    # Then it is answered 503 with Retry-After and the connection closed, well before the
    # read deadline (a 408), and nothing is queued: the provider will retry
    head, _, payload = answer.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "HTTP/1.1 503 Service Unavailable", answer
    fields = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    assert fields["retry-after"] == "5"
    assert fields.get("connection", "").lower() == "close"
    assert json.loads(payload) == {"error": "unavailable"}
    assert elapsed < settings.ingest.read_timeout_seconds, elapsed
    assert "rejected github 503: unavailable" in caplog.messages
    assert nothing_queued(redis_client)


def live_streams() -> int:
    """Body streams alive in this process (the requests are sent by hand: no client's)."""
    gc.collect()
    return sum(isinstance(o, StreamReader) for o in gc.get_objects())


async def test_answered_requests_leave_nothing_behind_in_the_ingress(
    aiohttp_server: Any, redis_url: str
) -> None:
    # Given an ingress that has answered a request
    settings = make_settings(redis_url, ingest={"max_body_bytes": 1000})
    server = await aiohttp_server(create_app(settings))
    body, headers, _ = signed(settings, "github")
    fields = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    signed_head = f"POST /webhooks/github HTTP/1.1\r\nHost: x\r\n{fields}"
    plain_head = "POST /webhooks/github HTTP/1.1\r\nHost: x\r\n"
    sized = f"Content-Length: {len(body)}\r\n"
    oversized = plain_head + "Content-Length: 1001\r\n"
    assert status(await exchange(server.port, signed_head + sized, body)) == 202
    before = live_streams()
    # When it answers 30 more (duplicates, rejected, oversized)
    for _ in range(10):
        assert status(await exchange(server.port, signed_head + sized, body)) == 200
        assert status(await exchange(server.port, plain_head + sized, body)) == 401
        assert status(await exchange(server.port, oversized, b"x" * 1001)) == 413
    # Then no request's body is kept once answered: memory does not grow with each request
    assert live_streams() - before < 5
