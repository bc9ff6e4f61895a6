"""A real Redis topology on 127.0.0.1 for failover tests and the fault run: a primary, a
replica and three Sentinels, all ``redis-server`` processes on free ports in a folder of their
own, every one stopped when the context ends."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from hookline.dev import redis_server_binary
from tests.processes import free_port, signal_group, start_in_group, stop_groups, wait_until

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


def _redis_node(folder: Path, name: str, port: int, *extra: str) -> Node:
    data = folder / name
    data.mkdir(parents=True, exist_ok=True)
    argv = [
        redis_server_binary(),
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
