"""The Redis Cluster the failover tests and the fault run start (tests/redis_topology.py):
it comes up whole, serves a cluster client, and promotes a killed primary's replica by itself
while the other primaries keep taking writes; nothing of it outlives its context."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot
from redis.retry import Retry

from tests.processes import pid_alive, processes_in_groups
from tests.redis_topology import CLUSTER_SLOTS, Cluster, Node, cluster_topology

pytestmark = pytest.mark.slow


def _client(cluster: Cluster, retries: int = 3) -> RedisCluster:
    """A cluster client seeded with the cluster's primaries; with ``retries=0`` an error
    (a CLUSTERDOWN refusal, say) reaches the caller instead of being retried away."""
    seeds = [ClusterNode("127.0.0.1", node.port) for node in cluster.seeds]
    return RedisCluster(
        startup_nodes=seeds,
        retry=Retry(NoBackoff(), retries),
        socket_timeout=2,
        socket_connect_timeout=1,
    )


def _key_on_another_primary(cluster: Cluster, primary: Node) -> str:
    return next(
        key
        for key in (f"other-{i}" for i in range(100))
        if cluster.primary_for_slot(key_slot(key.encode())) is not primary
    )


def test_a_killed_primary_is_replaced_by_its_replica_while_the_others_keep_writing(
    tmp_path: Path,
) -> None:
    pids: list[int] = []
    with cluster_topology(tmp_path / "cluster") as cluster:
        pids += [node.proc.pid for node in cluster.nodes if node.proc is not None]
        server = cluster.nodes[0].argv[0]
        print(f"\ncluster created in {cluster.created_in:.2f} s ({server})")
        primaries = cluster.primaries()
        assert len(primaries) == 3
        assert len(cluster.nodes) == 6
        assert cluster.url == "redis+cluster://" + ",".join(
            f"127.0.0.1:{node.port}" for node in primaries
        )
        ranges = cluster.slot_ranges()
        assert ranges[0][0] == 0
        assert ranges[-1][1] == CLUSTER_SLOTS - 1
        assert all(a[1] + 1 == b[0] for a, b in itertools.pairwise(ranges))
        assert {primary.port for _, _, primary in ranges} == {node.port for node in primaries}
        for primary in primaries:
            replica = cluster.replica_of(primary)
            assert replica not in primaries
            replication = replica.ask(lambda c: c.info("replication"))
            assert (replication["master_port"], replication["master_link_status"]) == (
                primary.port,
                "up",
            )

        slot = key_slot(b"survivor")
        old = cluster.primary_for_slot(slot)
        replica = cluster.replica_of(old)
        old.ask(lambda c: c.set("survivor", "before the crash"))
        assert old.ask(lambda c: c.execute_command("WAIT", 1, 5000)) == 1
        client = _client(cluster, retries=0)
        try:
            assert client.get("survivor") == b"before the crash"

            other = _key_on_another_primary(cluster, old)
            writes = 0

            def write_other() -> None:
                nonlocal writes
                writes += 1
                assert client.set(other, str(writes)) is True

            old.kill()
            took = cluster.wait_promoted(slot, old, timeout=30, between=write_other)
            print(f"promoted in {took:.2f} s after kill -9 ({writes} writes meanwhile)")
            assert writes > 0
            assert cluster.primary_for_slot(slot) is replica
            assert client.get(other) == str(writes).encode()
        finally:
            client.close()

        fresh = _client(cluster)
        try:
            assert fresh.get("survivor") == b"before the crash"
        finally:
            fresh.close()
    assert not [pid for pid in pids if pid_alive(pid)]
    assert not processes_in_groups(pids)
