"""A full Redis answers 503, drains by itself, and never evicts what was acknowledged.

A real redis-server of the test's own at a small ``maxmemory`` (``noeviction``) is filled
through a real ``hookline serve`` with no worker running, until the ingress refuses; then
workers start, apply every acknowledged event once, and the ingress accepts again. With
``shed_at_memory_percent = 0`` Redis itself is filled to its limit (the workers' first writes
must free memory); with the default the ingress stops a little before. A Redis whose
``maxmemory-policy`` may evict any key stops ``serve``, ``worker`` and ``console`` at once.
"""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import select

from hookline.dev import redis_server_binary
from shared.db import make_engine, webhook_events
from tests.helpers import SOURCES, make_settings, signed
from tests.processes import (
    Procs,
    env_for,
    free_port,
    hookline,
    http_ok,
    processes,
    start_in_group,
    stop_groups,
    wait_until,
)

pytestmark = pytest.mark.slow

#: small enough to fill in a second or two (~4 KB a queued event), large enough for Redis's
#: own ~1 MB and the workers' bookkeeping
MAXMEMORY = "6mb"


@pytest.fixture
def small_redis(tmp_path: Path) -> Iterator[tuple[str, redis.Redis]]:
    port = free_port()
    argv = [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    argv += ["--appendonly", "no", "--maxmemory", MAXMEMORY, "--maxmemory-policy", "noeviction"]
    argv += ["--dir", str(tmp_path)]
    proc = start_in_group(argv, env_for(), tmp_path / "redis.log")
    client = redis.Redis(port=port, socket_timeout=5)
    try:
        wait_until(client.ping, 20, "redis-server answering")
        yield f"redis://127.0.0.1:{port}/0", client
    finally:
        client.close()
        stop_groups([proc])


def _config(tmp_path: Path, redis_url: str, shed: int) -> Path:
    config = tmp_path / "hookline.toml"
    config.write_text(
        f"""
redis_url = "{redis_url}"
database_url = "sqlite:///{tmp_path / "full.db"}"

[ingest]
shed_at_memory_percent = {shed}

[archive]
retention_days = 0

[sources.moncash]
scheme = "moncash"
secrets = {json.dumps(SOURCES["moncash"]["secrets"])}
"""
    )
    return config


def _post(port: int, settings: Any, n: int) -> tuple[int, str]:
    body, headers, _ = signed(settings, "moncash", n=n)
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/webhooks/moncash", data=body, headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310
            status = resp.status
    except urllib.error.HTTPError as err:
        status = err.code
    return status, json.loads(body)["id"]


def _serve(procs: Procs, config: Path, tmp_path: Path) -> int:
    port = free_port()
    env = env_for(HOOKLINE_CONFIG=str(config))
    procs.start(hookline("serve", "--port", str(port)), env, tmp_path / "serve.log")
    wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/readyz"), 30, "the ingress")
    return port


@pytest.mark.parametrize("shed", [95, 0])
def test_a_full_redis_answers_503_drains_by_itself_and_accepts_again(
    tmp_path: Path, small_redis: tuple[str, redis.Redis], shed: int
) -> None:
    url, client = small_redis
    config = _config(tmp_path, url, shed)
    settings = make_settings(url, sources={"moncash": SOURCES["moncash"]})
    env = env_for(HOOKLINE_CONFIG=str(config))
    assert subprocess.run(hookline("db", "upgrade"), env=env, check=False).returncode == 0
    with processes() as procs:
        port = _serve(procs, config, tmp_path)
        # Given events sent with no worker running until the ingress refuses them
        accepted: list[str] = []
        refused = 0
        n = 0
        while refused < 20 and n < 20_000:
            n += 1
            status, event_id = _post(port, settings, n)
            if status == 202:
                accepted.append(event_id)
            else:
                assert status == 503, status
                refused += 1
        memory = client.info("memory")
        used, maximum = int(memory["used_memory"]), int(memory["maxmemory"])
        # Then Redis held them all without evicting any, and stopped short of full when shedding
        assert refused == 20 and len(accepted) > 100
        assert client.info("stats")["evicted_keys"] == 0
        assert client.llen("rq:queue:hookline") == len(accepted)
        if shed:
            assert used < maximum
        # When the workers start on the full Redis
        for i in range(2):
            procs.start(hookline("worker", "--burst"), env, tmp_path / f"worker-{i}.log")
        engine = make_engine(f"sqlite:///{tmp_path / 'full.db'}")

        def applied() -> list[str]:
            with engine.connect() as conn:
                return [r.event_id for r in conn.execute(select(webhook_events.c.event_id))]

        wait_until(
            lambda: len(applied()) >= len(accepted),
            120,
            f"the {len(accepted)} accepted events applied (applied: {len(applied())})",
        )
        # Then every acknowledged event is applied, once, and nothing else
        rows = applied()
        assert sorted(rows) == sorted(accepted)
        # And once the workers have freed the room, the ingress accepts new events again
        wait_until(lambda: _post(port, settings, n + 1)[0] == 202, 30, "a new event accepted")
        assert client.info("stats")["evicted_keys"] == 0


@pytest.mark.parametrize("policy", ["allkeys-lru", "allkeys-random"])
def test_a_redis_that_may_evict_acknowledged_events_stops_every_process(
    tmp_path: Path, small_redis: tuple[str, redis.Redis], policy: str
) -> None:
    url, client = small_redis
    client.config_set("maxmemory-policy", policy)
    config = _config(tmp_path, url, 95)
    config.write_text(config.read_text() + '\n[console]\ntoken = "a-console-token-of-16+"\n')
    env = env_for(HOOKLINE_CONFIG=str(config))
    for command in (["serve", "--port", str(free_port())], ["worker", "--burst"], ["console"]):
        done = subprocess.run(
            hookline(*command), env=env, capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 2, (command, done.stderr)
        [line] = done.stderr.strip().splitlines()
        assert f"maxmemory-policy is {policy}" in line and "noeviction" in line


def test_a_volatile_policy_is_a_warning(
    tmp_path: Path, small_redis: tuple[str, redis.Redis]
) -> None:
    url, client = small_redis
    client.config_set("maxmemory-policy", "volatile-lru")
    config = _config(tmp_path, url, 95)
    env = env_for(HOOKLINE_CONFIG=str(config))
    assert subprocess.run(hookline("db", "upgrade"), env=env, check=False).returncode == 0
    done = subprocess.run(
        hookline("worker", "--burst"), env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "hookline: warning: Redis maxmemory-policy is volatile-lru" in done.stderr
