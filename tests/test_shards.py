"""``redis_shards``: every shard's keys under one hash tag, each event routed to one shard for
good, a worker process per shard, and the commands acting on every shard. These run on one
Redis (shards work there too); ``tests/test_cluster.py`` runs them on a real Redis Cluster."""

from __future__ import annotations

import collections
import json
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import redis
from aiohttp.test_utils import TestClient
from redis.crc import key_slot
from sqlalchemy import select

from ingest.app import create_app
from shared import keys, redisconn
from shared.config import load_settings
from shared.db import make_engine, webhook_events
from shared.errors import ConfigError
from tests.helpers import signed
from tests.processes import env_for, free_port, hookline, processes, wait_until

#: the sources of the shard and cluster tests: the test handlers' slow, flaky and poison ones
SOURCES = "".join(
    f'\n[sources.{name}]\nscheme = "hmac"\nsecrets = ["{name}-secret"]\n'
    'event_id = "json:id"\nevent_type = "json:type"\n'
    for name in ("slow", "flaky", "poison")
)


def _config(
    tmp_path: Path, redis_url: str, shards: int = 3, database_url: str | None = None
) -> Path:
    config = tmp_path / "hookline.toml"
    config.write_text(
        f"""
redis_url = "{redis_url}"
redis_shards = {shards}
database_url = "{database_url or f"sqlite:///{tmp_path / 'shards.db'}"}"

[worker]
handlers = ["tests.handlers_for_tests"]
max_attempts = 1
{SOURCES}"""
    )
    return config


def _rows(database_url: str) -> dict[str, str]:
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            found = conn.execute(select(webhook_events.c.event_id, webhook_events.c.status))
            return {r.event_id: r.status for r in found}
    finally:
        engine.dispose()


# -- the layout ----------------------------------------------------------------------------------


def test_each_shard_is_one_hash_slot_in_its_own_share_of_the_slots() -> None:
    for count in (1, 3, 6, 10, 13, 16, 60):
        layout = keys.Layout.of(count, cluster=True)
        for shard in layout.shards:
            # every key of the shard, RQ's and hookline's, in the shard's one slot
            names = [
                shard.queue_key("q"),
                shard.job_key("j"),
                shard.scheduled_key("q"),
                shard.started_key("q"),
                shard.queues_set,
                shard.ack_barrier,
                shard.own_key(keys.CLAIM + "1:a"),
            ]
            assert {key_slot(n.encode()) for n in names} == {shard.slot}
            # spread evenly: shard i in the middle half of the i-th of `count` equal ranges
            # of slots, whichever way a cluster's tool rounds the ranges' ends
            width = keys.SLOTS / count
            assert (shard.index + 0.25) * width <= (shard.slot or 0)
            assert (shard.slot or 0) < (shard.index + 0.75) * width


def test_a_deployment_not_sharded_keeps_its_keys_where_they_were() -> None:
    [shard] = keys.Layout.of(1, cluster=False).shards
    assert shard.queue_key("hookline") == keys.queue_key("hookline")
    assert shard.own_key(keys.ACK_BARRIER) == keys.ACK_BARRIER
    assert shard.slot is None


def test_an_event_routes_to_one_shard_for_good_and_events_spread_over_all() -> None:
    layout = keys.Layout.of(4, cluster=False)
    again = keys.Layout.of(4, cluster=False)
    routed = [layout.route("stripe", f"evt_{i}").index for i in range(4000)]
    assert routed == [again.route("stripe", f"evt_{i}").index for i in range(4000)]
    counts = collections.Counter(routed)
    assert sorted(counts) == [0, 1, 2, 3]
    assert min(counts.values()) > 800  # about 1,000 each
    # the source counts: the same id from two sources is two events
    assert len({layout.route(s, "evt_1").index for s in ("a", "b", "c", "d", "e", "f")}) > 1


def test_a_shards_keys_are_the_names_rq_gives_under_the_shards_prefix() -> None:
    # RQ's own names, in a process started with the shard's prefix (as its worker is)...
    shard = keys.Layout.of(3, cluster=False).shards[2]
    code = (
        "import json; from shared import keys;"
        "print(json.dumps([keys.queue_key('q'), keys.job_key('j'), keys.scheduled_key('q'),"
        " keys.started_key('q'), keys.failed_key('q'), keys.workers_key('q'), keys.QUEUES_SET,"
        " keys.worker_key('w'), keys.worker_executions_key('w'), keys.execution_key('j:e'),"
        " keys.ACK_BARRIER, keys.janitor_lock('q')]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env_for(**shard.child_env()),
        capture_output=True,
        text=True,
        check=True,
    )
    # ...are the names this process gives the shard's keys
    assert json.loads(out.stdout) == [
        shard.queue_key("q"),
        shard.job_key("j"),
        shard.scheduled_key("q"),
        shard.started_key("q"),
        shard.failed_key("q"),
        shard.workers_key("q"),
        shard.queues_set,
        shard.rq_key(keys.worker_key("w")),
        shard.rq_key(keys.worker_executions_key("w")),
        shard.rq_key(keys.execution_key("j:e")),
        shard.ack_barrier,
        shard.own_key(keys.janitor_lock("q")),
    ]


def test_cluster_urls_are_read_and_bad_ones_are_one_clear_line() -> None:
    target = redisconn.parse_cluster("rediss+cluster://app:s3cret@10.0.0.1:7000,[::1]:7001")
    assert target is not None
    assert target.nodes == (("10.0.0.1", 7000), ("::1", 7001))
    assert (target.username, target.password, target.ssl) == ("app", "s3cret", True)
    assert "s3cret" not in redisconn.describe("redis+cluster://app:s3cret@10.0.0.1:7000")
    assert "s3cret" not in repr(target)
    for bad, says in [
        ("redis+cluster://10.0.0.1:7000/0", "a cluster has no databases"),
        ("redis+cluster://10.0.0.1", "is not host:port"),
        ("redis+cluster://app:s3cret@10.0.0.1:99999", "is not host:port"),
    ]:
        with pytest.raises(ConfigError, match=says) as err:
            redisconn.validate(bad)
        assert "s3cret" not in str(err.value)


def test_a_hash_tag_in_rq_key_prefix_with_shards_stops_the_command(tmp_path: Path) -> None:
    config = _config(tmp_path, "redis://127.0.0.1:1/0")
    done = subprocess.run(
        hookline("status", "--config", str(config)),
        env=env_for(RQ_KEY_PREFIX="{mine}"),
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "leave { } out of it" in done.stderr


# -- on one Redis --------------------------------------------------------------------------------


async def test_three_shards_take_apply_show_and_replay_every_event(
    tmp_path: Path, aiohttp_client: Any, redis_url: str, redis_client: redis.Redis
) -> None:
    config = _config(tmp_path, redis_url)
    settings = load_settings(config)
    layout = keys.Layout.of(3, cluster=False)
    env = env_for(HOOKLINE_CONFIG=str(config), HOOKLINE_TEST_STATE=str(tmp_path))
    assert subprocess.run(hookline("db", "upgrade"), env=env, check=False).returncode == 0
    client: TestClient = await aiohttp_client(create_app(settings))
    # When 30 events arrive, and each is delivered a second time
    events = {f"e-{i}": ("poison" if i == 7 else "slow") for i in range(30)}
    for again in (False, True):
        for event_id, source in events.items():
            body = json.dumps({"id": event_id, "type": "t"}).encode()
            _, headers, _ = signed(settings, source, body=body)
            answer = await client.post(f"/webhooks/{source}", data=body, headers=headers)
            assert answer.status == (200 if again else 202), await answer.text()
    # Then each was queued once, in the shard its (source, id) routes to, and every shard
    # holds some
    queued = {s.index: redis_client.llen(s.queue_key(settings.queue)) for s in layout.shards}
    expected = collections.Counter(layout.route(src, i).index for i, src in events.items())
    assert queued == dict(expected) and all(queued.values())
    # When a worker drains them (one process per shard), the poison one failing for good
    (tmp_path / "poison").write_text("")
    drained = subprocess.run(
        hookline("worker", "--burst"), env=env, capture_output=True, text=True, check=False
    )
    assert drained.returncode == 0, drained.stderr[-2000:]
    # Then every event was applied once, and the poison one is a dead letter
    rows = _rows(settings.database_url)
    assert rows == {i: ("dead" if src == "poison" else "processed") for i, src in events.items()}
    status = json.loads(
        subprocess.run(
            hookline("status", "--json"), env=env, capture_output=True, text=True, check=True
        ).stdout
    )
    assert (status["queued"], status["dead_letters"]) == (0, 1)
    assert [s["shard"] for s in status["shards"]] == [0, 1, 2]
    assert sum(s["failed_jobs"] for s in status["shards"]) == status["failed_jobs"] == 1
    # When it is replayed (fixed meanwhile)
    (tmp_path / "poison").unlink()
    replay = subprocess.run(
        hookline("dlq", "replay", "--all"), env=env, capture_output=True, text=True, check=False
    )
    assert replay.returncode == 0, replay.stderr
    # Then it is queued again in its own shard, and applied by that shard's worker
    home = layout.route("poison", "e-7")
    assert redis_client.llen(home.queue_key(settings.queue)) == 1
    drained = subprocess.run(
        hookline("worker", "--burst", "--shards", str(home.index)),
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert drained.returncode == 0, drained.stderr[-2000:]
    assert _rows(settings.database_url)["e-7"] == "processed"


def _processed(port: int) -> float:
    """Events a worker's metrics port counts as processed, every shard's process added up."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as answer:
        text = answer.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("hookline_worker_events_total{") and 'outcome="processed"' in line
    )


def test_a_flooded_shard_does_not_hold_up_the_others(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis, postgres_url: str
) -> None:
    # PostgreSQL: SQLite takes one writer at a time, so there a batch of one shard holds up
    # every other's commit whatever Redis does
    from tests.test_worker import deliver

    config = _config(tmp_path, redis_url, shards=2, database_url=postgres_url)
    settings = load_settings(config)
    layout = keys.Layout.of(2, cluster=False)
    env = env_for(HOOKLINE_CONFIG=str(config), HOOKLINE_TEST_STATE=str(tmp_path))
    assert subprocess.run(hookline("db", "upgrade"), env=env, check=False).returncode == 0
    # Given shard 0 flooded with slow events (0.4 s each) and one event for shard 1
    (tmp_path / "sleep").write_text("0.4")
    ids = [f"f-{i}" for i in range(200)]
    flood = [i for i in ids if layout.route("slow", i).index == 0][:12]
    lone = next(i for i in ids if layout.route("slow", i).index == 1)

    def send(event_id: str) -> None:
        body = json.dumps({"id": event_id, "type": "t"}).encode()
        deliver(redis_client, settings, "slow", body=body, shard=layout.route("slow", event_id))

    for event_id in flood:
        send(event_id)
    port = free_port()
    with processes() as procs:
        worker = procs.start(
            hookline("worker", "--metrics-port", str(port)), env, tmp_path / "worker.log"
        )
        # When the worker is busy with shard 0's flood, and an event for shard 1 arrives
        wait_until(lambda: (tmp_path / f"started_{flood[0]}").exists(), 60, "the flood")
        shard_1_workers = layout.shards[1].workers_key(settings.queue)
        wait_until(lambda: redis_client.scard(shard_1_workers) > 0, 60, "shard 1's worker")
        send(lone)
        # Then shard 1's event is applied while most of shard 0's flood still waits
        wait_until(lambda: _rows(settings.database_url).get(lone) == "processed", 60, lone)
        rows = _rows(settings.database_url)
        assert sum(rows.get(i) == "processed" for i in flood) < len(flood) // 2
        # And once all are applied the one metrics port counts both shards' processes'
        every = {*flood, lone}
        wait_until(lambda: _rows(settings.database_url).keys() == every, 60, "the flood")
        wait_until(lambda: _processed(port) == len(every), 20, "both shards' metrics")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as ready:
            assert ready.status == 200
        # And SIGTERM stops the worker and every shard's process
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0
    log = (tmp_path / "worker.log").read_text()
    assert "serving shards 0,1" in log


def test_shards_that_do_not_exist_are_one_clear_line(tmp_path: Path, redis_url: str) -> None:
    config = _config(tmp_path, redis_url)
    for bad in ("3", "0,x", ""):
        done = subprocess.run(
            hookline("worker", "--config", str(config), "--shards", bad),
            env=env_for(),
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 2, done.stderr
        assert "shard numbers 0 to 2" in done.stderr


def test_dev_with_a_cluster_url_is_one_clear_line(tmp_path: Path) -> None:
    config = tmp_path / "hookline.toml"
    config.write_text('redis_url = "redis+cluster://127.0.0.1:7000,127.0.0.1:7001"\n')
    done = subprocess.run(
        hookline("dev", "--config", str(config), "--no-reload"),
        env=env_for(),
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "not a Sentinel, cluster" in done.stderr


def test_a_shards_worker_that_dies_is_started_again_and_ctrl_c_stops_them_all(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    import os

    from shared import rqcompat
    from tests.processes import pid_alive, processes_in_groups, signal_group

    config = _config(tmp_path, redis_url, shards=2)
    settings = load_settings(config)
    layout = keys.Layout.of(2, cluster=False)
    env = env_for(HOOKLINE_CONFIG=str(config), HOOKLINE_TEST_STATE=str(tmp_path))

    def pids(shard: keys.Shard) -> set[int]:
        found = rqcompat.read_workers(redis_client, settings.queue, shard)
        return {w.pid for w in found if w.pid and pid_alive(w.pid)}

    with processes() as procs:
        # Given a worker serving both shards, from a terminal (its own process group)
        worker = procs.start(hookline("worker"), env, tmp_path / "worker.log")
        wait_until(lambda: all(pids(s) for s in layout.shards), 60, "both shards' workers")
        [first] = pids(layout.shards[1])
        # When shard 1's process is killed
        os.kill(first, signal.SIGKILL)
        # Then it is started again, and shard 0's is left alone; and what it left behind (RQ's
        # scheduler, a process it forked, which a kill -9 orphans) is gone
        wait_until(lambda: pids(layout.shards[1]) - {first}, 60, "shard 1's worker again")
        wait_until(lambda: not processes_in_groups([first]), 10, "its scheduler stopped")
        every = pids(layout.shards[0]) | pids(layout.shards[1])
        # When Ctrl-C reaches the terminal's process group
        signal_group(worker, signal.SIGINT)
        # Then every shard's worker stops, warmly, and so does hookline worker
        assert worker.wait(30) == 0
        wait_until(lambda: not processes_in_groups(every), 30, "the shards' workers")
    log = (tmp_path / "worker.log").read_text()
    assert "the worker of shard 1 exited with status -9: starting it again" in log
    assert "cold shutdown" not in log.lower()
