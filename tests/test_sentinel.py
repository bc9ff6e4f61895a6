"""Losing the Redis primary loses nothing acknowledged, on a real topology (a primary, a replica,
three Sentinels: tests/redis_topology.py): Sentinel URLs, acknowledgements that wait for a
replica, and a failover under a running ingress and worker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from rq import Worker
from sqlalchemy import select

from hookline.cli import main
from ingest.app import create_app
from shared.config import load_settings
from shared.db import make_engine, webhook_events
from shared.enqueue import JobSpec, is_claimed
from shared.migrate import upgrade
from tests.helpers import SOURCES, make_settings, signed
from tests.processes import env_for, free_port, hookline, http_ok, processes, wait_until
from tests.redis_topology import Topology, restart_as_replica, sentinel_topology

pytestmark = pytest.mark.slow


@pytest.fixture
def topology(tmp_path: Path) -> Iterator[Topology]:
    with sentinel_topology(tmp_path / "redis") as topo:
        yield topo


def _config(path: Path, redis_url: str, database_url: str, ingest: str = "") -> Path:
    path.write_text(
        f"""
redis_url = "{redis_url}"
database_url = "{database_url}"

[ingest]
{ingest}

[worker]
backoff_seconds = [1]

[sources.moncash]
scheme = "moncash"
secrets = {json.dumps(SOURCES["moncash"]["secrets"])}
"""
    )
    return path


def test_bad_sentinel_urls_stop_every_command_with_one_line(
    tmp_path: Path, topology: Topology
) -> None:
    db = f"sqlite:///{tmp_path / 'x.db'}"
    upgrade(db)
    runner = CliRunner()

    def status(url: str) -> Any:
        config = _config(tmp_path / "hookline.toml", url, db)
        return runner.invoke(main, ["status", "--config", str(config)])

    # a malformed URL is a configuration error
    bad = status("redis+sentinel://127.0.0.1/svc")
    assert bad.exit_code == 2 and "host:port" in bad.output
    # a service no sentinel knows is a configuration error too (a typo)
    hosts = ",".join(f"127.0.0.1:{s.port}" for s in topology.sentinels)
    unknown = status(f"redis+sentinel://{hosts}/no-such-service")
    assert unknown.exit_code == 2 and "no sentinel knows the service" in unknown.output
    # no sentinel reachable is the service-unreachable status
    nobody = status(f"redis+sentinel://127.0.0.1:{free_port()}/svc")
    assert nobody.exit_code == 1 and "no sentinel reachable" in nobody.output
    # and the right one works
    assert status(topology.url).exit_code == 0


async def test_acknowledged_means_held_by_a_replica(
    aiohttp_client: Any, topology: Topology
) -> None:
    settings = make_settings(
        topology.url,
        sources={"moncash": SOURCES["moncash"]},
        ingest={"ack_replicas": 1, "ack_replicas_timeout_ms": 200},
    )
    client = await aiohttp_client(create_app(settings))
    body, headers, _ = signed(settings, "moncash", n=1)
    # Given a replica in sync: the answer is 202, and the replica holds the claim already
    resp = await client.post("/webhooks/moncash", data=body, headers=headers)
    assert resp.status == 202
    event_id = (await resp.json())["event_id"]
    spec = JobSpec.from_settings(settings)
    assert topology.replica.ask(lambda c: is_claimed(c, spec, "moncash", event_id))
    # When the replica stops answering
    assert topology.replica.proc is not None
    os.killpg(topology.replica.proc.pid, signal.SIGSTOP)
    try:
        body2, headers2, _ = signed(settings, "moncash", n=2)
        started = time.monotonic()
        resp = await client.post("/webhooks/moncash", data=body2, headers=headers2)
        took = time.monotonic() - started
        # Then the event is not acknowledged: 503 with Retry-After, well within a second
        assert resp.status == 503 and resp.headers["Retry-After"]
        assert took < 1.0
    finally:
        os.killpg(topology.replica.proc.pid, signal.SIGCONT)
    # And the provider's retry finds the claim: a duplicate, the event is safe
    topology.wait_replicated()
    resp = await client.post("/webhooks/moncash", data=body2, headers=headers2)
    assert resp.status == 200 and (await resp.json())["status"] == "duplicate"


def test_ack_fsync_on_a_redis_without_waitaof_is_a_startup_error(
    tmp_path: Path, redis_url: str
) -> None:
    config = _config(
        tmp_path / "hookline.toml", redis_url, f"sqlite:///{tmp_path / 'x.db'}", "ack_fsync = true"
    )
    env = env_for(HOOKLINE_CONFIG=str(config))
    result = subprocess.run(
        hookline("serve", "--port", str(free_port())),
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    version = redis_version(redis_url)
    if version >= (7, 2):
        pytest.skip(f"this Redis ({version}) has WAITAOF")
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert "ack_fsync needs Redis 7.2" in line and "this Redis is" in line


def redis_version(url: str) -> tuple[int, ...]:
    import redis

    client = redis.Redis.from_url(url)
    try:
        return tuple(int(x) for x in str(client.info("server")["redis_version"]).split(".")[:2])
    finally:
        client.close()


def _post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, float]:
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")  # noqa: S310
    started = time.monotonic()
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:  # noqa: S310
            return resp.status, time.monotonic() - started
    except urllib.error.HTTPError as err:
        return err.code, time.monotonic() - started


def test_a_failover_under_load_loses_nothing_acknowledged(
    tmp_path: Path, topology: Topology, postgres_url: str
) -> None:
    config = _config(
        tmp_path / "hookline.toml",
        topology.url,
        postgres_url,
        "ack_replicas = 1\nack_replicas_timeout_ms = 300",
    )
    settings = load_settings(config)
    env = env_for(HOOKLINE_CONFIG=str(config))
    port = free_port()
    base = f"http://127.0.0.1:{port}/webhooks/moncash"
    acked: set[str] = set()
    answers: list[tuple[float, int, float]] = []
    with processes() as procs:
        procs.start(
            hookline("serve", "--host", "127.0.0.1", "--port", str(port)), env, tmp_path / "s.log"
        )
        procs.start(hookline("worker"), env, tmp_path / "w.log")
        wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/readyz"), 20, "the ingress")
        # the worker registered before the primary dies (one that starts while no primary is
        # known exits at once, saying so: the failover must meet a running worker)
        wait_until(
            lambda: topology.primary.ask(lambda c: Worker.count(connection=c)) >= 1,
            30,
            "the worker registered",
        )
        # Given a steady stream of events, each retried until acknowledged as a provider does
        killed_at: float | None = None
        old = topology.primary
        n = 0
        deadline = time.monotonic() + 25
        while time.monotonic() < deadline:
            n += 1
            body, headers, _ = signed(settings, "moncash", n=n)
            event_id = json.loads(body)["id"]
            while time.monotonic() < deadline + 60:
                status, took = _post(base, body, headers)
                answers.append((time.monotonic(), status, took))
                if status in (200, 202):
                    acked.add(event_id)
                    break
                time.sleep(0.2)
                # the old primary comes back (as a replica of the new one) 5 s after its death
                if killed_at and not old.alive() and time.monotonic() - killed_at > 5:
                    restart_as_replica(topology, old)
            # When the primary is killed mid-stream
            if n == 40:
                old.kill()
                killed_at = time.monotonic()
        assert killed_at is not None
        # Then the sentinels promote the replica; once it has a replica again the ingress
        # answers 202 from it without a restart (503 meanwhile: nothing acknowledged that is
        # held by one Redis only), and every acknowledged event is applied once
        engine = make_engine(postgres_url)

        def applied() -> set[str]:
            with engine.connect() as conn:
                return set(conn.execute(select(webhook_events.c.event_id)).scalars())

        wait_until(lambda: applied() >= acked, 90, "every acknowledged event applied")
    with engine.connect() as conn:
        rows = conn.execute(select(webhook_events.c.event_id)).scalars().all()
    engine.dispose()
    assert len(rows) == len(set(rows))
    after = [(t, s, d) for t, s, d in answers if t >= killed_at]
    first_202 = next(t for t, s, _ in after if s == 202) - killed_at
    unavailable = [d for _, s, d in after if s == 503]
    print(
        f"\nfailover: first 202 on the new primary {first_202:.1f} s after kill -9;"
        f" {len(unavailable)} answers 503 meanwhile, slowest {max(unavailable, default=0):.2f} s;"
        f" {len(acked)} acknowledged, all applied once"
    )
    assert topology.current_primary_port() == topology.replica.port
    assert all(d < 1.5 for d in unavailable)
