"""hookline benchmark: every figure a ratio to a baseline measured in the same run, on one
machine, everything stopped at the end.

- the ingress (one process) against a bare aiohttp app, access log on both and off both;
  p50/p99 at half saturation; accepted (the ingress's counter) == queued (RQ's list), exactly;
- ``hookline serve --processes 2`` against ``--processes 1``: events/s and CPU per event;
- Redis CPU per event (``INFO cpu``), ingress side and worker side, and the ceiling they imply
  for one primary;
- acknowledgements that wait (``[ingest] ack_replicas = 1``, a real replica) against
  ``ack_replicas = 0`` on the same primary;
- workers (two processes, and one) into PostgreSQL against a hand-written drain loop, with the
  event log on (``[archive] retention_days = 7``) and off (``0``);
- end to end: ack -> effect committed at ``--e2e-rate`` (default 1,000/s) with two workers;
- peak RSS of the ingress and a worker; ``--profile DIR``: py-spy profiles;
- Redis's footprint per event (``bench/footprint.py``), and Redis CPU per event on each primary
  of a Redis Cluster, one primary against three (``bench/cluster.py``).

    .venv/bin/python bench/run.py [--quick] [--e2e-rate 1000] [--out bench/results/latest.json]
        [--profile bench/results/profile]

See bench/README.md for what each number means and how it is measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cluster
import footprint
from common import (
    BENCH,
    DATABASE_URL,
    PG_DSN,
    QUEUE,
    ROOT,
    SOURCE,
    WEBHOOK_PATH,
    Proc,
    Procs,
    Signed,
    config_toml,
    create_database,
    drop_database,
    free_port,
    group_cpu_seconds,
    group_rss_mb,
    hookline,
    machine_busy,
    redis_client,
    settings,
    sign_many,
    start_redis,
    table_counts,
    truncate_tables,
    wait_http,
    wait_until,
    write_wrk_file,
)
from loadgen import pct, run_paced, summarize
from profile_summary import INGRESS_BUCKETS, WORKER_BUCKETS, summarize_collapsed
from rq import Worker

from shared import keys

#: RQ's list of the queued job ids (named by RQ's classes: RQ_KEY_PREFIX moves it)
QUEUE_KEY = keys.queue_key(QUEUE)
#: Redis CPU per event the brief quotes for the code before this run (us), shown beside ours
BRIEF_REDIS_US = {"ingress": 52.0, "worker": 78.0}


@dataclass(frozen=True)
class Plan:
    """Durations and sizes; ``--quick`` shrinks all of them."""

    sat_seconds: int = 10
    rounds: int = 2
    connections: int = 32
    wrk_threads: int = 1
    half_seconds: float = 10.0
    backlog: int = 5000
    e2e_rate: float = 1000.0
    e2e_seconds: float = 15.0
    e2e_workers: int = 2
    warmup_seconds: int = 2
    ceiling_batch: int = 100
    profile_seconds: int = 10
    profile_backlog: int = 1500
    e2e_wait_cap: float = 120.0
    ack_timeout_ms: int = 200
    claims: int = 1_000_000
    cluster_events: int = 5000
    cluster_rate: float = 1000.0


QUICK = Plan(
    sat_seconds=5,
    rounds=1,
    half_seconds=5.0,
    backlog=1500,
    e2e_seconds=8.0,
    warmup_seconds=1,
    profile_seconds=6,
    profile_backlog=600,
    e2e_wait_cap=40.0,
    claims=200_000,
    cluster_events=1500,
)

#: the targets of the speed work (issue 11): the ingress at half of bare aiohttp with the access
#: log on both (the row with it off on both is reported against the same bar), two workers at
#: a third of the drain-loop ceiling
TARGETS = {
    "ingress_vs_ceiling": 0.50,
    "p99_half_ms": 20.0,
    "workers2_eps": 1000.0,
    "workers2_vs_ceiling": 0.35,
    "e2e_p99_ms": 250.0,
    "rss_ingress_mb": 120.0,
    "rss_worker_mb": 150.0,
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


@dataclass
class Bench:
    """What every phase uses: the plan, the processes, the bench's own Redis and the
    configurations (one file per variant, all on that Redis and the bench's database)."""

    plan: Plan
    tmp: Path
    procs: Procs
    redis_port: int
    r: Any
    configs: dict[str, Path] = field(default_factory=dict)
    #: unique event numbers across runs
    counter: int = field(default_factory=lambda: int(time.time()) % 100_000 * 1_000_000)

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    def events(self, count: int) -> list[Signed]:
        """``count`` events never sent before in this run, signed now."""
        out = sign_many(self.counter, count)
        self.counter += count
        return out

    def write_configs(self) -> None:
        variants: dict[str, dict[str, Any]] = {
            "default": {},
            "no_access_log": {"ingest": {"access_log": False}},
            "no_archive": {"archive": {"retention_days": 0}},
            "traces": {"telemetry": {"traces": True}},
            "ack1": {
                "ingest": {"ack_replicas": 1, "ack_replicas_timeout_ms": self.plan.ack_timeout_ms}
            },
        }
        for name, parts in variants.items():
            path = self.tmp / f"hookline-{name}.toml"
            path.write_text(config_toml(self.redis_url, **parts))
            self.configs[name] = path


# -- measuring helpers ---------------------------------------------------------------------------


def redis_cpu(r: Any) -> float:
    info = r.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def wrk(url: str, requests_file: Path, seconds: int, plan: Plan) -> dict[str, Any]:
    """One wrk run; with its own CPU time (from the children's rusage: wrk is the only child
    reaped meanwhile) and how busy the whole machine was, in cores."""
    host = url.split("/")[2]
    argv = [
        "wrk",
        f"-t{plan.wrk_threads}",
        f"-c{plan.connections}",
        f"-d{seconds}s",
        "--timeout",
        "5s",
        "-s",
        str(BENCH / "post.lua"),
        url,
        "--",
        str(requests_file),
        host,
        str(plan.wrk_threads),
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy0, total0 = machine_busy()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=False)
    busy1, total1 = machine_busy()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    for line in done.stdout.splitlines():
        if line.startswith("WRKJSON "):
            data: dict[str, Any] = json.loads(line[len("WRKJSON ") :])
            secs = data["duration_us"] / 1e6
            data["rps"] = data["requests"] / secs
            cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
            data["wrk_cpu_cores"] = cpu / secs
            data["machine_busy_cores"] = (os.cpu_count() or 1) * (busy1 - busy0) / (total1 - total0)
            return data
    raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout}\n{done.stderr}")


def lat_ms(wrk_result: dict[str, Any]) -> dict[str, float]:
    return {k: round(v / 1000, 3) for k, v in wrk_result["latency_us"].items()}


def accepted_counter(port: int) -> int:
    """The ingress's ``hookline_ingest_accepted_total`` (every process's, added up)."""
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("hookline_ingest_accepted_total"):
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


def start_ingress(
    b: Bench, name: str, cfg: Path, processes: int = 1, **env: str
) -> tuple[Proc, int]:
    port = free_port()
    argv = hookline("serve", "--config", str(cfg), "--host", "127.0.0.1", "--port", str(port))
    if processes != 1:
        argv += ["--processes", str(processes)]
    proc = b.procs.start(name, argv, **env)
    wait_http(proc, f"http://127.0.0.1:{port}/healthz")
    if processes > 1:
        # the arbiter and every one of its workers up
        wait_until(lambda: len(group_rss_mb(proc.pid)) >= processes + 1, 20, f"{name}'s processes")
        time.sleep(1.0)
    return proc, port


def start_bare(b: Bench, name: str, access_log: bool) -> tuple[Proc, int]:
    port = free_port()
    argv = [sys.executable, str(BENCH / "bare_app.py"), "--port", str(port)]
    if not access_log:
        argv.append("--no-access-log")
    proc = b.procs.start(name, argv)
    wait_http(proc, f"http://127.0.0.1:{port}/healthz")
    return proc, port


def warm_up(b: Bench, urls: Sequence[str]) -> float:
    """Two seconds of wrk on each server (hookline's claims then flushed); returns the best
    rate seen, a first estimate of how many events a round needs."""
    warm_file = b.tmp / "warmup.txt"
    write_wrk_file(warm_file, b.events(4000))
    best = 0.0
    for url in urls:
        best = max(best, wrk(url, warm_file, b.plan.warmup_seconds, b.plan)["rps"])
        b.r.flushdb()
    return max(best, 500.0)


def bare_round(b: Bench, proc: Proc, port: int) -> dict[str, Any]:
    """The bare app under wrk (the same requests each time: it does not care)."""
    warm_file = b.tmp / "warmup.txt"
    cpu0 = group_cpu_seconds(proc.pid)
    w = wrk(f"http://127.0.0.1:{port}{WEBHOOK_PATH}", warm_file, b.plan.sat_seconds, b.plan)
    cpu = group_cpu_seconds(proc.pid) - cpu0
    return {**w, "latency_ms": lat_ms(w), "cpu_us_per_req": 1e6 * cpu / max(1, w["requests"])}


def hookline_round(b: Bench, proc: Proc, port: int, estimate: float) -> dict[str, Any]:
    """hookline under wrk, every request a new event signed just before: events/s from RQ's
    queue list, checked equal to the ingress's own accepted counter; the CPU of every ingress
    process and of Redis per accepted event."""
    plan = b.plan
    k = int(estimate * plan.sat_seconds * 1.6) + 2000
    req_file = b.tmp / f"requests-{port}.txt"
    write_wrk_file(req_file, b.events(k))
    b.r.flushdb()
    counted0 = accepted_counter(port)
    cpu0, rcpu0 = group_cpu_seconds(proc.pid), redis_cpu(b.r)
    w = wrk(f"http://127.0.0.1:{port}{WEBHOOK_PATH}", req_file, plan.sat_seconds, plan)
    time.sleep(0.3)  # the requests wrk left in flight are answered (or dropped) by now
    cpu, rcpu = group_cpu_seconds(proc.pid) - cpu0, redis_cpu(b.r) - rcpu0
    accepted = accepted_counter(port) - counted0
    queued = int(b.r.llen(QUEUE_KEY))
    req_file.unlink()
    b.r.flushdb()
    secs = w["duration_us"] / 1e6
    return {
        **w,
        "accepted": accepted,
        "queued": queued,
        "accepted_equals_queued": accepted == queued,
        "accepted_per_s": queued / secs,
        "wrapped": w["sent"] > w["available"],
        "latency_ms": lat_ms(w),
        "cpu_s": cpu,
        "redis_cpu_s": rcpu,
        "cpu_us_per_event": 1e6 * cpu / max(1, queued),
        "redis_cpu_us_per_event": 1e6 * rcpu / max(1, queued),
    }


def paced(
    b: Bench, port: int, events: Sequence[Signed], rate: float, proc: Proc | None = None
) -> dict[str, Any]:
    """The open-loop client at ``rate``; for hookline, what was queued and the CPU per event
    of Redis and of the ingress processes."""
    b.r.flushdb()
    host = f"127.0.0.1:{port}"
    rcpu0 = redis_cpu(b.r)
    cpu0 = group_cpu_seconds(proc.pid) if proc else 0.0
    raw = [e.raw_http(host) for e in events]
    outs = run_paced("127.0.0.1", port, raw, rate, b.plan.connections)
    out = summarize(outs, len(events) / rate)
    if proc is not None:
        time.sleep(0.2)
        queued = int(b.r.llen(QUEUE_KEY))
        out["queued"] = queued
        out["redis_cpu_us_per_event"] = 1e6 * (redis_cpu(b.r) - rcpu0) / max(1, queued)
        out["cpu_us_per_event"] = 1e6 * (group_cpu_seconds(proc.pid) - cpu0) / max(1, queued)
    b.r.flushdb()
    return out


def best(rounds: Sequence[dict[str, Any]], key: str) -> dict[str, Any]:
    return max(rounds, key=lambda x: float(x[key]))


def per_event(rounds: Sequence[dict[str, Any]], what: str) -> float:
    """CPU ``what`` (seconds) over every round / events queued over every round, in us."""
    cpu = sum(float(x[what]) for x in rounds)
    return 1e6 * cpu / max(1, sum(int(x["queued"]) for x in rounds))


def rounds_summary(rounds: Sequence[dict[str, Any]]) -> dict[str, Any]:
    top = best(rounds, "accepted_per_s")
    return {
        "accepted_per_s": top["accepted_per_s"],
        "rps": top["rps"],
        "latency_ms": top["latency_ms"],
        "cpu_us_per_event": per_event(rounds, "cpu_s"),
        "redis_cpu_us_per_event": per_event(rounds, "redis_cpu_s"),
        "accepted_equals_queued": all(x["accepted_equals_queued"] for x in rounds),
        "not_2xx": sum(x["errors"]["status"] for x in rounds),
        "wrk_cpu_cores": top["wrk_cpu_cores"],
        "machine_busy_cores": top["machine_busy_cores"],
        "wrapped": any(x["wrapped"] for x in rounds),
    }


# -- 1: the ingress against the bare app, access log on and off ---------------------------------


def phase_ingress(b: Bench) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for access_log in (True, False):
        label = "access_log_on" if access_log else "access_log_off"
        log(f"ingress, one process, access log {'ON' if access_log else 'OFF'} on both servers")
        cfg = b.configs["default" if access_log else "no_access_log"]
        bare, bare_port = start_bare(b, f"bare_{label}", access_log)
        hook, hl_port = start_ingress(b, f"ingress_{label}", cfg)
        estimate = warm_up(
            b,
            [
                f"http://127.0.0.1:{bare_port}{WEBHOOK_PATH}",
                f"http://127.0.0.1:{hl_port}{WEBHOOK_PATH}",
            ],
        )
        bare_rounds, hl_rounds = [], []
        for i in range(b.plan.rounds):
            bare_rounds.append(bare_round(b, bare, bare_port))
            hl_rounds.append(hookline_round(b, hook, hl_port, estimate))
            estimate = max(estimate, hl_rounds[-1]["rps"])
            log(
                f"  round {i + 1}: bare {bare_rounds[-1]['rps']:,.0f} req/s, hookline"
                f" {hl_rounds[-1]['accepted_per_s']:,.0f} accepted/s (accepted"
                f" {hl_rounds[-1]['accepted']} = queued {hl_rounds[-1]['queued']}:"
                f" {hl_rounds[-1]['accepted_equals_queued']})"
            )
        top_bare = best(bare_rounds, "rps")
        hl = rounds_summary(hl_rounds)
        # latency at half the saturation rate: the open-loop client, hookline then bare
        half_rate = hl["accepted_per_s"] / 2
        events = b.events(int(half_rate * b.plan.half_seconds))
        log(f"  half rate: {half_rate:,.0f} events/s for {b.plan.half_seconds:.0f} s each")
        half_hl = paced(b, hl_port, events, half_rate, hook)
        half_bare = paced(b, bare_port, events, half_rate)
        out[label] = {
            "bare_rps": top_bare["rps"],
            "bare_latency_ms": top_bare["latency_ms"],
            "bare_cpu_us_per_req": top_bare["cpu_us_per_req"],
            "hookline": hl,
            "ratio": hl["accepted_per_s"] / top_bare["rps"],
            "half_rate": half_rate,
            "half": {"hookline": half_hl, "bare": half_bare},
            "rounds": {"bare": bare_rounds, "hookline": hl_rounds},
            "peak_rss_mb": {"ingress": hook.sample_rss(), "bare_app": bare.sample_rss()},
        }
        hook.stop()
        bare.stop()
    return out


# -- 1b: traces off and on -----------------------------------------------------------------------


def phase_traces(b: Bench) -> dict[str, Any]:
    """The ingress with ``[telemetry] traces`` off (the default) and on, its spans sent over
    OTLP/HTTP to a local stand-in collector, each against the bare app, rounds alternating."""
    log("ingress: traces off and on (OTLP over HTTP to a local sink), against the bare app")
    sink_port = free_port()
    sink = b.procs.start(
        "otlp_sink", [sys.executable, str(BENCH / "otlp_sink.py"), "--port", str(sink_port)]
    )
    wait_http(sink, f"http://127.0.0.1:{sink_port}/healthz")
    bare, bare_port = start_bare(b, "bare_traces", True)
    servers = {
        "off": start_ingress(b, "ingress_traces_off", b.configs["default"]),
        "on": start_ingress(
            b,
            "ingress_traces_on",
            b.configs["traces"],
            OTEL_TRACES_EXPORTER="otlp",
            OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{sink_port}",
            OTEL_SERVICE_NAME="hookline-bench",
        ),
    }
    urls = [f"http://127.0.0.1:{bare_port}{WEBHOOK_PATH}"] + [
        f"http://127.0.0.1:{port}{WEBHOOK_PATH}" for _, port in servers.values()
    ]
    estimate = warm_up(b, urls)
    bare_rounds: list[dict[str, Any]] = []
    rounds: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
    # two rounds at least (off then on, then on then off): the difference is the figure here
    for i in range(max(2, b.plan.rounds)):
        bare_rounds.append(bare_round(b, bare, bare_port))
        for name in ("off", "on") if i % 2 == 0 else ("on", "off"):
            proc, port = servers[name]
            rounds[name].append(hookline_round(b, proc, port, estimate))
        log(
            f"  round {i + 1}: bare {bare_rounds[-1]['rps']:,.0f} req/s, traces off"
            f" {rounds['off'][-1]['accepted_per_s']:,.0f}, on"
            f" {rounds['on'][-1]['accepted_per_s']:,.0f} accepted/s"
        )
    time.sleep(1.0)  # the last spans' batch is sent (every 0.5 s when full, else 5 s)
    with urllib.request.urlopen(f"http://127.0.0.1:{sink_port}/count", timeout=5) as resp:
        sent = json.loads(resp.read())
    top_bare = best(bare_rounds, "rps")
    out: dict[str, Any] = {"bare_rps": top_bare["rps"], "otlp_received": sent}
    for name, (proc, _port) in servers.items():
        summary = rounds_summary(rounds[name])
        out[f"traces_{name}"] = {
            **summary,
            "ratio": summary["accepted_per_s"] / top_bare["rps"],
            "rounds": rounds[name],
        }
        proc.stop()
    out["on_vs_off"] = out["traces_on"]["accepted_per_s"] / out["traces_off"]["accepted_per_s"]
    out["cpu_on_vs_off"] = (
        out["traces_on"]["cpu_us_per_event"] / out["traces_off"]["cpu_us_per_event"]
    )
    bare.stop()
    sink.stop()
    return out


# -- 2: serve --processes 2 against --processes 1 ------------------------------------------------


def phase_processes(b: Bench) -> dict[str, Any]:
    log("ingress: hookline serve --processes 1 and --processes 2, rounds interleaved")
    cfg = b.configs["default"]
    servers = {n: start_ingress(b, f"serve_processes_{n}", cfg, n) for n in (1, 2)}
    estimate = warm_up(b, [f"http://127.0.0.1:{p}{WEBHOOK_PATH}" for _, p in servers.values()])
    rounds: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
    for i in range(b.plan.rounds):
        for n, (proc, port) in servers.items():
            rounds[n].append(hookline_round(b, proc, port, estimate * n))
            x = rounds[n][-1]
            log(
                f"  round {i + 1}, --processes {n}: {x['accepted_per_s']:,.0f} accepted/s,"
                f" {x['cpu_us_per_event']:.0f} us CPU/event, wrk {x['wrk_cpu_cores']:.2f} cores,"
                f" machine {x['machine_busy_cores']:.2f} of {os.cpu_count()} cores busy"
            )
    out: dict[str, Any] = {}
    for n, (proc, _port) in servers.items():
        out[f"processes_{n}"] = {
            **rounds_summary(rounds[n]),
            "rounds": rounds[n],
            "peak_rss_mb_by_process": sorted(group_rss_mb(proc.pid).values(), reverse=True),
        }
        proc.stop()
    p1, p2 = out["processes_1"], out["processes_2"]
    out["events_ratio"] = p2["accepted_per_s"] / p1["accepted_per_s"]
    out["cpu_per_event_ratio"] = p2["cpu_us_per_event"] / p1["cpu_us_per_event"]
    return out


# -- 4: acknowledgements that wait for a replica -------------------------------------------------


def phase_ack(b: Bench) -> dict[str, Any]:
    log("acknowledgements: ack_replicas = 1 against a real replica, next to ack_replicas = 0")
    replica, replica_port = start_redis(
        b.procs, "redis_replica", b.tmp / "redis-replica", replica_of=b.redis_port
    )

    def online() -> bool:
        info: Any = b.r.info("replication")
        slave = info.get("slave0")
        return isinstance(slave, dict) and slave.get("state") == "online"

    wait_until(online, 30, "the replica online")
    servers = {
        n: start_ingress(b, f"ingress_ack{n}", b.configs["default" if n == 0 else "ack1"])
        for n in (0, 1)
    }
    estimate = warm_up(b, [f"http://127.0.0.1:{p}{WEBHOOK_PATH}" for _, p in servers.values()])
    rounds: dict[int, list[dict[str, Any]]] = {0: [], 1: []}
    for i in range(b.plan.rounds):
        for n, (proc, port) in servers.items():
            rounds[n].append(hookline_round(b, proc, port, estimate))
            x = rounds[n][-1]
            log(
                f"  round {i + 1}, ack_replicas = {n}: {x['accepted_per_s']:,.0f} accepted/s,"
                f" p99 {x['latency_ms']['p99']:.1f} ms, {x['errors']['status']} not 2xx"
            )
    out: dict[str, Any] = {
        f"ack_replicas_{n}": {**rounds_summary(rounds[n]), "rounds": rounds[n]} for n in rounds
    }
    a0, a1 = out["ack_replicas_0"], out["ack_replicas_1"]
    rate = min(a0["accepted_per_s"], a1["accepted_per_s"]) / 2
    events = b.events(int(rate * b.plan.half_seconds))
    log(f"  same fixed rate for both: {rate:,.0f} events/s for {b.plan.half_seconds:.0f} s each")
    for n, (proc, port) in servers.items():
        out[f"ack_replicas_{n}"]["half"] = paced(b, port, events, rate, proc)
        b.r.flushdb()
        proc.stop()
    out["half_rate"] = rate
    out["events_ratio"] = a1["accepted_per_s"] / a0["accepted_per_s"]
    out["replica_port"] = replica_port
    out["ack_replicas_timeout_ms"] = b.plan.ack_timeout_ms
    replica.stop()
    return out


# -- 5: workers draining a backlog ---------------------------------------------------------------


def fill_backlog(b: Bench, n: int) -> float:
    """Queue ``n`` new events with the ingress's own claim-and-enqueue script: no HTTP."""
    from shared.enqueue import JobSpec, claim_script, parse_reply
    from shared.envelope import Envelope, redact_headers

    s = settings(b.redis_url)
    script = claim_script(JobSpec.from_settings(s))
    sensitive = s.sources[SOURCE].scheme.sensitive()
    sha = b.r.script_load(script.text)
    events = b.events(n)
    started = time.perf_counter()
    pipe = b.r.pipeline(transaction=False)
    accepted = 0
    for i, e in enumerate(events, 1):
        headers = [
            ("Host", "127.0.0.1:8080"),
            ("Content-Type", "application/json"),
            ("X-MCC-Timestamp", e.timestamp),
            ("X-MCC-Signature", e.signature),
            ("Content-Length", str(len(e.body))),
        ]
        envelope = Envelope(
            source=SOURCE,
            event_id=e.event_id,
            received_at=time.time(),
            headers=redact_headers(headers, sensitive),
            body=e.body,
            remote="127.0.0.1",
        )
        keys_, argv = script.call(envelope)
        pipe.evalsha(sha, len(keys_), *keys_, *argv)
        if i % 500 == 0 or i == n:
            accepted += sum(parse_reply(x).accepted for x in pipe.execute())
    if accepted != n:
        raise RuntimeError(f"backlog: {accepted} of {n} accepted")
    return n / (time.perf_counter() - started)


def drain_rate(n: int, bodies: bool) -> dict[str, Any]:
    """Events/s from the first commit to the last (``processed_at``), and a check that every
    event has its row, its payment and its body (or none: retention_days = 0), and nothing
    died."""
    import psycopg

    with psycopg.connect(PG_DSN) as conn:
        first, last = conn.execute(
            "SELECT extract(epoch FROM min(processed_at))::float8,"
            " extract(epoch FROM max(processed_at))::float8 FROM webhook_events"
        ).fetchone() or (None, None)
        at_first = conn.execute(
            "SELECT count(*) FROM webhook_events WHERE processed_at = (SELECT min(processed_at)"
            " FROM webhook_events)"
        ).fetchone()
        row = conn.execute("SELECT count(*) FROM event_bodies").fetchone()
    counts = {**table_counts(), "event_bodies": int(row[0]) if row else -1}
    expected = {"webhook_events": n, "payments": n, "dead_letters": 0}
    expected["event_bodies"] = n if bodies else 0
    span = (last - first) if first is not None and last is not None else 0.0
    after_first = n - int(at_first[0] if at_first else 0)
    return {
        "events_per_s": after_first / span if span > 0 else 0.0,
        "commit_span_s": span,
        "counts": counts,
        "complete": counts == expected,
    }


def run_drain(b: Bench, name: str, argvs: list[list[str]], bodies: bool) -> dict[str, Any]:
    b.r.flushdb()
    truncate_tables()
    n = b.plan.backlog
    enqueue_rate = fill_backlog(b, n)
    rcpu0 = redis_cpu(b.r)
    started = time.monotonic()
    running = [b.procs.start(f"{name}-{i + 1}", argv) for i, argv in enumerate(argvs)]
    for p in running:
        if not p.wait(180):
            raise RuntimeError(f"{p.name} did not finish draining; see {p.log}")
        if p.popen.returncode != 0:
            raise RuntimeError(f"{p.name} exited {p.popen.returncode}; see {p.log}")
    wall = max(p.ended or time.monotonic() for p in running) - started
    rcpu = redis_cpu(b.r) - rcpu0
    result = drain_rate(n, bodies)
    result["processes"] = len(argvs)
    result["wall_s"] = wall
    result["wall_events_per_s"] = n / wall
    result["left_in_queue"] = int(b.r.llen(QUEUE_KEY))
    result["enqueue_per_s"] = enqueue_rate
    result["peak_rss_mb"] = [p.peak_rss_mb for p in running]
    result["cpu_ms_per_event"] = 1000 * sum(p.cpu_s or 0.0 for p in running) / n
    result["redis_cpu_us_per_event"] = 1e6 * rcpu / n
    log(
        f"  {name}: {result['events_per_s']:,.0f} events/s (first->last commit),"
        f" {result['wall_events_per_s']:,.0f}/s incl. start-up; Redis"
        f" {result['redis_cpu_us_per_event']:.0f} us/event; complete={result['complete']}"
    )
    return result


def phase_workers(b: Bench) -> dict[str, Any]:
    log(f"workers: draining {b.plan.backlog:,} events into PostgreSQL, event log on and off")
    ceiling = [
        sys.executable,
        str(BENCH / "drain_ceiling.py"),
        "--redis-url",
        b.redis_url,
        "--dsn",
        PG_DSN,
        "--queue",
        QUEUE,
        "--batch",
        str(b.plan.ceiling_batch),
    ]
    on = hookline("worker", "--burst", "--config", str(b.configs["default"]))
    off = hookline("worker", "--burst", "--config", str(b.configs["no_archive"]))
    out: dict[str, Any] = {
        "backlog": b.plan.backlog,
        "archive_on": {
            "ceiling": run_drain(b, "drain_ceiling", [ceiling], True),
            "workers_1": run_drain(b, "worker_x1", [on], True),
            "workers_2": run_drain(b, "worker_x2", [on, on], True),
        },
        "archive_off": {
            "ceiling": run_drain(b, "drain_ceiling_no_bodies", [[*ceiling, "--no-bodies"]], False),
            "workers_2": run_drain(b, "worker_x2_no_archive", [off, off], False),
        },
    }
    for mode in ("archive_on", "archive_off"):
        m = out[mode]
        c = m["ceiling"]["events_per_s"]
        m["workers_2_vs_ceiling"] = m["workers_2"]["events_per_s"] / c if c else 0.0
        if "workers_1" in m:
            m["workers_1_vs_ceiling"] = m["workers_1"]["events_per_s"] / c if c else 0.0
    b.r.flushdb()
    truncate_tables()
    return out


# -- 6: ack -> effect ----------------------------------------------------------------------------


def phase_e2e(b: Bench) -> dict[str, Any]:
    import psycopg

    plan = b.plan
    b.r.flushdb()
    truncate_tables()
    cfg = b.configs["default"]
    hook, port = start_ingress(b, "e2e_ingress", cfg)
    workers = [
        b.procs.start(f"e2e_worker_{i + 1}", hookline("worker", "--config", str(cfg)))
        for i in range(plan.e2e_workers)
    ]
    wait_until(
        lambda: Worker.count(connection=b.r) >= plan.e2e_workers, 30, "the workers registering"
    )
    host = f"127.0.0.1:{port}"

    def processed() -> int:
        return table_counts()["webhook_events"]

    warm = b.events(200)
    run_paced("127.0.0.1", port, [e.raw_http(host) for e in warm], 100.0, 8)
    wait_until(lambda: processed() >= len(warm), 30, "the warm-up events being applied")

    n = int(plan.e2e_rate * plan.e2e_seconds)
    events = b.events(n)
    log(
        f"end to end: {n:,} events at {plan.e2e_rate:,.0f}/s, {plan.e2e_workers} long-running"
        " workers"
    )
    rcpu0, icpu0 = redis_cpu(b.r), group_cpu_seconds(hook.pid)
    wcpu0 = sum(group_cpu_seconds(w.pid) for w in workers)
    outs = run_paced(
        "127.0.0.1", port, [e.raw_http(host) for e in events], plan.e2e_rate, plan.connections
    )
    acks = {
        e.event_id: o.answered_wall
        for e, o in zip(events, outs, strict=True)
        if o is not None and o.status == 202
    }
    # the workers may apply fewer than e2e_rate events/s: wait while they make progress
    target, last, still = len(warm) + len(acks), -1, time.monotonic()
    deadline = time.monotonic() + plan.e2e_wait_cap
    while time.monotonic() < deadline:
        now_done = processed()
        if now_done >= target:
            break
        if now_done != last:
            last, still = now_done, time.monotonic()
        elif time.monotonic() - still > 15:
            break
        time.sleep(0.25)
    rcpu, icpu = redis_cpu(b.r) - rcpu0, group_cpu_seconds(hook.pid) - icpu0
    wcpu = sum(group_cpu_seconds(w.pid) for w in workers) - wcpu0
    with psycopg.connect(PG_DSN) as conn:
        rows = conn.execute(
            "SELECT event_id, extract(epoch FROM received_at)::float8,"
            " extract(epoch FROM processed_at)::float8 FROM webhook_events"
            " WHERE event_id = ANY(%s)",
            (list(acks),),
        ).fetchall()
    ack_to_effect = [(done - acks[eid]) * 1000 for eid, _recv, done in rows]
    receipt_to_effect = [(done - recv) * 1000 for _eid, recv, done in rows]
    done_at = sorted(done for _eid, _recv, done in rows)
    worker_rate = (len(done_at) - 1) / (done_at[-1] - done_at[0]) if len(done_at) > 1 else 0.0
    client = summarize(outs, plan.e2e_seconds)

    def pcts(xs: Sequence[float]) -> dict[str, float | None]:
        if not xs:
            return {"p50": None, "p99": None, "max": None, "min": None}
        return {
            "p50": round(pct(xs, 50), 2),
            "p99": round(pct(xs, 99), 2),
            "max": round(max(xs), 2),
            "min": round(min(xs), 2),
        }

    rss = {"ingress": hook.sample_rss(), "workers": [w.sample_rss() for w in workers]}
    for w in workers:
        w.stop()
    hook.stop()
    applied = max(1, len(rows))
    b.r.flushdb()
    truncate_tables()
    return {
        "rate": plan.e2e_rate,
        "workers": plan.e2e_workers,
        "sent": n,
        "acked": len(acks),
        "applied": len(rows),
        "complete": len(rows) == len(acks) == n,
        "worker_events_per_s": worker_rate,
        "ack_to_effect_ms": pcts(ack_to_effect),
        "receipt_to_effect_ms": pcts(receipt_to_effect),
        "ack_latency_ms": client["latency_ms"],
        "statuses": client["statuses"],
        "achieved_rps": client["achieved_rps"],
        "redis_cpu_us_per_event": 1e6 * rcpu / applied,
        "ingress_cpu_us_per_event": 1e6 * icpu / applied,
        "workers_cpu_us_per_event": 1e6 * wcpu / applied,
        "peak_rss_mb": rss,
    }


# -- 8: profiles ---------------------------------------------------------------------------------


def phase_profile(b: Bench, out_dir: Path) -> dict[str, Any]:
    """py-spy on the ingress under wrk saturation (CPU samples) and on one ``--burst`` worker
    draining a backlog (wall-clock samples, ``--idle``: time waiting on PostgreSQL and Redis
    counts). Separate runs: the profiler slows what it watches."""
    plan = b.plan
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        log("py-spy not found (.venv/bin/pip install py-spy): no profile")
        return {}
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = b.configs["default"]
    b.r.flushdb()
    hook, port = start_ingress(b, "profile_ingress", cfg)
    req_file = b.tmp / "profile_requests.txt"
    write_wrk_file(req_file, b.events(2500 * plan.profile_seconds))
    ingress_raw = out_dir / "ingress.collapsed.txt"
    url = f"http://127.0.0.1:{port}{WEBHOOK_PATH}"
    load = threading.Thread(target=wrk, args=(url, req_file, plan.profile_seconds, plan))
    log(f"profile: ingress under wrk for {plan.profile_seconds} s")
    load.start()
    time.sleep(1.0)  # sample the steady state, not the first connections
    spy = b.procs.start(
        "py-spy-ingress",
        [
            py_spy,
            "record",
            "--pid",
            str(hook.pid),
            "--duration",
            str(plan.profile_seconds - 2),
            "--rate",
            "200",
            "--format",
            "raw",
            "--output",
            str(ingress_raw),
        ],
    )
    load.join()
    result = {}
    spy.wait(30)
    hook.stop()
    if ingress_raw.exists():
        result["ingress"] = summarize_collapsed(ingress_raw, buckets=INGRESS_BUCKETS)
    else:
        log(f"profile: no ingress profile; see {spy.log}")
    b.r.flushdb()
    truncate_tables()
    fill_backlog(b, plan.profile_backlog)
    worker_raw = out_dir / "worker.collapsed.txt"
    log(f"profile: one worker draining {plan.profile_backlog} events")
    spy = b.procs.start(
        "py-spy-worker",
        [
            py_spy,
            "record",
            "--idle",
            "--rate",
            "200",
            "--format",
            "raw",
            "--output",
            str(worker_raw),
            "--",
            *hookline("worker", "--burst", "--config", str(cfg)),
        ],
    )
    spy.wait(240)
    if worker_raw.exists():
        result["worker"] = summarize_collapsed(worker_raw, buckets=WORKER_BUCKETS)
    else:
        log(f"profile: no worker profile; see {spy.log}")
    b.r.flushdb()
    truncate_tables()
    return result


# -- report ---------------------------------------------------------------------------------------


def phase_footprint(b: Bench) -> dict[str, Any]:
    """Redis bytes per queued and applied event and per claim, commands and Redis CPU per
    event on each side, on a redis-server of its own (``bench/footprint.py``)."""
    folder = b.tmp / "footprint"
    folder.mkdir(exist_ok=True)
    return footprint.measure(b.procs, folder, b.plan.backlog, b.plan.claims)


def phase_cluster(b: Bench) -> dict[str, Any]:
    """Redis CPU and commands per event on each primary, one primary against three (Redis
    Cluster, ``redis_shards`` 1 and 3), and the ceilings they imply (``bench/cluster.py``)."""
    folder = b.tmp / "cluster"
    folder.mkdir(exist_ok=True)
    return cluster.measure(b.procs, folder, b.plan.cluster_events, b.plan.cluster_rate)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def redis_per_event(res: dict[str, Any]) -> dict[str, Any]:
    """Redis CPU per event, ingress side and worker side, and the events/s one primary's core
    would allow: 1 s / (ingress + worker)."""
    ing = res["ingress"]["access_log_on"]
    sat = ing["hookline"]["redis_cpu_us_per_event"]
    half = ing["half"]["hookline"]["redis_cpu_us_per_event"]
    wk = res["workers"]["archive_on"]
    w2 = wk["workers_2"]["redis_cpu_us_per_event"]
    w1 = wk["workers_1"]["redis_cpu_us_per_event"]
    out = {
        "ingress_at_saturation_us": sat,
        "ingress_at_half_rate_us": half,
        "worker_2_processes_us": w2,
        "worker_1_process_us": w1,
        "ceiling_events_per_s_saturation": 1e6 / (sat + w2),
        "ceiling_events_per_s_half_rate": 1e6 / (half + w2),
        "brief_us": BRIEF_REDIS_US,
        "brief_ceiling_events_per_s": 1e6 / sum(BRIEF_REDIS_US.values()),
    }
    if "e2e" in res:
        out["end_to_end_us"] = res["e2e"]["redis_cpu_us_per_event"]
        out["end_to_end_rate"] = res["e2e"]["rate"]
    return out


def report(res: dict[str, Any]) -> list[str]:
    ing, procs, ack, wk, e2e = (
        res["ingress"],
        res["processes"],
        res["ack"],
        res["workers"],
        res["e2e"],
    )
    on, off = ing["access_log_on"], ing["access_log_off"]
    won, woff = wk["archive_on"], wk["archive_off"]
    red = res["redis_cpu"] = redis_per_event(res)
    rss_worker = max(
        x
        for x in (
            *won["workers_1"]["peak_rss_mb"],
            *won["workers_2"]["peak_rss_mb"],
            *woff["workers_2"]["peak_rss_mb"],
            *e2e["peak_rss_mb"]["workers"],
        )
        if x
    )
    rss_ingress = max(
        x
        for x in (
            on["peak_rss_mb"]["ingress"],
            off["peak_rss_mb"]["ingress"],
            e2e["peak_rss_mb"]["ingress"],
        )
        if x
    )
    t = TARGETS
    half = on["half"]["hookline"]["latency_ms"]
    checks = {
        "ingress_vs_ceiling": on["ratio"] >= t["ingress_vs_ceiling"],
        "ingress_vs_ceiling_log_off": off["ratio"] >= t["ingress_vs_ceiling"],
        "p99_half_ms": half["p99"] <= t["p99_half_ms"],
        "p99_half_ms_log_off": off["half"]["hookline"]["latency_ms"]["p99"] <= t["p99_half_ms"],
        "workers2_eps": won["workers_2"]["events_per_s"] >= t["workers2_eps"],
        "workers2_vs_ceiling": won["workers_2_vs_ceiling"] >= t["workers2_vs_ceiling"],
        "workers2_vs_ceiling_archive_off": woff["workers_2_vs_ceiling"] >= t["workers2_vs_ceiling"],
        "e2e_p99_ms": (e2e["ack_to_effect_ms"]["p99"] or float("inf")) <= t["e2e_p99_ms"]
        and e2e["complete"],
        "rss_ingress_mb": rss_ingress <= t["rss_ingress_mb"],
        "rss_worker_mb": rss_worker <= t["rss_worker_mb"],
        "accepted_equals_queued": all(x["hookline"]["accepted_equals_queued"] for x in (on, off))
        and all(procs[f"processes_{n}"]["accepted_equals_queued"] for n in (1, 2))
        and all(ack[f"ack_replicas_{n}"]["accepted_equals_queued"] for n in (0, 1)),
    }
    res["checks"] = {k: verdict(v) for k, v in checks.items()}
    c = res["checks"]
    p = res["plan"]
    rows: list[tuple[str, str, str, str]] = []

    def head(text: str) -> None:
        rows.append((text, "", "", ""))

    def row(name: str, value: str, target: str = "", result: str = "") -> None:
        rows.append((f"  {name}", value, target, result))

    def ms3(d: dict[str, Any]) -> str:
        return f"{d['p50']:.2f} / {d['p99']:.2f} / {d['p999']:.2f} ms"

    head(
        f"1. INGRESS, one process (wrk, {p['connections']} conns, {p['sat_seconds']} s,"
        f" best of {p['rounds']})"
    )
    for label, x, key in (("access log ON both", on, ""), ("access log OFF both", off, "_log_off")):
        h = x["hookline"]
        not202 = sum(v for k, v in x["half"]["hookline"]["statuses"].items() if k != "202")
        row(
            f"{label}: hookline / bare",
            f"{h['accepted_per_s']:,.0f} / {x['bare_rps']:,.0f} /s = {100 * x['ratio']:.1f} %",
            f">= {100 * TARGETS['ingress_vs_ceiling']:.0f} %",
            c[f"ingress_vs_ceiling{key}"],
        )
        row(
            f"{label}: CPU per request hookline / bare",
            f"{h['cpu_us_per_event']:.0f} / {x['bare_cpu_us_per_req']:.0f} us",
        )
        row(
            f"{label}: @ saturation p50/p99/p99.9 hookline",
            f"{ms3(h['latency_ms'])} (bare {ms3(x['bare_latency_ms'])})",
        )
        row(
            f"{label}: @ half rate ({x['half_rate']:,.0f}/s) p50/p99/p99.9",
            f"{ms3(x['half']['hookline']['latency_ms'])}"
            f" ({x['half']['hookline']['over_20ms']} > 20 ms, {not202} not 202)",
            "p99 <= 20 ms",
            c[f"p99_half_ms{key}"],
        )
        row(f"{label}: @ same rate, bare p50/p99/p99.9", ms3(x["half"]["bare"]["latency_ms"]))
    row(
        "access log OFF / ON (hookline events/s)",
        f"{100 * off['hookline']['accepted_per_s'] / on['hookline']['accepted_per_s']:.1f} %",
    )
    row(
        "accepted (ingress counter) == queued (RQ list), every round",
        "exact" if checks["accepted_equals_queued"] else "DIFFERS (see JSON)",
        "exact",
        c["accepted_equals_queued"],
    )
    tr = res["traces"]
    head("1b. TRACES ([telemetry] traces, spans over OTLP/HTTP to a local sink; access log on)")
    for name in ("off", "on"):
        x = tr[f"traces_{name}"]
        row(
            f"traces {name.upper()}: hookline / bare",
            f"{x['accepted_per_s']:,.0f} / {tr['bare_rps']:,.0f} /s = {100 * x['ratio']:.1f} %,"
            f" {x['cpu_us_per_event']:.0f} us CPU/event",
        )
    row(
        "traces ON / OFF: events/s, CPU per event",
        f"{100 * tr['on_vs_off']:.1f} %, {100 * tr['cpu_on_vs_off']:.1f} %"
        f" ({tr['otlp_received']['requests']} OTLP requests,"
        f" {tr['otlp_received']['bytes']:,} bytes received)",
    )
    row(
        "traces OFF here / phase 1's ingress (events/s ratio to bare)",
        f"{100 * tr['traces_off']['ratio']:.1f} % / {100 * on['ratio']:.1f} %",
    )
    head("2. INGRESS PROCESSES (serve --processes N, access log on, same wrk)")
    p1, p2 = procs["processes_1"], procs["processes_2"]
    for n, x in ((1, p1), (2, p2)):
        row(
            f"--processes {n}: events/s, CPU per event, p99",
            f"{x['accepted_per_s']:,.0f} /s, {x['cpu_us_per_event']:.0f} us,"
            f" {x['latency_ms']['p99']:.1f} ms",
        )
        row(
            f"--processes {n}: cores used by wrk / by the machine",
            f"{x['wrk_cpu_cores']:.2f} / {x['machine_busy_cores']:.2f} of {res['env']['cpus']}",
        )
    row(
        "2 / 1 processes: events/s, CPU per event",
        f"{100 * procs['events_ratio']:.1f} %, {100 * procs['cpu_per_event_ratio']:.1f} %",
    )
    head("3. REDIS CPU PER EVENT (INFO cpu, the bench's own Redis)")
    row(
        "ingress side at saturation / at half rate",
        f"{red['ingress_at_saturation_us']:.1f} / {red['ingress_at_half_rate_us']:.1f} us"
        f" (brief: ~{BRIEF_REDIS_US['ingress']:.0f} us)",
    )
    row(
        "worker side, 2 workers / 1 worker",
        f"{red['worker_2_processes_us']:.1f} / {red['worker_1_process_us']:.1f} us"
        f" (brief: ~{BRIEF_REDIS_US['worker']:.0f} us)",
    )
    row(
        "one primary's ceiling: 1 s / (ingress + worker)",
        f"{red['ceiling_events_per_s_saturation']:,.0f} events/s (saturation),"
        f" {red['ceiling_events_per_s_half_rate']:,.0f} (half rate);"
        f" brief's figures: {red['brief_ceiling_events_per_s']:,.0f}",
    )
    if "end_to_end_us" in red:
        row(
            f"both sides at {red['end_to_end_rate']:,.0f}/s end to end",
            f"{red['end_to_end_us']:.1f} us",
        )
    head(
        f"4. ACKS THAT WAIT (ack_replicas = 1, a real replica, timeout"
        f" {ack['ack_replicas_timeout_ms']} ms)"
    )
    a0, a1 = ack["ack_replicas_0"], ack["ack_replicas_1"]
    for n, x in ((0, a0), (1, a1)):
        hh = x["half"]
        not202 = sum(v for k, v in hh["statuses"].items() if k != "202")
        row(
            f"ack_replicas = {n} @ saturation: events/s, p50 / p99",
            f"{x['accepted_per_s']:,.0f} /s, {x['latency_ms']['p50']:.1f} /"
            f" {x['latency_ms']['p99']:.1f} ms ({x['not_2xx']} not 2xx)",
        )
        row(
            f"ack_replicas = {n} @ {ack['half_rate']:,.0f}/s: p50 / p99",
            f"{hh['latency_ms']['p50']:.2f} / {hh['latency_ms']['p99']:.2f} ms ({not202} not 202)",
        )
        row(
            f"ack_replicas = {n}: Redis CPU per event (replica attached)",
            f"{x['redis_cpu_us_per_event']:.1f} us",
        )
    row("ack_replicas 1 / 0 (events/s)", f"{100 * ack['events_ratio']:.1f} %")
    head(f"5. WORKERS draining {wk['backlog']:,} events into PostgreSQL")
    for label, m, key in (("event log ON", won, ""), ("event log OFF", woff, "_archive_off")):
        ceil, w2 = m["ceiling"], m["workers_2"]
        row(
            f"{label}: workers x2 / drain-loop ceiling",
            f"{w2['events_per_s']:,.0f} / {ceil['events_per_s']:,.0f} /s"
            f" = {100 * m['workers_2_vs_ceiling']:.1f} %",
            f">= {100 * TARGETS['workers2_vs_ceiling']:.0f} %",
            c[f"workers2_vs_ceiling{key}"],
        )
        row(
            f"{label}: CPU per event ceiling / workers x2",
            f"{ceil['cpu_ms_per_event']:.2f} / {w2['cpu_ms_per_event']:.2f} ms (incl. start-up)",
        )
    w1 = won["workers_1"]
    row(
        "event log ON: worker x1 / ceiling",
        f"{w1['events_per_s']:,.0f} /s = {100 * won['workers_1_vs_ceiling']:.1f} %,"
        f" {w1['cpu_ms_per_event']:.2f} ms CPU/event",
    )
    row(
        "event log ON: workers x2",
        f"{won['workers_2']['events_per_s']:,.0f} events/s",
        ">= 1,000/s",
        c["workers2_eps"],
    )
    row(
        "event log OFF / ON (workers x2 events/s)",
        f"{100 * woff['workers_2']['events_per_s'] / won['workers_2']['events_per_s']:.1f} %",
    )
    row(
        "incl. process start-up x1 / x2",
        f"{w1['wall_events_per_s']:,.0f} / {won['workers_2']['wall_events_per_s']:,.0f} events/s",
    )
    head(f"6. END TO END at {e2e['rate']:,.0f} events/s, {e2e['workers']} workers")
    a2e, r2e = e2e["ack_to_effect_ms"], e2e["receipt_to_effect_ms"]
    row(
        "ack -> effect p50 / p99 / max",
        f"{a2e['p50']} / {a2e['p99']} / {a2e['max']} ms",
        "p99 <= 250 ms",
        c["e2e_p99_ms"],
    )
    row("receipt -> effect p50 / p99 / max", f"{r2e['p50']} / {r2e['p99']} / {r2e['max']} ms")
    row(
        "sent / acked 202 / applied; workers' rate",
        f"{e2e['sent']:,} / {e2e['acked']:,} / {e2e['applied']:,};"
        f" {e2e['worker_events_per_s']:,.0f} events/s"
        f" (client achieved {e2e['achieved_rps']:,.0f}/s)",
        "",
        "" if e2e["complete"] else "INCOMPLETE",
    )
    row(
        "CPU per event: ingress / workers / Redis",
        f"{e2e['ingress_cpu_us_per_event']:.0f} / {e2e['workers_cpu_us_per_event']:.0f} /"
        f" {e2e['redis_cpu_us_per_event']:.0f} us",
    )
    head("7. PEAK RSS (VmHWM)")
    row("ingress (one process)", f"{rss_ingress:.1f} MB", "<= 120 MB", c["rss_ingress_mb"])
    row("worker (max over all)", f"{rss_worker:.1f} MB", "<= 150 MB", c["rss_worker_mb"])
    row(
        "--processes 2, each process (arbiter too)",
        " / ".join(f"{x:.1f}" for x in p2["peak_rss_mb_by_process"]) + " MB",
    )
    row(
        "bare app / drain ceiling",
        f"{on['peak_rss_mb']['bare_app']:.1f} / {won['ceiling']['peak_rss_mb'][0]:.1f} MB",
    )
    width = max(len(r[0]) for r in rows) + 2
    vwidth = max(len(r[1]) for r in rows) + 2
    lines = [f"{'metric':<{width}}{'value':<{vwidth}}{'target':<15}result"]
    lines += [f"{a:<{width}}{b:<{vwidth}}{c:<15}{d}".rstrip() for a, b, c, d in rows]
    lines.append(
        f"machine: {res['env']['cpus']} cores shared by servers, Redis, PostgreSQL, the load"
        f" generator and other tenants; load avg at start {res['env']['loadavg_start'][0]:.2f},"
        f" at end {res['env'].get('loadavg_end', (float('nan'),))[0]:.2f}"
    )
    return lines


def environment() -> dict[str, Any]:
    from importlib.metadata import version

    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--short", "--untracked-files=no"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split("\n")
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
    redis_version = subprocess.run(
        ["redis-server", "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return {
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "commit": commit,
        "modified_files": [line.strip() for line in dirty if line.strip()],
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "loadavg_start": os.getloadavg(),
        "wrk": (wrk_version.stdout or wrk_version.stderr).splitlines()[0],
        "redis": redis_version,
        "packages": {
            p: version(p)
            for p in ("aiohttp", "uvloop", "redis", "rq", "SQLAlchemy", "psycopg", "gunicorn")
        },
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="shorter runs (~4 min)")
    parser.add_argument(
        "--e2e-rate",
        type=float,
        default=None,
        metavar="N",
        help="end to end: events/s sent (default 1000; 200 is the former figure)",
    )
    parser.add_argument("--out", type=Path, default=BENCH / "results" / "latest.json")
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        metavar="DIR",
        help="also profile the ingress and a worker with py-spy into DIR",
    )
    parser.add_argument(
        "--keep-logs", action="store_true", help="keep the temp dir with the processes' logs"
    )
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else Plan()
    if args.e2e_rate is not None:
        if args.e2e_rate <= 0:
            parser.error("--e2e-rate must be positive")
        plan = dataclasses.replace(plan, e2e_rate=args.e2e_rate)
    if shutil.which("wrk") is None:
        print("wrk is required: apt-get install -y wrk", file=sys.stderr)
        return 2

    tmp = Path(tempfile.mkdtemp(prefix="hookline-bench-"))
    procs = Procs(tmp)
    started = time.monotonic()
    res: dict[str, Any] = {"plan": asdict(plan), "env": environment()}
    ok = False
    r: Any = None
    try:
        _redis, port = start_redis(procs, "redis", tmp / "redis")
        r = redis_client(f"redis://127.0.0.1:{port}/0")
        b = Bench(plan, tmp, procs, port, r)
        b.write_configs()
        res["env"]["redis_url"] = b.redis_url
        create_database()
        subprocess.run(
            hookline("db", "upgrade", "--config", str(b.configs["default"])),
            check=True,
            capture_output=True,
            cwd=tmp,
        )
        log(f"database {DATABASE_URL} and a Redis of our own ({b.redis_url}) ready; logs in {tmp}")
        steps: list[tuple[str, Callable[[], dict[str, Any]]]] = [
            ("ingress", lambda: phase_ingress(b)),
            ("traces", lambda: phase_traces(b)),
            ("processes", lambda: phase_processes(b)),
            ("ack", lambda: phase_ack(b)),
            ("workers", lambda: phase_workers(b)),
            ("e2e", lambda: phase_e2e(b)),
            ("footprint", lambda: phase_footprint(b)),
            ("cluster", lambda: phase_cluster(b)),
        ]
        if args.profile:
            prof_dir = args.profile
            steps.append(("profile", lambda: phase_profile(b, prof_dir)))
        for name, step in steps:
            log(f"== {name}")
            res[name] = step()
        ok = True
    finally:
        procs.stop_all()
        if r is not None:
            r.close()
        drop_database()
        if args.keep_logs or not ok:
            print(f"logs kept in {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    res["elapsed_s"] = round(time.monotonic() - started, 1)
    res["env"]["loadavg_end"] = os.getloadavg()
    lines = report(res)
    if "footprint" in res:
        lines += ["", "Redis footprint (bench/footprint.py):", *footprint.report(res["footprint"])]
    if "cluster" in res:
        lines += [
            "",
            "Redis Cluster, per primary (bench/cluster.py):",
            *cluster.report(res["cluster"]),
        ]
    res["table"] = lines
    print()
    print("\n".join(lines))
    print(f"\n(elapsed {res['elapsed_s']} s)")
    for who, summary in res.get("profile", {}).items():
        print(f"\nprofile {who} ({summary['samples']} samples): where the time goes")
        for row in summary["buckets"]:
            print(f"  {row['pct']:5.1f} %  {row['frame']}")
        print(f"profile {who}: top self frames")
        for row in summary["self"][:12]:
            print(f"  {row['pct']:5.1f} %  {row['frame']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2, default=str) + "\n")
    print(f"results written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
