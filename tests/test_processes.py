"""hookline's real processes: ``serve``, ``worker`` and ``dev`` as operators run them, with
faults injected between steps (a worker killed with ``kill -9`` mid-job, Redis going away
while a job runs). Every process started here is stopped when its test ends."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import func, select

from hookline.dev import redis_server_binary
from shared.config import load_settings
from shared.db import dead_letters, make_engine, payments, webhook_events
from shared.migrate import upgrade
from tests.helpers import SOURCES, signed
from tests.processes import (
    env_for,
    free_port,
    hookline,
    http_ok,
    processes,
    wait_until,
)
from tests.test_worker import deliver

pytestmark = pytest.mark.slow


def config_text(redis_url: str, database_url: str, worker: str = "") -> str:
    return f"""
redis_url = "{redis_url}"
database_url = "{database_url}"

[worker]
handlers = ["tests.handlers_for_tests"]
{worker}

[sources.moncash]
scheme = "moncash"
secrets = {json.dumps(SOURCES["moncash"]["secrets"])}

[sources.nowallet]
scheme = "nowallet"
secrets = {json.dumps(SOURCES["nowallet"]["secrets"])}
unique_key = "{SOURCES["nowallet"]["unique_key"]}"

[sources.slow]
scheme = "hmac"
secrets = ["slow-secret"]
event_id = "json:id"
event_type = "json:type"
"""


def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")  # noqa: S310
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def count(engine: Any, table: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def test_serve_then_burst_worker_applies_every_acknowledged_event_once(
    tmp_path: Path, redis_url: str, postgres_url: str
) -> None:
    # Given hookline serve on real Redis and PostgreSQL
    config = tmp_path / "hookline.toml"
    config.write_text(config_text(redis_url, postgres_url))
    settings = load_settings(config)
    env = env_for(HOOKLINE_CONFIG=str(config))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with processes() as procs:
        assert subprocess.run(hookline("db", "upgrade"), env=env, check=False).returncode == 0
        procs.start(
            hookline("serve", "--host", "127.0.0.1", "--port", str(port)),
            env,
            tmp_path / "serve.log",
        )
        wait_until(lambda: http_ok(f"{base}/readyz"), 20, "the ingress being ready")
        # When N distinct events arrive, with redeliveries, simultaneous duplicates and
        # status updates out of order
        rng = random.Random(7)
        deliveries: list[tuple[str, bytes, dict[str, str]]] = []
        for i in range(60):
            source = "moncash" if i % 3 else "nowallet"
            body, headers, _ = signed(settings, source, n=i)
            deliveries.append((source, body, headers))
        redeliveries = [
            (s, b, signed(settings, s, body=b, now=time.time() + 1)[1])
            for s, b, _ in rng.sample(deliveries, 12)
        ]
        late = []
        for i in range(5):  # a "failed" that arrives after the "completed" of the same payment
            body, headers, _ = signed(
                settings, "moncash", n=1000 + i, reference=f"LATE-{i}", event="payment.failed"
            )
            late.append(("moncash", body, headers))
        first = [signed(settings, "moncash", n=2000 + i, reference=f"LATE-{i}") for i in range(5)]
        with ThreadPoolExecutor(8) as pool:
            answers = list(
                pool.map(lambda d: post(f"{base}/webhooks/{d[0]}", d[1], d[2]), deliveries)
            )
            twins = [deliveries[5], deliveries[5], deliveries[9], deliveries[9]]
            answers += list(pool.map(lambda d: post(f"{base}/webhooks/{d[0]}", d[1], d[2]), twins))
            answers += list(
                pool.map(lambda d: post(f"{base}/webhooks/{d[0]}", d[1], d[2]), redeliveries)
            )
        for body, headers, _ in first:
            answers.append(post(f"{base}/webhooks/moncash", body, headers))
        for source, body, headers in late:
            answers.append(post(f"{base}/webhooks/{source}", body, headers))
        acked = {a["event_id"] for status, a in answers if status == 202}
        assert all(status in (200, 202) for status, _ in answers), answers
        assert len(acked) == 70
        # And a worker drains the queue
        worker = subprocess.run(hookline("worker", "--burst"), env=env, check=False, timeout=120)
        assert worker.returncode == 0
    # Then every acknowledged event has exactly one row, and the payments are right
    engine = make_engine(postgres_url)
    with engine.connect() as conn:
        ids = conn.execute(select(webhook_events.c.event_id)).scalars().all()
        late_status = (
            conn.execute(select(payments.c.status).where(payments.c.reference.like("LATE-%")))
            .scalars()
            .all()
        )
    assert sorted(ids) == sorted(acked)
    assert count(engine, payments) == 60 + 5
    assert late_status == ["completed"] * 5
    engine.dispose()


def test_worker_killed_mid_job_is_recovered_and_applied_once(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    database_url = f"sqlite:///{tmp_path / 'kill.db'}"
    upgrade(database_url)
    config = tmp_path / "hookline.toml"
    config.write_text(
        config_text(redis_url, database_url, "job_timeout_seconds = 5\nbackoff_seconds = [1]")
    )
    settings = load_settings(config)
    env = env_for(HOOKLINE_CONFIG=str(config), HOOKLINE_TEST_STATE=str(tmp_path))
    (tmp_path / "sleep").write_text("30")
    deliver(redis_client, settings, "slow", body=b'{"id": "k-1", "type": "t"}')
    engine = make_engine(database_url)
    with processes() as procs:
        # Given a worker in the middle of the event's job
        first = procs.start(hookline("worker"), env, tmp_path / "w1.log")
        wait_until(lambda: (tmp_path / "started_k-1").exists(), 30, "the job starting")
        # When it is killed with kill -9, and another worker runs
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(10)
        killed_at = time.monotonic()
        (tmp_path / "sleep").unlink()
        procs.start(hookline("worker"), env, tmp_path / "w2.log")
        # Then the event is applied, once, well within 180 s
        waited = wait_until(
            lambda: count(engine, webhook_events) == 1, 170, "recovery of the abandoned job"
        )
    assert time.monotonic() - killed_at < 180
    assert count(engine, payments) == 1
    with engine.connect() as conn:
        assert conn.execute(select(webhook_events.c.attempts)).scalar_one() == 2
    print(f"abandoned job recovered {waited:.1f} s after kill -9")
    engine.dispose()


def test_redis_outage_during_a_job_keeps_the_worker_and_the_outcome(tmp_path: Path) -> None:
    # Given a Redis of our own (AOF, fsync always) that we can stop and start
    port = free_port()
    data = tmp_path / "redis"
    data.mkdir()
    redis_argv = [
        redis_server_binary(),
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(data),
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
        "--save",
        "",
    ]
    redis_url = f"redis://127.0.0.1:{port}/0"
    database_url = f"sqlite:///{tmp_path / 'outage.db'}"
    upgrade(database_url)
    config = tmp_path / "hookline.toml"
    config.write_text(config_text(redis_url, database_url, "backoff_seconds = [1]"))
    settings = load_settings(config)
    env = env_for(HOOKLINE_CONFIG=str(config), HOOKLINE_TEST_STATE=str(tmp_path))
    engine = make_engine(database_url)
    with processes() as procs:
        server = procs.start(redis_argv, env, tmp_path / "redis.log")
        client = redis.Redis.from_url(redis_url)
        wait_until(client.ping, 10, "redis starting")
        worker = procs.start(hookline("worker"), env, tmp_path / "worker.log")
        (tmp_path / "sleep").write_text("3")
        deliver(client, settings, "slow", body=b'{"id": "o-1", "type": "t"}')
        wait_until(lambda: (tmp_path / "started_o-1").exists(), 30, "the job starting")
        # When Redis dies while the job runs, and comes back 5 s later
        server.kill()
        server.wait(10)
        time.sleep(5)
        procs.start(redis_argv, env, tmp_path / "redis.log")
        wait_until(client.ping, 10, "redis restarting")
        # Then the job's effect is there once, the worker is still alive, and it takes new work
        wait_until(lambda: count(engine, webhook_events) == 1, 60, "the job's outcome")
        (tmp_path / "sleep").unlink()
        deliver(client, settings, "slow", body=b'{"id": "o-2", "type": "t"}')
        wait_until(lambda: count(engine, webhook_events) == 2, 60, "the next job after the outage")
        assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-2000:]
    assert count(engine, payments) == 2
    assert count(engine, dead_letters) == 0
    engine.dispose()


def _children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == pid:
                found.add(int(entry.name))
    return found


def test_dev_runs_the_pipeline_and_stops_every_child_on_ctrl_c(tmp_path: Path) -> None:
    # Given `hookline dev` in an empty directory (its demo configuration, on a free port)
    redis_port, port = free_port(), free_port()
    config = tmp_path / "hookline.toml"
    from hookline.dev import demo_config

    config.write_text(demo_config().replace("6390", str(redis_port)))
    env = env_for()
    with processes() as procs:
        dev = procs.start(
            hookline("dev", "--port", str(port)), env, tmp_path / "dev.log", cwd=tmp_path
        )
        wait_until(
            lambda: "hookline is running" in (tmp_path / "dev.log").read_text(), 60, "dev starting"
        )
        children = _children(dev.pid)
        assert len(children) == 3  # redis, ingress, worker
        # When a user sends a signed event with `hookline send`
        sent = subprocess.run(
            hookline("send", "moncash", "--url", f"http://127.0.0.1:{port}"),
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert sent.returncode == 0 and sent.stdout.startswith("202 "), sent.stdout + sent.stderr
        # Then a row appears
        engine = make_engine(f"sqlite:///{tmp_path / '.hookline' / 'hookline.db'}")
        wait_until(lambda: count(engine, payments) == 1, 30, "the payment row")
        engine.dispose()
        # and dev shows a line for it (written just after the commit)
        log = tmp_path / "dev.log"
        wait_until(
            lambda: "moncash/evt_" in log.read_text() and "processed" in log.read_text(),
            10,
            "the event's line",
        )
        # And Ctrl-C stops everything
        dev.send_signal(signal.SIGINT)
        assert dev.wait(30) == 0
    for pid in children:
        assert not Path(f"/proc/{pid}").exists(), f"child {pid} left running"
    with __import__("socket").socket() as s:
        assert s.connect_ex(("127.0.0.1", redis_port)) != 0


def test_dev_killed_with_kill_9_leaves_no_child(tmp_path: Path) -> None:
    # Given `hookline dev` running with its three children
    redis_port, port = free_port(), free_port()
    from hookline.dev import demo_config

    (tmp_path / "hookline.toml").write_text(demo_config().replace("6390", str(redis_port)))
    with processes() as procs:
        dev = procs.start(
            hookline("dev", "--port", str(port)), env_for(), tmp_path / "dev.log", cwd=tmp_path
        )
        log = tmp_path / "dev.log"
        wait_until(lambda: "hookline is running" in log.read_text(), 60, "dev starting")
        children = _children(dev.pid)
        assert len(children) == 3
        # When dev itself is killed with no chance to clean up
        os.kill(dev.pid, signal.SIGKILL)
        dev.wait(10)
        # Then its children stop too (they asked the kernel for SIGTERM on their parent's death)
        wait_until(
            lambda: not any(Path(f"/proc/{pid}").exists() for pid in children), 30, "children exit"
        )
