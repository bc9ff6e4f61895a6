"""hookline benchmark: ingress vs a bare aiohttp ceiling, workers vs a hand-written drain loop,
ack -> effect latency, peak RSS. One command, one machine, everything stopped at the end.

    .venv/bin/python bench/run.py [--quick] [--out bench/results/latest.json]
        [--profile bench/results/profile]

See bench/README.md for what each number means and how it is measured.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from common import (
    BENCH,
    CONFIG_TOML,
    DATABASE_URL,
    PG_DSN,
    QUEUE,
    REDIS_URL,
    ROOT,
    SOURCE,
    WEBHOOK_PATH,
    Proc,
    Procs,
    Signed,
    create_database,
    drop_database,
    free_port,
    hookline,
    redis_client,
    settings,
    sign_many,
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


@dataclass(frozen=True)
class Plan:
    """Durations and sizes; ``--quick`` shrinks all of them."""

    sat_seconds: int = 10
    rounds: int = 2
    connections: int = 32
    wrk_threads: int = 1
    half_seconds: float = 10.0
    backlog: int = 5000
    e2e_rate: float = 200.0
    e2e_seconds: float = 15.0
    warmup_seconds: int = 2
    ceiling_batch: int = 100
    profile_seconds: int = 10
    profile_backlog: int = 1500
    e2e_wait_cap: float = 120.0


QUICK = Plan(
    sat_seconds=5,
    rounds=1,
    half_seconds=5.0,
    backlog=1000,
    e2e_seconds=8.0,
    warmup_seconds=1,
    profile_seconds=6,
    profile_backlog=600,
    e2e_wait_cap=40.0,
)

TARGETS = {
    "ingress_vs_ceiling": 0.70,
    "p99_half_ms": 20.0,
    "workers2_eps": 1000.0,
    "workers2_vs_ceiling": 0.50,
    "e2e_p99_ms": 250.0,
    "rss_ingress_mb": 120.0,
    "rss_worker_mb": 150.0,
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- measuring helpers ---------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """user + system CPU time of a live process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def redis_cpu(r: Any) -> float:
    info = r.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def wrk(url: str, requests_file: Path, seconds: int, plan: Plan) -> dict[str, Any]:
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
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=False)
    for line in done.stdout.splitlines():
        if line.startswith("WRKJSON "):
            data: dict[str, Any] = json.loads(line[len("WRKJSON ") :])
            data["rps"] = data["requests"] / (data["duration_us"] / 1e6)
            return data
    raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout}\n{done.stderr}")


def lat_ms(wrk_result: dict[str, Any]) -> dict[str, float]:
    return {k: round(v / 1000, 3) for k, v in wrk_result["latency_us"].items()}


def new_events(counter: list[int], count: int) -> list[Signed]:
    """``count`` events never sent before in this run, signed now."""
    events = sign_many(counter[0], count)
    counter[0] += count
    return events


# -- phase 1 + 2: ingress --------------------------------------------------------------------


def start_servers(procs: Procs, cfg: Path) -> tuple[Proc, Proc, int, int]:
    bare_port, hl_port = free_port(), free_port()
    bare = procs.start(
        "bare_app", [sys.executable, str(BENCH / "bare_app.py"), "--port", str(bare_port)]
    )
    hook = procs.start(
        "ingress",
        hookline("serve", "--config", str(cfg), "--host", "127.0.0.1", "--port", str(hl_port)),
    )
    wait_http(bare, f"http://127.0.0.1:{bare_port}/healthz")
    wait_http(hook, f"http://127.0.0.1:{hl_port}/healthz")
    return bare, hook, bare_port, hl_port


def phase_ingress(
    procs: Procs, cfg: Path, tmp: Path, plan: Plan, counter: list[int], r: Any
) -> dict[str, Any]:
    bare, hook, bare_port, hl_port = start_servers(procs, cfg)
    bare_url = f"http://127.0.0.1:{bare_port}{WEBHOOK_PATH}"
    hl_url = f"http://127.0.0.1:{hl_port}{WEBHOOK_PATH}"

    # warm-up: both servers, same wrk; hookline's warm-up events are then flushed
    warm_file = tmp / "warmup.txt"
    write_wrk_file(warm_file, new_events(counter, 4000))
    wrk(bare_url, warm_file, plan.warmup_seconds, plan)
    warm = wrk(hl_url, warm_file, plan.warmup_seconds, plan)
    r.flushdb()
    estimate = max(warm["rps"], 500.0)

    rounds: list[dict[str, Any]] = []
    for i in range(plan.rounds):
        # the ceiling: the same requests (it does not care that they repeat)
        cpu0 = cpu_seconds(bare.pid)
        b = wrk(bare_url, warm_file, plan.sat_seconds, plan)
        b_cpu = cpu_seconds(bare.pid) - cpu0
        # hookline: every request a new, freshly signed event; enough of them not to wrap
        k = int(estimate * plan.sat_seconds * 1.6) + 2000
        log(f"round {i + 1}: bare {b['rps']:.0f} req/s; signing {k} events for hookline")
        req_file = tmp / "hookline_requests.txt"
        write_wrk_file(req_file, new_events(counter, k))
        r.flushdb()
        cpu0, rcpu0 = cpu_seconds(hook.pid), redis_cpu(r)
        h = wrk(hl_url, req_file, plan.sat_seconds, plan)
        h_cpu, r_cpu = cpu_seconds(hook.pid) - cpu0, redis_cpu(r) - rcpu0
        accepted = int(r.llen(QUEUE_KEY))
        h["accepted"] = accepted
        h["accepted_per_s"] = accepted / (h["duration_us"] / 1e6)
        h["wrapped"] = h["sent"] > h["available"]
        estimate = max(estimate, h["rps"])
        log(
            f"round {i + 1}: hookline {h['rps']:.0f} req/s, {h['accepted_per_s']:.0f} accepted/s"
            f" (errors {h['errors']})"
        )
        rounds.append(
            {
                "bare": {
                    **b,
                    "latency_ms": lat_ms(b),
                    "cpu_us_per_req": 1e6 * b_cpu / max(1, b["requests"]),
                },
                "hookline": {
                    **h,
                    "latency_ms": lat_ms(h),
                    "cpu_us_per_req": 1e6 * h_cpu / max(1, h["requests"]),
                    "redis_cpu_us_per_req": 1e6 * r_cpu / max(1, h["requests"]),
                },
            }
        )
        r.flushdb()
        req_file.unlink()

    best_bare = max((x["bare"] for x in rounds), key=lambda x: x["rps"])
    best_hl = max((x["hookline"] for x in rounds), key=lambda x: x["accepted_per_s"])

    # latency at half the saturation rate: open-loop Python client, hookline then the bare app
    half_rate = best_hl["accepted_per_s"] / 2
    n = int(half_rate * plan.half_seconds)
    log(f"half rate: {half_rate:.0f} events/s for {plan.half_seconds:.0f} s, hookline then bare")
    events = new_events(counter, n)
    r.flushdb()
    outs = run_paced(
        "127.0.0.1",
        hl_port,
        [e.raw_http(f"127.0.0.1:{hl_port}") for e in events],
        half_rate,
        plan.connections,
    )
    half_hl = summarize(outs, plan.half_seconds)
    half_hl["accepted"] = int(r.llen(QUEUE_KEY))
    r.flushdb()
    outs = run_paced(
        "127.0.0.1",
        bare_port,
        [e.raw_http(f"127.0.0.1:{bare_port}") for e in events],
        half_rate,
        plan.connections,
    )
    half_bare = summarize(outs, plan.half_seconds)

    rss = {"ingress": hook.sample_rss(), "bare_app": bare.sample_rss()}
    hook.stop()
    bare.stop()
    return {
        "bare_rps": best_bare["rps"],
        "hookline_rps": best_hl["rps"],
        "hookline_accepted_per_s": best_hl["accepted_per_s"],
        "ratio": best_hl["accepted_per_s"] / best_bare["rps"],
        "saturation_latency_ms": {
            "hookline": best_hl["latency_ms"],
            "bare": best_bare["latency_ms"],
        },
        "cpu_us_per_req": {
            "hookline": best_hl["cpu_us_per_req"],
            "bare": best_bare["cpu_us_per_req"],
            "redis_per_hookline_req": best_hl["redis_cpu_us_per_req"],
        },
        "half_rate": half_rate,
        "half": {"hookline": half_hl, "bare": half_bare},
        "rounds": rounds,
        "peak_rss_mb": rss,
    }


# -- phase 3: workers draining a backlog ---------------------------------------------------------


def fill_backlog(r: Any, counter: list[int], n: int) -> float:
    """Queue ``n`` new events with the ingress's own claim-and-enqueue script: no HTTP."""
    from shared.enqueue import JobSpec, claim_script, parse_reply
    from shared.envelope import Envelope, redact_headers

    s = settings()
    script = claim_script(JobSpec.from_settings(s))
    sensitive = s.sources[SOURCE].scheme.sensitive()
    sha = r.script_load(script.text)
    events = new_events(counter, n)
    started = time.perf_counter()
    pipe = r.pipeline(transaction=False)
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


def drain_rate(n: int) -> dict[str, Any]:
    """Events/s from the first commit to the last (``processed_at``), and a check that every
    event has its row and its payment, and nothing died."""
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
    counts = table_counts()
    ok = counts == {"webhook_events": n, "payments": n, "dead_letters": 0}
    span = (last - first) if first is not None and last is not None else 0.0
    after_first = n - int(at_first[0] if at_first else 0)
    return {
        "events_per_s": after_first / span if span > 0 else 0.0,
        "commit_span_s": span,
        "counts": counts,
        "complete": ok,
    }


def run_drain(
    procs: Procs, r: Any, counter: list[int], plan: Plan, name: str, argvs: list[list[str]]
) -> dict[str, Any]:
    r.flushdb()
    truncate_tables()
    enqueue_rate = fill_backlog(r, counter, plan.backlog)
    started = time.monotonic()
    running = [procs.start(f"{name}-{i + 1}", argv) for i, argv in enumerate(argvs)]
    for p in running:
        if not p.wait(180):
            raise RuntimeError(f"{p.name} did not finish draining; see {p.log}")
        if p.popen.returncode != 0:
            raise RuntimeError(f"{p.name} exited {p.popen.returncode}; see {p.log}")
    wall = max(p.ended or time.monotonic() for p in running) - started
    result = drain_rate(plan.backlog)
    result["wall_s"] = wall
    result["wall_events_per_s"] = plan.backlog / wall
    result["left_in_queue"] = int(r.llen(QUEUE_KEY))
    result["enqueue_per_s"] = enqueue_rate
    result["peak_rss_mb"] = [p.peak_rss_mb for p in running]
    result["cpu_ms_per_event"] = 1000 * sum(p.cpu_s or 0.0 for p in running) / plan.backlog
    log(
        f"{name}: {result['events_per_s']:.0f} events/s (first->last commit), "
        f"{result['wall_events_per_s']:.0f}/s incl. start-up; complete={result['complete']}"
    )
    return result


def phase_workers(
    procs: Procs, cfg: Path, r: Any, counter: list[int], plan: Plan
) -> dict[str, Any]:
    worker = hookline("worker", "--burst", "--config", str(cfg))
    ceiling = [
        sys.executable,
        str(BENCH / "drain_ceiling.py"),
        "--redis-url",
        REDIS_URL,
        "--dsn",
        PG_DSN,
        "--queue",
        QUEUE,
        "--batch",
        str(plan.ceiling_batch),
    ]
    out = {
        "backlog": plan.backlog,
        "ceiling": run_drain(procs, r, counter, plan, "drain_ceiling", [ceiling]),
        "workers_1": run_drain(procs, r, counter, plan, "worker_x1", [worker]),
        "workers_2": run_drain(procs, r, counter, plan, "worker_x2", [worker, worker]),
    }
    r.flushdb()
    truncate_tables()
    return out


# -- phase 4: ack -> effect ----------------------------------------------------------------------


def phase_e2e(procs: Procs, cfg: Path, r: Any, counter: list[int], plan: Plan) -> dict[str, Any]:
    import psycopg

    r.flushdb()
    truncate_tables()
    port = free_port()
    hook = procs.start(
        "e2e_ingress",
        hookline("serve", "--config", str(cfg), "--host", "127.0.0.1", "--port", str(port)),
    )
    worker = procs.start("e2e_worker", hookline("worker", "--config", str(cfg)))
    wait_http(hook, f"http://127.0.0.1:{port}/healthz")
    wait_until(lambda: Worker.count(connection=r) > 0, 30, "the worker registering")
    host = f"127.0.0.1:{port}"

    def processed() -> int:
        return table_counts()["webhook_events"]

    warm = new_events(counter, 100)
    run_paced("127.0.0.1", port, [e.raw_http(host) for e in warm], 100.0, 8)
    wait_until(lambda: processed() >= len(warm), 30, "the warm-up events being applied")

    n = int(plan.e2e_rate * plan.e2e_seconds)
    events = new_events(counter, n)
    log(f"e2e: {n} events at {plan.e2e_rate:.0f}/s with one long-running worker")
    outs = run_paced("127.0.0.1", port, [e.raw_http(host) for e in events], plan.e2e_rate, 8)
    acks = {
        e.event_id: o.answered_wall
        for e, o in zip(events, outs, strict=True)
        if o is not None and o.status == 202
    }
    # one worker may apply fewer than e2e_rate events/s: wait while it makes progress
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

    def pcts(xs: Sequence[float]) -> dict[str, float]:
        return {
            "p50": round(pct(xs, 50), 2),
            "p99": round(pct(xs, 99), 2),
            "max": round(max(xs), 2),
            "min": round(min(xs), 2),
        }

    rss = {"ingress": hook.sample_rss(), "worker": worker.sample_rss()}
    worker.stop()
    hook.stop()
    r.flushdb()
    truncate_tables()
    return {
        "rate": plan.e2e_rate,
        "sent": n,
        "acked": len(acks),
        "applied": len(rows),
        "complete": len(rows) == len(acks) == n,
        "worker_events_per_s": worker_rate,
        "ack_to_effect_ms": pcts(ack_to_effect),
        "receipt_to_effect_ms": pcts(receipt_to_effect),
        "ack_latency_ms": client["latency_ms"],
        "achieved_rps": client["achieved_rps"],
        "peak_rss_mb": rss,
    }


# -- optional: profiles --------------------------------------------------------------------------


def phase_profile(
    procs: Procs, cfg: Path, tmp: Path, r: Any, counter: list[int], plan: Plan, out_dir: Path
) -> dict[str, Any]:
    """py-spy on the ingress under wrk saturation (CPU samples) and on one ``--burst`` worker
    draining the backlog (wall-clock samples, ``--idle``: time waiting on PostgreSQL and Redis
    counts). Separate runs: the profiler slows what it watches."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        log("py-spy not found: no profile")
        return {}
    out_dir.mkdir(parents=True, exist_ok=True)
    r.flushdb()
    port = free_port()
    hook = procs.start(
        "profile_ingress",
        hookline("serve", "--config", str(cfg), "--host", "127.0.0.1", "--port", str(port)),
    )
    wait_http(hook, f"http://127.0.0.1:{port}/healthz")
    req_file = tmp / "profile_requests.txt"
    write_wrk_file(req_file, new_events(counter, 2500 * plan.profile_seconds))
    ingress_raw = out_dir / "ingress.collapsed.txt"
    url = f"http://127.0.0.1:{port}{WEBHOOK_PATH}"
    load = threading.Thread(target=wrk, args=(url, req_file, plan.profile_seconds, plan))
    log(f"profile: ingress under wrk for {plan.profile_seconds} s")
    load.start()
    time.sleep(1.0)  # sample the steady state, not the first connections
    spy = procs.start(
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
    r.flushdb()
    truncate_tables()
    fill_backlog(r, counter, plan.profile_backlog)
    worker_raw = out_dir / "worker.collapsed.txt"
    log(f"profile: one worker draining {plan.profile_backlog} events")
    spy = procs.start(
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
    r.flushdb()
    truncate_tables()
    return result


# -- report ---------------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def report(res: dict[str, Any]) -> list[str]:
    ing, wk, e2e = res["ingress"], res["workers"], res["e2e"]
    half = ing["half"]["hookline"]["latency_ms"]
    half_bare = ing["half"]["bare"]["latency_ms"]
    sat = ing["saturation_latency_ms"]
    w1, w2, ceil = wk["workers_1"], wk["workers_2"], wk["ceiling"]
    w2_ratio = w2["events_per_s"] / ceil["events_per_s"] if ceil["events_per_s"] else 0.0
    rss_worker = max(
        [x for x in (*w1["peak_rss_mb"], *w2["peak_rss_mb"], e2e["peak_rss_mb"]["worker"]) if x]
    )
    rss_ingress = max(
        x for x in (ing["peak_rss_mb"]["ingress"], e2e["peak_rss_mb"]["ingress"]) if x
    )
    t = TARGETS
    checks = {
        "ingress_vs_ceiling": ing["ratio"] >= t["ingress_vs_ceiling"],
        "p99_half_ms": half["p99"] <= t["p99_half_ms"],
        "workers2_eps": w2["events_per_s"] >= t["workers2_eps"],
        "workers2_vs_ceiling": w2_ratio >= t["workers2_vs_ceiling"],
        "e2e_p99_ms": e2e["ack_to_effect_ms"]["p99"] <= t["e2e_p99_ms"],
        "rss_ingress_mb": rss_ingress <= t["rss_ingress_mb"],
        "rss_worker_mb": rss_worker <= t["rss_worker_mb"],
    }
    res["checks"] = {k: verdict(v) for k, v in checks.items()}
    rows: list[tuple[str, str, str, str]] = [
        (
            f"INGRESS (wrk, {res['plan']['connections']} conns, {res['plan']['sat_seconds']} s,"
            f" best of {res['plan']['rounds']})",
            "",
            "",
            "",
        ),
        ("  bare aiohttp ceiling", f"{ing['bare_rps']:,.0f} req/s", "", ""),
        ("  hookline serve, accepted", f"{ing['hookline_accepted_per_s']:,.0f} events/s", "", ""),
        (
            "  ingress / ceiling",
            f"{100 * ing['ratio']:.1f} %",
            ">= 70 %",
            res["checks"]["ingress_vs_ceiling"],
        ),
        (
            "  CPU per request hookline / bare",
            f"{ing['cpu_us_per_req']['hookline']:.0f} / {ing['cpu_us_per_req']['bare']:.0f} us"
            f" (+ Redis {ing['cpu_us_per_req']['redis_per_hookline_req']:.0f} us)",
            "",
            "",
        ),
        (
            "  latency @ saturation hookline p50/p99/p99.9",
            f"{sat['hookline']['p50']:.1f} / {sat['hookline']['p99']:.1f} / "
            f"{sat['hookline']['p999']:.1f} ms",
            "",
            "",
        ),
        (
            "  latency @ saturation bare p50/p99/p99.9",
            f"{sat['bare']['p50']:.1f} / {sat['bare']['p99']:.1f} / {sat['bare']['p999']:.1f} ms",
            "",
            "",
        ),
        (
            f"  @ half rate ({ing['half_rate']:,.0f}/s) hookline p50/p99/p99.9",
            f"{half['p50']:.2f} / {half['p99']:.2f} / {half['p999']:.2f} ms"
            f" ({ing['half']['hookline']['over_20ms']} > 20 ms;"
            f" {sum(v for k, v in ing['half']['hookline']['statuses'].items() if k != '202')}"
            " not 202)",
            "p99 <= 20 ms",
            res["checks"]["p99_half_ms"],
        ),
        (
            "  @ same rate, bare p50/p99/p99.9",
            f"{half_bare['p50']:.2f} / {half_bare['p99']:.2f} / {half_bare['p999']:.2f} ms",
            "",
            "",
        ),
        (f"WORKERS draining {wk['backlog']:,} events into PostgreSQL", "", "", ""),
        (
            "  drain-loop ceiling (1 process, batches)",
            f"{ceil['events_per_s']:,.0f} events/s",
            "",
            "",
        ),
        ("  hookline worker x1", f"{w1['events_per_s']:,.0f} events/s", "", ""),
        (
            "  hookline worker x2",
            f"{w2['events_per_s']:,.0f} events/s",
            ">= 1,000/s",
            res["checks"]["workers2_eps"],
        ),
        (
            "  workers x2 / ceiling",
            f"{100 * w2_ratio:.1f} %",
            ">= 50 %",
            res["checks"]["workers2_vs_ceiling"],
        ),
        (
            "  incl. process start-up x1 / x2",
            f"{w1['wall_events_per_s']:,.0f} / {w2['wall_events_per_s']:,.0f} events/s",
            "",
            "",
        ),
        (
            "  CPU per event ceiling / worker x1 / x2",
            f"{ceil['cpu_ms_per_event']:.2f} / {w1['cpu_ms_per_event']:.2f} / "
            f"{w2['cpu_ms_per_event']:.2f} ms (incl. start-up)",
            "",
            "",
        ),
        (f"END TO END at {e2e['rate']:.0f} events/s, 1 worker", "", "", ""),
        (
            "  ack -> effect p50 / p99 / max",
            f"{e2e['ack_to_effect_ms']['p50']:.1f} / {e2e['ack_to_effect_ms']['p99']:.1f} / "
            f"{e2e['ack_to_effect_ms']['max']:.1f} ms",
            "p99 <= 250 ms",
            res["checks"]["e2e_p99_ms"],
        ),
        (
            "  receipt -> effect p50 / p99 / max",
            "{p50:.1f} / {p99:.1f} / {max:.1f} ms".format(**e2e["receipt_to_effect_ms"]),
            "",
            "",
        ),
        (
            "  sent / acked 202 / applied; worker rate",
            f"{e2e['sent']:,} / {e2e['acked']:,} / {e2e['applied']:,};"
            f" {e2e['worker_events_per_s']:,.0f} events/s",
            "",
            "" if e2e["complete"] else "INCOMPLETE",
        ),
        ("PEAK RSS (VmHWM)", "", "", ""),
        ("  ingress", f"{rss_ingress:.1f} MB", "<= 120 MB", res["checks"]["rss_ingress_mb"]),
        (
            "  worker (max over all)",
            f"{rss_worker:.1f} MB",
            "<= 150 MB",
            res["checks"]["rss_worker_mb"],
        ),
        (
            "  bare app / drain ceiling",
            f"{ing['peak_rss_mb']['bare_app']:.1f} / {ceil['peak_rss_mb'][0]:.1f} MB",
            "",
            "",
        ),
    ]
    width = max(len(r[0]) for r in rows) + 2
    vwidth = max(len(r[1]) for r in rows) + 2
    lines = [f"{'metric':<{width}}{'value':<{vwidth}}{'target':<15}result"]
    lines += [f"{a:<{width}}{b:<{vwidth}}{c:<15}{d}".rstrip() for a, b, c, d in rows]
    lines.append(
        "servers: one process each, uvloop, aiohttp access log ON for both (INFO, to a file);"
        f" load avg at start {res['env']['loadavg_start'][0]:.2f}, at end"
        f" {res['env'].get('loadavg_end', (float('nan'),))[0]:.2f}"
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
    return {
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "commit": commit,
        "modified_files": [line.strip() for line in dirty if line.strip()],
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "loadavg_start": os.getloadavg(),
        "wrk": (wrk_version.stdout or wrk_version.stderr).splitlines()[0],
        "packages": {
            p: version(p) for p in ("aiohttp", "uvloop", "redis", "rq", "SQLAlchemy", "psycopg")
        },
        "access_log": "on for both servers (aiohttp access log, INFO, to a file)",
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="shorter runs (< 2 min)")
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
    if shutil.which("wrk") is None:
        print("wrk is required: apt-get install -y wrk", file=sys.stderr)
        return 2

    tmp = Path(tempfile.mkdtemp(prefix="hookline-bench-"))
    cfg = tmp / "hookline.toml"
    cfg.write_text(CONFIG_TOML)
    procs = Procs(tmp)
    r = redis_client()
    counter = [int(time.time()) % 100_000 * 1_000_000]  # unique event numbers across runs
    started = time.monotonic()
    res: dict[str, Any] = {"plan": asdict(plan), "env": environment()}
    ok = False
    try:
        r.ping()
        r.flushdb()
        create_database()
        subprocess.run(
            hookline("db", "upgrade", "--config", str(cfg)),
            check=True,
            capture_output=True,
            cwd=tmp,
        )
        log(f"database {DATABASE_URL} and Redis {REDIS_URL} ready; logs in {tmp}")
        steps: list[tuple[str, Callable[[], dict[str, Any]]]] = [
            ("ingress", lambda: phase_ingress(procs, cfg, tmp, plan, counter, r)),
            ("workers", lambda: phase_workers(procs, cfg, r, counter, plan)),
            ("e2e", lambda: phase_e2e(procs, cfg, r, counter, plan)),
        ]
        if args.profile:
            prof_dir = args.profile
            steps.append(
                ("profile", lambda: phase_profile(procs, cfg, tmp, r, counter, plan, prof_dir))
            )
        for name, step in steps:
            log(f"== {name}")
            res[name] = step()
        ok = True
    finally:
        procs.stop_all()
        try:
            r.flushdb()
        finally:
            drop_database()
        if args.keep_logs or not ok:
            print(f"logs kept in {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    res["elapsed_s"] = round(time.monotonic() - started, 1)
    res["env"]["loadavg_end"] = os.getloadavg()
    lines = report(res)
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
