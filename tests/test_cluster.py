"""hookline on a real Redis Cluster (three primaries, each with a replica, on 127.0.0.1:
:func:`tests.redis_topology.cluster_topology`): every shard's keys in one slot of one primary,
the ingress and the workers taking, retrying, dead-lettering and replaying events across the
three, RQ's stop-job reaching a shard's worker, a shard without a primary answering 503 while
the others answer 202, and a cluster that cannot serve stopping the commands with one line."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy import select

from ingest.app import create_app
from shared import keys, redisconn
from shared.config import load_settings
from shared.db import dead_letters, make_engine, webhook_events
from tests.helpers import signed
from tests.processes import env_for, free_port, hookline, processes, wait_until
from tests.redis_topology import Cluster, cluster_topology
from tests.test_shards import SOURCES

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with cluster_topology(tmp_path_factory.mktemp("cluster")) as started:
        yield started


def _config(tmp_path: Path, url: str, **ingest: Any) -> Path:
    config = tmp_path / "hookline.toml"
    extra = "".join(f"{k} = {json.dumps(v)}\n" for k, v in ingest.items())
    config.write_text(
        f'redis_url = "{url}"\nredis_shards = 3\n'
        f'database_url = "sqlite:///{tmp_path / "cluster.db"}"\n'
        '[worker]\nhandlers = ["tests.handlers_for_tests"]\nmax_attempts = 2\n'
        f"backoff_seconds = [0]\n[ingest]\n{extra}{SOURCES}"
    )
    return config


def _rows(database_url: str, table: Any = webhook_events) -> list[dict[str, Any]]:
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(select(table))]
    finally:
        engine.dispose()


async def _post(client: TestClient, settings: Any, source: str, event_id: str) -> Any:
    body = json.dumps({"id": event_id, "type": "t"}).encode()
    _, headers, _ = signed(settings, source, body=body)
    return await client.post(f"/webhooks/{source}", data=body, headers=headers)


async def test_events_are_taken_retried_dead_lettered_and_replayed_across_the_primaries(
    tmp_path: Path, aiohttp_client: Any, cluster: Cluster
) -> None:
    config = _config(tmp_path, cluster.url, ack_replicas=1)
    settings = load_settings(config)
    layout = keys.Layout.of(3, cluster=True)
    env = env_for(HOOKLINE_CONFIG=str(config), HOOKLINE_TEST_STATE=str(tmp_path))
    assert subprocess.run(hookline("db", "upgrade"), env=env, check=False).returncode == 0
    # Given each shard on a primary of its own
    owners = {cluster.primary_for_slot(s.slot or 0).port for s in layout.shards}
    assert len(owners) == 3
    client: TestClient = await aiohttp_client(create_app(settings))
    # When events arrive (each twice), one failing for good, with every answer waiting for
    # the shard's replica (ack_replicas = 1)
    events = {f"c-{i}": "slow" for i in range(24)} | {"c-poison": "poison"}
    (tmp_path / "poison").write_text("")
    for again in (False, True):
        for event_id, source in events.items():
            answer = await _post(client, settings, source, event_id)
            assert answer.status == (200 if again else 202), await answer.text()
    # Then each shard's events are queued on its own primary
    for shard in layout.shards:
        node = cluster.primary_for_slot(shard.slot or 0)
        queued = node.ask(lambda c, s=shard: c.llen(s.queue_key(settings.queue)))
        assert queued == sum(layout.route(src, i) == shard for i, src in events.items())
    # When a worker drains them (a process per shard)
    drained = subprocess.run(
        hookline("worker", "--burst"), env=env, capture_output=True, text=True, check=False
    )
    assert drained.returncode == 0, drained.stderr[-3000:]
    # Then each was applied once, the poison one is a dead letter, and nothing is left
    # queued on any primary
    rows = {r["event_id"]: r for r in _rows(settings.database_url)}
    assert {i: r["status"] for i, r in rows.items()} == {
        i: ("dead" if src == "poison" else "processed") for i, src in events.items()
    }
    status = json.loads(
        subprocess.run(
            hookline("status", "--json"), env=env, capture_output=True, text=True, check=True
        ).stdout
    )
    assert (status["queued"], status["running"], status["dead_letters"]) == (0, 0, 1)
    assert [s["reachable"] for s in status["shards"]] == [True] * 3
    # When the dead letter is replayed, fixed meanwhile, and an event of another shard
    # fails once (RQ's retry, in that shard's registries)
    (tmp_path / "poison").unlink()
    replay = subprocess.run(
        hookline("dlq", "replay", "--all"), env=env, capture_output=True, text=True, check=False
    )
    assert replay.returncode == 0, replay.stderr
    flaky = next(
        i
        for i in (f"f-{n}" for n in range(100))
        if layout.route("flaky", i) != layout.route("poison", "c-poison")
    )
    (tmp_path / f"fail_{flaky}").write_text("1")
    assert (await _post(client, settings, "flaky", flaky)).status == 202
    drained = subprocess.run(
        hookline("worker", "--burst"), env=env, capture_output=True, text=True, check=False
    )
    assert drained.returncode == 0, drained.stderr[-3000:]
    # Then both are applied, once, the flaky one on its second attempt
    rows = {r["event_id"]: r for r in _rows(settings.database_url)}
    assert rows["c-poison"]["status"] == "processed"
    assert (rows[flaky]["status"], rows[flaky]["attempts"]) == ("processed", 2)


def test_rqs_stop_job_reaches_the_worker_of_the_jobs_shard(
    tmp_path: Path, cluster: Cluster
) -> None:
    config = _config(tmp_path, cluster.url)
    settings = load_settings(config)
    layout = keys.Layout.of(3, cluster=True)
    env = env_for(HOOKLINE_CONFIG=str(config), HOOKLINE_TEST_STATE=str(tmp_path))
    assert subprocess.run(hookline("db", "upgrade"), env=env, check=False).returncode == 0
    # Given two slow events of one shard, queued
    shard = layout.shards[2]
    ids = [i for i in (f"s-{n}" for n in range(100)) if layout.route("slow", i) == shard][:2]
    client = redisconn.connect(cluster.url, shard.slot)
    from tests.test_worker import deliver

    for event_id in ids:
        deliver(client, settings, "slow", json.dumps({"id": event_id, "type": "t"}).encode(), shard)
    (tmp_path / "sleep").write_text("2")
    with processes() as procs:
        procs.start(hookline("worker", "--shards", "2"), env, tmp_path / "worker.log")
        wait_until(lambda: (tmp_path / f"started_{ids[0]}").exists(), 30, "the batch starting")
        # When an operator stops the second with RQ's own command, run with the shard's
        # prefix and a client of its primary
        job_id = next(
            jid.decode()
            for jid in client.zrange(shard.started_key(settings.queue), 0, -1)
            if client.hget(shard.job_key(jid.decode().split(":")[0]), "description")
            == f"slow {ids[1]}".encode()
        ).split(":")[0]
        code = (
            "import sys; from rq.command import send_stop_job_command;"
            "from shared import redisconn; from shared.rqcompat import JobSerializer;"
            "send_stop_job_command(redisconn.connect(sys.argv[1], int(sys.argv[2])),"
            " sys.argv[3], serializer=JobSerializer)"
        )
        subprocess.run(
            [sys.executable, "-c", code, cluster.url, str(shard.slot), job_id],
            env=env_for(**shard.child_env()),
            check=True,
        )
        (tmp_path / "sleep").unlink()
        wait_until(lambda: len(_rows(settings.database_url)) == 2, 60, "the batch's outcomes")
    # Then the first is applied and the stopped one is a dead letter saying so
    statuses = {r["event_id"]: r["status"] for r in _rows(settings.database_url)}
    assert statuses == {ids[0]: "processed", ids[1]: "dead"}
    [dead] = _rows(settings.database_url, dead_letters)
    assert "stopped by an operator" in dead["reason"]


async def test_a_shard_without_a_primary_answers_503_while_the_others_answer_202(
    tmp_path: Path, aiohttp_client: Any
) -> None:
    with cluster_topology(tmp_path / "lame") as lame:
        config = _config(tmp_path, lame.url, redis_timeout_seconds=1)
        settings = load_settings(config)
        layout = keys.Layout.of(3, cluster=True)
        client: TestClient = await aiohttp_client(create_app(settings))
        # Given shard 1's primary and its replica both gone
        down = lame.primary_for_slot(layout.shards[1].slot or 0)
        replica = lame.replica_of(down)
        replica.kill()
        down.kill()
        # When events of every shard arrive
        answers: dict[int, set[int]] = {0: set(), 1: set(), 2: set()}
        for n in range(30):
            event_id = f"d-{n}"
            answer = await _post(client, settings, "slow", event_id)
            answers[layout.route("slow", event_id).index].add(answer.status)
            if answer.status == 503:
                assert answer.headers["Retry-After"]
        # Then shard 1's are answered 503 (nothing acknowledged), the others' 202
        assert answers == {0: {202}, 1: {503}, 2: {202}}
        ready = await client.get("/readyz")
        assert ready.status == 200 and (await ready.json())["shards_down"] == [1]


def test_a_cluster_that_cannot_serve_stops_the_commands_with_one_line(
    tmp_path: Path, redis_url: str
) -> None:
    from tests.redis_topology import _cluster_ports, _redis_node

    [lone] = _cluster_ports(1)  # its cluster bus (port + 10000) must be free too

    # a cluster node no cluster was made of: it serves no slot
    node = _redis_node(tmp_path, "lone", lone, "--cluster-enabled", "yes")
    node.start()
    try:
        wait_until(node.ping, 15, "the lone cluster node")
        closed = free_port()
        plain = redis_url.rsplit("/", 1)[0].replace("redis://", "")
        for url, says in [
            (
                f"redis+cluster://127.0.0.1:{closed}",
                f"no node of the cluster at 127.0.0.1:{closed}",
            ),
            (f"redis+cluster://127.0.0.1:{lone}", "serves 0 of the 16384 hash slots"),
            (f"redis+cluster://{plain}", "is not a cluster node"),
        ]:
            # every command checks (one URL for the processes, which start more slowly)
            commands: list[list[str]] = [["status"]]
            if "serves 0" in says:
                commands += [["worker", "--burst"], ["serve", "--port", "1"]]
            for command in commands:
                done = subprocess.run(
                    hookline(*command, "--config", str(_config(tmp_path, url))),
                    env=env_for(),
                    capture_output=True,
                    text=True,
                    check=False,
                    timeout=60,
                )
                assert done.returncode == 2, (command, url, done.stderr)
                assert done.stderr.count("\n") == 1 and says in done.stderr, done.stderr
    finally:
        node.kill()
