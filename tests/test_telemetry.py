"""Traces ([telemetry] traces): one trace per event from the HTTP request to the commit, retries
in it, an incoming ``traceparent`` honoured; nothing at all while off. The ingress and a worker
run in this process with the spans collected in memory (OpenTelemetry's own exporter)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

pytest.importorskip("opentelemetry.sdk", reason="the otel extra is part of .[dev]")

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from ingest.app import create_app
from shared import keys, telemetry
from shared.config import Settings
from shared.rqcompat import JobSerializer
from tests.helpers import make_settings, signed
from tests.processes import ROOT, env_for
from tests.test_ingest import queued_jobs
from tests.test_worker import TEST_SOURCES, run_worker
from workers import runtime

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN = "00f067aa0ba902b7"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry.install(telemetry.Tracing(provider))
    yield exporter
    telemetry.install(None)
    provider.shutdown()


@pytest.fixture
def settings(redis_url: str, sqlite_url: str, tmp_path: Path, monkeypatch: Any) -> Settings:
    monkeypatch.setenv("HOOKLINE_TEST_STATE", str(tmp_path))
    return make_settings(
        redis_url,
        sqlite_url,
        sources=TEST_SOURCES,
        worker={
            "handlers": ["tests.handlers_for_tests"],
            "max_attempts": 3,
            "backoff_seconds": [0],
        },
        telemetry={"traces": True},
    )


def _named(spans: list[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def _trace(span: ReadableSpan) -> str:
    return f"{span.context.trace_id:032x}"


def _parent_of(span: ReadableSpan, spans: list[ReadableSpan]) -> ReadableSpan:
    assert span.parent is not None, span.name
    [parent] = [s for s in spans if s.context.span_id == span.parent.span_id]
    return parent


async def test_one_trace_from_the_request_to_the_commit_with_the_retry_in_it(
    aiohttp_client: Any,
    settings: Settings,
    redis_client: redis.Redis,
    spans: InMemorySpanExporter,
    tmp_path: Path,
) -> None:
    # Given a handler that fails the first time for this event
    (tmp_path / "fail_f-1").write_text("1")
    client = await aiohttp_client(create_app(settings))
    body, headers, _ = signed(settings, "flaky", body=b'{"id": "f-1", "type": "x"}')
    # When it is posted and a worker drains the queue (the retry due at once)
    resp = await client.post("/webhooks/flaky", data=body, headers=headers)
    assert resp.status == 202
    runtime.configure(settings)
    run_worker(redis_client, settings)
    # Then every span is in the request's one trace
    done = list(spans.get_finished_spans())
    [server] = _named(done, "POST /webhooks/{source}")
    assert server.kind == SpanKind.SERVER and server.parent is None
    assert server.attributes is not None and server.attributes["http.response.status_code"] == 202
    assert {_trace(s) for s in done} == {_trace(server)}
    # the signature check and the producer (claim and enqueue) are the request's children
    [verify] = _named(done, "verify signature")
    [producer] = _named(done, "send hookline")
    assert _parent_of(verify, done) is server and _parent_of(producer, done) is server
    assert producer.kind == SpanKind.PRODUCER
    # two attempts, each a consumer span under the producer: the first failed, the second
    # committed
    consumers = _named(done, "process hookline")
    assert [c.attributes["hookline.attempt"] for c in consumers if c.attributes] == [1, 2]
    assert all(_parent_of(c, done) is producer for c in consumers)
    assert all(c.kind == SpanKind.CONSUMER for c in consumers)
    assert not consumers[0].status.is_ok and consumers[1].status.is_ok
    [commit] = _named(done, "commit")
    assert _parent_of(commit, done) is consumers[1]
    handles = _named(done, "handle")
    assert {_parent_of(h, done).context.span_id for h in handles} == {
        c.context.span_id for c in consumers
    }


async def test_a_batch_gives_each_event_its_own_trace(
    aiohttp_client: Any,
    settings: Settings,
    redis_client: redis.Redis,
    spans: InMemorySpanExporter,
) -> None:
    # Given two events accepted by the ingress
    client = await aiohttp_client(create_app(settings))
    for n in (1, 2):
        body, headers, _ = signed(settings, "moncash", n=n)
        assert (await client.post("/webhooks/moncash", data=body, headers=headers)).status == 202
    # When one worker applies them in one batch (one transaction)
    runtime.configure(settings)
    run_worker(redis_client, settings)
    # Then each event's consumer span and commit are in that event's trace, not the other's
    done = list(spans.get_finished_spans())
    servers = _named(done, "POST /webhooks/{source}")
    consumers = _named(done, "process hookline")
    assert len(servers) == 2 and len(consumers) == 2
    assert {_trace(c) for c in consumers} == {_trace(s) for s in servers}
    assert all(c.attributes and c.attributes["hookline.batch_size"] == 2 for c in consumers)
    for commit in _named(done, "commit"):
        assert _parent_of(commit, done) in consumers


async def test_a_batch_that_falls_back_blames_only_the_failing_event(
    aiohttp_client: Any,
    settings: Settings,
    redis_client: redis.Redis,
    spans: InMemorySpanExporter,
    tmp_path: Path,
) -> None:
    # Given a good event and one whose handler fails (once in the batch, once alone)
    (tmp_path / "fail_f-2").write_text("2")
    client = await aiohttp_client(create_app(settings))
    good, good_headers, _ = signed(settings, "moncash", n=5)
    bad, bad_headers, _ = signed(settings, "flaky", body=b'{"id": "f-2", "type": "x"}')
    assert (await client.post("/webhooks/moncash", data=good, headers=good_headers)).status == 202
    assert (await client.post("/webhooks/flaky", data=bad, headers=bad_headers)).status == 202
    # When a worker takes both in one batch
    runtime.configure(settings)
    run_worker(redis_client, settings)
    # Then the batch's spans say it was rolled back, without an error; the failing event's
    # own attempt carries the error, and the good event's own run succeeded
    consumers = _named(list(spans.get_finished_spans()), "process hookline")
    batch = [c for c in consumers if c.attributes and c.attributes["hookline.batch_size"] == 2]
    assert len(batch) == 2 and all(c.status.is_unset for c in batch)
    assert all(e.name == "batch rolled back, applied one by one" for c in batch for e in c.events)
    alone = [c for c in consumers if c.attributes and c.attributes["hookline.batch_size"] == 1]
    by_source = {(c.attributes or {})["hookline.source"]: c for c in alone if not c.status.is_ok}
    assert list(by_source) == ["flaky"]
    assert any(e.name == "exception" for e in by_source["flaky"].events)


async def test_an_incoming_traceparent_is_honoured_and_carried_in_the_job(
    aiohttp_client: Any,
    settings: Settings,
    redis_client: redis.Redis,
    spans: InMemorySpanExporter,
) -> None:
    # Given a caller that is itself traced
    client = await aiohttp_client(create_app(settings))
    body, headers, _ = signed(settings, "moncash", n=3)
    headers["traceparent"] = f"00-{TRACE_ID}-{PARENT_SPAN}-01"
    # When it posts
    assert (await client.post("/webhooks/moncash", data=body, headers=headers)).status == 202
    # Then the request's span continues the caller's trace
    [server] = _named(list(spans.get_finished_spans()), "POST /webhooks/{source}")
    assert _trace(server) == TRACE_ID
    assert server.parent is not None and f"{server.parent.span_id:016x}" == PARENT_SPAN
    # and the queued job carries the producer span's context in that trace
    [producer] = _named(list(spans.get_finished_spans()), "send hookline")
    [job] = queued_jobs(redis_client)
    envelope = job.args[0]
    assert envelope["trace"] == f"00-{TRACE_ID}-{producer.context.span_id:016x}-01"


async def test_rejections_are_traced_with_their_answer(
    aiohttp_client: Any, settings: Settings, spans: InMemorySpanExporter
) -> None:
    client = await aiohttp_client(create_app(settings))
    body, headers, _ = signed(settings, "moncash", n=4)
    resp = await client.post("/webhooks/moncash", data=body + b" ", headers=headers)
    assert resp.status == 401
    done = list(spans.get_finished_spans())
    [server] = _named(done, "POST /webhooks/{source}")
    assert server.attributes is not None and server.attributes["http.response.status_code"] == 401
    [verify] = _named(done, "verify signature")
    assert not verify.status.is_ok  # the refusal is recorded on the check that made it
    assert _named(done, "send hookline") == []


def test_off_by_default_nothing_is_imported_and_the_job_carries_nothing(
    redis_url: str, tmp_path: Path
) -> None:
    # Given the default configuration (traces off), in a fresh interpreter
    script = f"""
import asyncio, json, sys
from aiohttp.test_utils import TestClient, TestServer
from ingest.app import create_app
from tests.helpers import make_settings, signed
from workers import runtime

async def main():
    settings = make_settings({redis_url!r}, "sqlite://")
    runtime.configure(settings)
    async with TestClient(TestServer(create_app(settings))) as client:
        body, headers, _ = signed(settings, "moncash", n=9)
        resp = await client.post("/webhooks/moncash", data=body, headers=headers)
        tracing = [m for m in ("opentelemetry.sdk.trace", "shared.telemetry") if m in sys.modules]
        from shared import telemetry
        print(json.dumps([resp.status, tracing, telemetry.current() is None]))

asyncio.run(main())
"""
    out = subprocess.run(
        [sys.executable, "-c", script],
        env=env_for(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    status, imported, off = json.loads(out.strip().splitlines()[-1])
    # Then the event is accepted, OpenTelemetry's trace SDK was never imported (redis-py
    # imports parts of OpenTelemetry's API for its own metrics when it is installed), no
    # tracing was set up, and the job has no trace
    assert status == 202
    assert imported == ["shared.telemetry"] and off
    client = redis.Redis.from_url(redis_url)
    try:
        [job_id] = client.lrange(keys.queue_key("hookline"), 0, -1)
        data = client.hget(keys.job_key(job_id.decode()), "data")
    finally:
        client.close()
    assert data is not None
    assert "trace" not in JobSerializer.loads(data)[2][0]


def test_exporters_are_chosen_by_otel_traces_exporter() -> None:
    assert telemetry.exporter_names({}) == ["otlp_proto_http"]
    assert telemetry.exporter_names({"OTEL_TRACES_EXPORTER": "console"}) == ["console"]
    assert telemetry.exporter_names({"OTEL_TRACES_EXPORTER": "none"}) == []
    grpc = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
    assert telemetry.exporter_names(grpc) == ["otlp_proto_grpc"]
