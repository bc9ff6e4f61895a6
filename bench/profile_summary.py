"""Summarise a py-spy ``--format raw`` profile (collapsed stacks: ``f1;f2;...;fN count``).

Prints the top frames by self time and by inclusive time, and self time by component
(hookline's own packages, aiohttp, RQ, SQLAlchemy, redis-py, psycopg, logging, ...).

    python bench/profile_summary.py bench/results/profile/ingress.collapsed.txt [--top 20]
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path
from typing import Any

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^():]*?)(?::(?P<line>\d+))?\)$")

#: (substring of the file path, component); the first match wins
_COMPONENTS = (
    ("/ingest/", "hookline ingest"),
    ("/shared/", "hookline shared"),
    ("/workers/", "hookline workers"),
    ("/hookline/", "hookline cli"),
    ("/aiohttp/", "aiohttp"),
    ("/multidict/", "aiohttp"),
    ("/yarl/", "aiohttp"),
    ("/rq/", "rq"),
    ("/sqlalchemy/", "sqlalchemy"),
    ("/redis/", "redis-py"),
    ("/psycopg", "psycopg"),
    ("/prometheus_client/", "prometheus_client"),
    ("/logging/", "logging"),
    ("/asyncio/", "asyncio"),
    ("/uvloop/", "uvloop"),
    ("/json/", "json"),
    ("/pickle", "pickle"),
    ("/uuid.py", "uuid"),
    ("/hmac.py", "hmac"),
    ("/datetime.py", "datetime"),
)


#: where a sample's time goes: the first bucket (in this order, most specific first) one of
#: whose patterns is found in any frame of the sample's stack
Buckets = tuple[tuple[str, tuple[str, ...]], ...]

INGRESS_BUCKETS: Buckets = (
    ("RQ job hash build (ClaimScript.call)", ("call (shared/enqueue.py",)),
    ("Redis claim-and-enqueue call, client side", ("Redis.execute_command (", "Script.__call__")),
    ("signature verify (HMAC-SHA256)", (".verify (shared/signatures/",)),
    ("event id lookup (json.loads)", ("_event_id (ingest/app.py",)),
    ("header redaction + Envelope", ("redact_headers (",)),
    ("prometheus counters/histogram", ("prometheus_client/",)),
    ("access log line", ("log_access (",)),
    ("asyncio.timeout (body, redis)", ("asyncio/timeouts.py",)),
    ("body read", ("read_body (ingest/body.py",)),
    ("json_response", ("json_response (",)),
    ("hookline handler, rest", ("receive (ingest/app.py",)),
    ("aiohttp server + event loop (the rest)", ("aiohttp/",)),
)
WORKER_BUCKETS: Buckets = (
    ("start-up: imports", ("<frozen importlib",)),
    ("job: parse + validate JSON", ("to_event (workers/parsing.py",)),
    ("job: INSERT webhook_events", ("_claim_row (workers/effects.py", "_claim_rows (workers/")),
    ("job: UPSERT payments", ("record_payment (workers/payments.py",)),
    ("job: COMMIT", ("SessionTransaction.commit (",)),
    ("job: pool checkout + pre-ping", ("_ConnectionFairy._checkout (",)),
    ("logging (hookline + RQ)", ("logging/__init__.py",)),
    ("job: metrics", ("prometheus_client/",)),
    (
        "job: rest (Session, Envelope, death penalty)",
        (
            "process_event (workers/tasks.py",
            "process_batch (workers/tasks.py",
            "_run_one (workers/batch.py",
            "_run_each (workers/batch.py",
        ),
    ),
    ("RQ: heartbeats", ("BaseWorker.heartbeat (",)),
    ("RQ: take batch (Lua script)", ("Script.__call__ (",)),
    ("RQ: fetch jobs", ("Job.fetch_many (",)),
    ("RQ: record successes", ("_record_successes (",)),
    ("RQ: dequeue (LMOVE, HGETALL, restore)", ("dequeue_job_and_maintain_ttl (",)),
    ("RQ: prepare execution (status, registries)", ("prepare_job_execution (",)),
    ("RQ: success bookkeeping (result, registries)", ("handle_job_success (",)),
    ("RQ: rest of perform/execute_job", ("execute_job (",)),
    ("idle: blocking wait for work", ("wait_for_work (",)),
    ("worker loop, rest", ("BaseWorker.work (", "EventWorker.work (")),
)
BUCKETS = {"ingress": INGRESS_BUCKETS, "worker": WORKER_BUCKETS}


def _bucket(frames: list[str], buckets: Buckets) -> str:
    for name, patterns in buckets:
        if any(p in frame for p in patterns for frame in frames):
            return name
    return "other (event loop, interpreter)"


def _short(frame: str) -> tuple[str, str]:
    """(``func (file)`` with the path shortened to its package, component)."""
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip(), "other"
    path = m.group("file")
    slashed = "/" + path  # py-spy prints paths relative to sys.path entries
    component = next((c for s, c in _COMPONENTS if s in slashed), "python/other")
    parts = path.split("/")
    for anchor in ("site-packages", "python3.11", "main"):
        if anchor in parts:
            path = "/".join(parts[parts.index(anchor) + 1 :])
            break
    return f"{m.group('func')} ({path})", component


def summarize_collapsed(
    path: Path,
    top: int = 25,
    main_thread: bool = True,
    buckets: Buckets = (),
) -> dict[str, Any]:
    """Top frames of a collapsed profile; ``main_thread`` drops stacks rooted in a thread's
    ``_bootstrap`` (a worker's idle janitor thread would otherwise fill a ``--idle`` profile)."""
    self_t: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    comp: Counter[str] = Counter()
    where: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        count = int(count_s)
        frames = [f for f in stack.split(";") if "(" in f]
        if not frames or (main_thread and "_bootstrap (threading" in frames[0]):
            continue
        total += count
        shorts = [_short(f) for f in frames]
        leaf, leaf_comp = shorts[-1]
        self_t[leaf] += count
        comp[leaf_comp] += count
        for name in {s for s, _ in shorts}:
            incl[name] += count
        if buckets:
            where[_bucket(frames, buckets)] += count

    def rows(c: Counter[str]) -> list[dict[str, Any]]:
        return [
            {"frame": k, "samples": v, "pct": round(100 * v / total, 1)}
            for k, v in c.most_common(top)
        ]

    return {
        "samples": total,
        "self": rows(self_t),
        "inclusive": rows(incl),
        "components": rows(comp),
        "buckets": rows(where),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("collapsed", type=Path)
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--all-threads", action="store_true")
    parser.add_argument("--buckets", choices=sorted(BUCKETS), default=None)
    args = parser.parse_args()
    s = summarize_collapsed(
        args.collapsed,
        args.top,
        main_thread=not args.all_threads,
        buckets=BUCKETS[args.buckets] if args.buckets else (),
    )
    print(f"{s['samples']} samples")
    for title in ("buckets", "components", "self", "inclusive"):
        print(f"\n{title}:")
        for row in s[title]:
            print(f"  {row['pct']:5.1f} %  {row['frame']}")


if __name__ == "__main__":
    main()
