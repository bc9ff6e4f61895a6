"""RQ's own tools see and act on a batching worker: ``Worker.get_current_executions()`` lists
every job of its batch, ``rq info`` shows it busy, RQ's stop-job command stops any one of them
(the others are applied), and ``RQ_KEY_PREFIX`` moves every key hookline and RQ write."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from rq import Worker
from rq.command import send_stop_job_command
from rq.job import Job
from sqlalchemy import select

from shared.config import load_settings
from shared.db import dead_letters, make_engine, webhook_events
from shared.rqcompat import JobSerializer
from tests.helpers import SOURCES, signed
from tests.processes import env_for, free_port, hookline, http_ok, processes, wait_until
from tests.test_worker import deliver

pytestmark = pytest.mark.slow


def _config(tmp_path: Path, redis_url: str, database_url: str) -> Path:
    config = tmp_path / "hookline.toml"
    config.write_text(
        f"""
redis_url = "{redis_url}"
database_url = "{database_url}"

[worker]
handlers = ["tests.handlers_for_tests"]
backoff_seconds = [1]
max_attempts = 3

[sources.slow]
scheme = "hmac"
secrets = ["slow-secret"]
event_id = "json:id"
event_type = "json:type"

[sources.flaky]
scheme = "hmac"
secrets = ["flaky-secret"]
event_id = "json:id"
event_type = "json:type"

[sources.moncash]
scheme = "moncash"
secrets = {json.dumps(SOURCES["moncash"]["secrets"])}
"""
    )
    return config


def _rows(engine: Any, table: Any) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(select(table).order_by(table.c.id))]


def test_rqs_tools_see_every_job_of_a_batch_and_stop_job_stops_one(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    database_url = f"sqlite:///{tmp_path / 'tools.db'}"
    config = _config(tmp_path, redis_url, database_url)
    settings = load_settings(config)
    env = env_for(HOOKLINE_CONFIG=str(config), HOOKLINE_TEST_STATE=str(tmp_path))
    assert subprocess.run(hookline("db", "upgrade"), env=env, check=False).returncode == 0
    # Given three slow events queued before a worker starts (so they make one batch)
    (tmp_path / "sleep").write_text("2")
    ids = [f"s-{i}" for i in range(3)]
    for event_id in ids:
        deliver(
            redis_client, settings, "slow", body=json.dumps({"id": event_id, "type": "t"}).encode()
        )
    engine = make_engine(database_url)
    with processes() as procs:
        procs.start(hookline("worker"), env, tmp_path / "worker.log")
        wait_until(lambda: (tmp_path / "started_s-0").exists(), 30, "the batch starting")
        # When RQ's tools look at the worker
        [worker] = Worker.all(connection=redis_client, serializer=JobSerializer)
        running = {e.job.description for e in worker.get_current_executions()}
        info = subprocess.run(
            [sys.executable, "-m", "rq.cli", "info", "--url", redis_url, "--raw"],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        # Then they see it busy with all three jobs
        assert running == {f"slow {i}" for i in ids}
        assert worker.get_state() == "busy"
        assert f"worker {worker.name}" in info.stdout and " busy " in info.stdout, info.stdout
        # When an operator stops the second job with RQ's own command
        second = next(
            e.job
            for e in worker.get_current_executions()
            if e.job_id and e.job.description == "slow s-1"
        )
        send_stop_job_command(redis_client, second.id, serializer=JobSerializer)
        (tmp_path / "sleep").unlink()
        # Then the other two are applied, and the stopped one is stopped (never retried) and
        # kept as a dead letter saying so, for a replay if wanted
        wait_until(lambda: len(_rows(engine, webhook_events)) == 3, 60, "the batch's outcomes")
    events = {e["event_id"]: e["status"] for e in _rows(engine, webhook_events)}
    assert events == {"s-0": "processed", "s-1": "dead", "s-2": "processed"}
    [dl] = _rows(engine, dead_letters)
    assert dl["event_id"] == "s-1" and "stopped by an operator" in dl["reason"]
    assert Job.fetch(second.id, connection=redis_client, serializer=JobSerializer).get_status() == (
        "stopped"
    )
    engine.dispose()


def test_rq_key_prefix_moves_every_key_of_the_ingress_and_the_workers(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    # Given RQ_KEY_PREFIX set for every hookline process, and a retry to go through RQ's
    # scheduler and the janitor
    database_url = f"sqlite:///{tmp_path / 'prefix.db'}"
    config = _config(tmp_path, redis_url, database_url)
    settings = load_settings(config)
    env = env_for(
        HOOKLINE_CONFIG=str(config), HOOKLINE_TEST_STATE=str(tmp_path), RQ_KEY_PREFIX="hlx"
    )
    assert subprocess.run(hookline("db", "upgrade"), env=env, check=False).returncode == 0
    (tmp_path / "fail_f-1").write_text("1")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    engine = make_engine(database_url)
    with processes() as procs:
        procs.start(
            hookline("serve", "--host", "127.0.0.1", "--port", str(port)), env, tmp_path / "s.log"
        )
        procs.start(hookline("worker"), env, tmp_path / "worker.log")
        wait_until(lambda: http_ok(f"{base}/readyz"), 20, "the ingress")
        # When events arrive through the ingress
        import urllib.request

        for n, (source, body) in enumerate(
            (("moncash", None), ("flaky", b'{"id": "f-1", "type": "t"}'))
        ):
            payload, headers, _ = signed(settings, source, body=body)
            req = urllib.request.Request(  # noqa: S310
                f"{base}/webhooks/{source}", data=payload, headers=headers, method="POST"
            )
            with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310
                assert resp.status == 202
            # one at a time: in a batch the failing handler would also run in the batch's try
            wait_until(lambda n=n: len(_rows(engine, webhook_events)) > n, 30, "the event")
        # Then both are applied (the flaky one on its second attempt)
        time.sleep(1)
        keys = [k.decode() for k in redis_client.scan_iter(count=1000)]
    # And every key in Redis is under the prefix (but the test run's own lock)
    stray = [k for k in keys if not k.startswith("hlx:") and k != "hookline-test-run-lock"]
    assert stray == []
    assert any(k.startswith("hlx:hookline:c:") for k in keys)
    assert "hlx:queues" in keys and any(k.startswith("hlx:worker:") for k in keys)
    assert [e["attempts"] for e in _rows(engine, webhook_events) if e["source"] == "flaky"] == [2]
    engine.dispose()
