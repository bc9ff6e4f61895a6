"""The redis-full scenario: ``python chaos/run.py --scenario redis-full [options]``.

A redis-server of its own at a small ``maxmemory`` (32 MB by default, ``noeviction``, AOF
``everysec``), one ``hookline serve`` and, at first, no worker. The provider-like sender
(:mod:`chaos.sender`: redeliveries, twins, out-of-order pairs, events whose handler fails
once) posts new events at ``--rate`` until the ingress answers 503 (Redis full, or the
ingress shedding load before it is: ``[ingest] shed_at_memory_percent``); it keeps sending
into the full Redis for ``--full-for`` seconds, then two long-running ``hookline worker``
processes start on it. The sender goes on for ``--after`` seconds more, retrying every 503
on a longer schedule than a provider's 5 s and 30 s (``--provider-retries``), so that what
was refused while Redis was full is sent again once it has room; then it stops, the workers
drain the queue and the tables are checked.

It runs once per ``shed_at_memory_percent`` asked for (``--modes 95,0``: both, one after the
other, each on a Redis, processes and tables of its own) and checks, per mode: Redis filled
(the ingress answered 503 before any worker ran), no acknowledged event lost, none applied
twice (the chaos handlers' ``chaos_effects`` rows, deliberately not idempotent), every event
answered 202 applied exactly once, no redelivery accepted again after its acknowledgement
(its claim kept), Redis ``evicted_keys`` 0, new events answered 202 again after the workers
started (and how long that took: the run's headline figure), the queues drained, no
hookline process died, every process stopped at the end.

The result JSON has, per mode, the main run's ``checks``, ``ingress``, ``deliveries``,
``tables``, ``redis_keys``, ``processes`` and ``targets`` (PASS/MISS/n/a rows), plus
``redis_full`` (the fill, the recovery's timeline and Redis's own figures); ``targets`` at the
top level gathers every mode's rows. Exit status: 0 all PASS, 1 a MISS, 2 the run itself
failed, 130 interrupted.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import threading
import time
from collections.abc import Sequence
from typing import Any

from chaos import report
from chaos.harness import (
    Harness,
    add_scenario_options,
    finish_scenario_args,
    http_status,
    run_modes,
    run_scenario_mode,
    scenario_main,
)
from chaos.sender import Attempt, Mix, Sender
from chaos.services import RedisServer
from tests.processes import ROOT, free_port, hookline

DEFAULT_OUT = ROOT / "chaos" / "results" / "redis-full-latest.json"
#: the sender's retries after a 503 or no answer: longer than a provider's 5 s and 30 s, so
#: that an event refused while Redis is full is sent again once the workers made room
DEFAULT_RETRIES = (5.0, 10.0, 20.0, 30.0, 30.0, 30.0)
WORKERS = 2
#: how often the memory monitor reads INFO memory and the queue's length
SAMPLE_SECONDS = 0.25


class RedisFullHarness(Harness):
    """The main run's harness (database, configuration, processes under a supervisor, the
    sender, the action loop, the checks on the tables) on a Redis with a small ``maxmemory``,
    with one fault: no worker until the ingress refuses."""

    def __init__(self, args: argparse.Namespace, shed: int) -> None:
        super().__init__(args)
        self.shed = shed
        retries = sum(args.provider_retries)
        budget = args.fill_timeout + args.full_for + args.after + retries
        budget += args.drain_timeout + 120
        self.profile = dataclasses.replace(
            self.profile,
            name=f"redis-full-shed{shed}",
            duration=budget,  # the sender stops once the workers ran --after seconds
            workers=WORKERS,
            drain_timeout=args.drain_timeout,
            slow_share=0.0,
            budget=budget,
        )
        self.deadline = self.started + budget
        #: wall-clock times of the scenario's steps (absent: not seen)
        self.marks: dict[str, float] = {}
        #: (wall clock, used_memory, queue length); -1s when Redis did not answer
        self.samples: list[tuple[float, int, int]] = []
        self.maxmemory = 0
        self._seen = 0  # sender attempts already looked at
        self._first_503: Attempt | None = None
        self._first_202_after: Attempt | None = None

    # -- setup -----------------------------------------------------------------------------

    def setup(self) -> None:
        a = self.args
        self.say(
            f"redis-full, shed_at_memory_percent = {self.shed}: {a.rate}/s into a Redis of"
            f" {a.maxmemory_mb} MB until the ingress answers 503, {a.full_for:.0f} s more, then"
            f" {WORKERS} workers and {a.after:.0f} s more; work dir {self.work}"
        )
        self.snapshot()
        self._setup_database()
        self._setup_redis()
        self._write_config()
        self._start_processes()

    def _setup_redis(self) -> None:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        limits = ("--maxmemory", f"{self.args.maxmemory_mb}mb")
        limits += ("--maxmemory-policy", "noeviction")
        self.redis = RedisServer(
            self.work / "redis", free_port(), "everysec", self.logs / "redis.log", limits
        )
        self.redis.start()
        self.rclient = redis.Redis(
            port=self.redis.port,
            socket_timeout=2,
            socket_connect_timeout=1,
            retry=Retry(NoBackoff(), 0),
        )
        self.maxmemory = int(self.rclient.info("memory")["maxmemory"])
        self.say(
            f"redis: 127.0.0.1:{self.redis.port}, maxmemory {self.maxmemory} B (noeviction),"
            " AOF appendfsync everysec"
        )

    def _write_config(self) -> None:
        from shared.config import load_settings

        assert self.redis is not None
        text = self.config_text(
            "chaos/run.py --scenario redis-full",
            self.redis.url,
            ingest=f"shed_at_memory_percent = {self.shed}",
        )
        self.config_path.write_text(text)
        self.settings = load_settings(self.config_path)

    def _start_processes(self) -> None:
        """The ingress only: the workers start once Redis is full."""
        base = self._add_ingress(self._env())
        self._wait(lambda: http_status(f"{base}/readyz") == 200, 30, "the ingress being ready")
        self.say(f"ingress on {base}, no worker yet")

    # -- watching Redis ---------------------------------------------------------------------

    def _start_monitors(self) -> None:
        thread = threading.Thread(target=self._watch_memory, name="chaos-memory", daemon=True)
        thread.start()
        self._threads.append(thread)

    def _watch_memory(self) -> None:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        from shared import keys

        assert self.redis is not None
        client = redis.Redis(
            port=self.redis.port,
            socket_timeout=0.5,
            socket_connect_timeout=0.5,
            retry=Retry(NoBackoff(), 0),
        )
        queue = keys.queue_key(self.settings.queue)
        try:
            while not self._stop_threads.wait(SAMPLE_SECONDS):
                try:
                    used = int(client.info("memory")["used_memory"])
                    length = int(client.llen(queue))
                    self.samples.append((time.time(), used, length))
                except (redis.RedisError, OSError):
                    self.samples.append((time.time(), -1, -1))
        finally:
            client.close()

    def _mark(self, name: str, at: float | None = None, **details: Any) -> None:
        if name not in self.marks:
            self.marks[name] = time.time() if at is None else at
            self.record(name, **details)

    def _look_at_answers(self) -> None:
        """The first 503, and the first 202 to a request sent after the workers started."""
        assert self.sender is not None
        attempts = self.sender.result.attempts
        end = len(attempts)  # appended to by the sender's thread: read up to here
        started = self.marks.get("workers started")
        for a in attempts[self._seen : end]:
            if a.status == 503 and self._first_503 is None:
                self._first_503 = a
            if started is not None and a.status == 202 and a.t >= started:
                done = a.t + a.latency
                if self._first_202_after is None or done < (
                    self._first_202_after.t + self._first_202_after.latency
                ):
                    self._first_202_after = a
        self._seen = end

    # -- the steps --------------------------------------------------------------------------

    def wait_full(self) -> float | None:
        """Until the ingress answers 503 (or --fill-timeout passes: the run then says Redis
        never filled, and starts the workers all the same so the checks still run)."""
        self._look_at_answers()
        a = self._first_503
        if a is None and time.time() - self.t0 < self.args.fill_timeout:
            return 0.1
        if a is None:
            self.errors.append(
                f"the ingress never answered 503 within {self.args.fill_timeout:.0f} s: raise"
                " --rate or lower --maxmemory-mb"
            )
            self.schedule(0, "start the workers", self.start_workers)
            return None
        used = self._used()
        self._mark(
            "first 503",
            at=a.t + a.latency,
            acknowledged=len(self.sender.result.acked) if self.sender else None,
            used_memory=used,
            percent_of_maxmemory=self._percent(used),
        )
        self.schedule(self.args.full_for, "start the workers", self.start_workers)
        return None

    def start_workers(self) -> float | None:
        assert self.sender is not None
        used = self._used()
        self.results["at_workers_start"] = {
            "acknowledged": len(self.sender.result.acked),
            "used_memory": used,
            "percent_of_maxmemory": self._percent(used),
            "queued": int(self.rclient.llen(self._queue().key)),
        }
        env = self._env()
        for i in range(1, WORKERS + 1):
            self.sup.add(
                f"worker-{i}",
                hookline("worker"),
                env,
                self.logs / f"worker-{i}.log",
                self.code_root,
            )
        self._mark("workers started", **self.results["at_workers_start"])
        self.sender.send_for(self.args.after)
        self.schedule(0.05, "wait for a 202", self.wait_first_202)
        return None

    def wait_first_202(self) -> float | None:
        self._look_at_answers()
        a = self._first_202_after
        if a is None:
            return 0.05
        self._mark("first 202 after the workers started", at=a.t + a.latency)
        return None

    def _used(self) -> int | None:
        try:
            return int(self.rclient.info("memory")["used_memory"])
        except Exception:
            return None

    def _percent(self, used: int | None) -> float | None:
        if used is None or not self.maxmemory:
            return None
        return round(100 * used / self.maxmemory, 1)

    # -- the run ---------------------------------------------------------------------------

    def inject(self) -> None:
        a = self.args
        self._start_monitors()
        schemes = {name: src.scheme for name, src in self.settings.sources.items()}
        self.sender = Sender(
            f"http://127.0.0.1:{self.port}",
            schemes,
            a.rate,
            self.profile.duration,
            Mix(poison=0.0, slow=0.0, flaky=a.flaky_share),
            a.seed,
            retry_delays=(0.0, *a.provider_retries),
        )
        self.t0 = time.time()
        self.sender.start()
        self.say("sender started")
        self.schedule(0.1, "wait for Redis to fill", self.wait_full)
        self.run_actions()
        self._look_at_answers()
        if self._first_202_after is not None:
            a202 = self._first_202_after
            self._mark("first 202 after the workers started", at=a202.t + a202.latency)

    # -- figures ---------------------------------------------------------------------------

    def redis_figures(self) -> dict[str, Any]:
        info: Any = self.rclient.info()
        errors: Any = self.rclient.info("errorstats")
        oom = errors.get("errorstat_OOM", {})
        return {
            "maxmemory": int(info["maxmemory"]),
            "maxmemory_policy": info.get("maxmemory_policy"),
            "used_memory_at_end": int(info["used_memory"]),
            "used_memory_peak": int(info["used_memory_peak"]),
            "used_memory_peak_percent": self._percent(int(info["used_memory_peak"])),
            "evicted_keys": int(info["evicted_keys"]),
            "writes_refused_oom": int(oom.get("count", 0)) if isinstance(oom, dict) else 0,
        }

    def measure(self, drain: dict[str, Any]) -> None:
        assert self.sender is not None
        r = self.sender.result
        full_at = self.marks.get("first 503")
        started = self.marks.get("workers started")
        back = self.marks.get("first 202 after the workers started")
        if full_at is not None:
            # the "outage", for report.ingress: from the first 503 to the first 202 again
            self.redis_windows.append({"killed_at": full_at, "ready_at": back or r.finished_at})
        tables = self.tables()
        report.measure_run(self, tables, drain)
        effects = tables["effects"]
        not_once = [
            {"event": list(k), "effect_rows": effects[k].n if k in effects else 0}
            for k in sorted(r.acked)
            if k not in effects or effects[k].n != 1
        ]
        redis_figs = self.redis_figures()

        def rel(at: float | None, since: float | None) -> float | None:
            return None if at is None or since is None else round(at - since, 3)

        after = [(t, used, q) for t, used, q in self.samples if started and t >= started]
        backlog = self.results.get("at_workers_start", {}).get("queued") or 0
        under = next((t for t, _u, q in after if 0 <= q <= backlog // 100), None)
        mark = self.shed or 100
        below = next((t for t, u, _q in after if 0 <= u < self.maxmemory * mark / 100), None)
        refused = [a for a in r.attempts if a.status == 503]
        acked_after_refusal = {
            (a.source, a.event_id) for a in refused if (a.source, a.event_id) in r.acked
        }
        self.results["redis_full"] = {
            "shed_at_memory_percent": self.shed,
            "maxmemory_mb": self.args.maxmemory_mb,
            "first_503_s": rel(full_at, self.t0),
            "acknowledged_before_first_503": sum(
                1 for at, _s in r.acked.values() if full_at is not None and at <= full_at
            ),
            "workers_started_s": rel(started, self.t0),
            "at_workers_start": self.results.get("at_workers_start"),
            "workers_started_to_first_202_s": rel(back, started),
            "workers_started_to_memory_below_mark_s": rel(below, started),
            "workers_started_to_backlog_under_1pct_s": rel(under, started),
            "answers_503": len(refused),
            "answers_503_after_the_first_202_again": sum(
                1 for a in refused if back is not None and a.t > back
            ),
            "events_refused_then_acknowledged": len(acked_after_refusal),
            "acknowledged_not_applied_exactly_once": not_once,
            "redis": redis_figs,
            "memory_samples": len(self.samples),
        }
        self.results["supervisor"] = report.supervisor(self)
        self.results["redis_keys"] = self.redis_key_census()

    def targets(self) -> list[dict[str, Any]]:
        c, ing, rf = self.results["checks"], self.results["ingress"], self.results["redis_full"]
        d = self.results["deliveries"]
        row = report.rows(f"shed_at_memory_percent = {self.shed}: ")
        lost = len(c["lost"])
        dup = len(c["duplicated_effects"])
        not_once = rf["acknowledged_not_applied_exactly_once"]
        again = d["redeliveries_accepted_again_after_acknowledgement"]
        start = rf["at_workers_start"] or {}
        red = rf["redis"]
        drain = c["drain_after_sender"]
        return [
            row(
                "Redis filled: 503 before any worker ran",
                rf["first_503_s"] is not None,
                f"first 503 at {rf['first_503_s']} s after {rf['acknowledged_before_first_503']}"
                f" events acknowledged; at the workers' start {start.get('queued')} queued,"
                f" Redis at {start.get('percent_of_maxmemory')} % of maxmemory",
            ),
            row(
                "0 acknowledged events lost",
                lost == 0,
                f"{lost} lost of {c['acknowledged']} acknowledged",
            ),
            row("0 effects applied twice", dup == 0, f"{dup} applied twice"),
            row(
                "every 202 applied exactly once",
                not not_once,
                f"{len(not_once)} of {c['acknowledged']} acknowledged not applied exactly once",
            ),
            row(
                "no redelivery accepted again after its acknowledgement",
                not again,
                f"{len(again)} accepted again",
            ),
            row("Redis evicted_keys == 0", red["evicted_keys"] == 0, f"{red['evicted_keys']}"),
            row(
                "new events accepted again after the workers started",
                rf["workers_started_to_first_202_s"] is not None,
                f"first 202 {rf['workers_started_to_first_202_s']} s after the workers started"
                f" (memory under the mark after {rf['workers_started_to_memory_below_mark_s']} s,"
                f" backlog under 1 % after {rf['workers_started_to_backlog_under_1pct_s']} s)",
            ),
            row(
                "queues drained after the sender stopped",
                bool(drain.get("drained")),
                f"{drain.get('seconds')} s, {drain.get('missing')} missing",
            ),
            row(
                "refusals",
                None,
                f"{rf['answers_503']} answers 503 ({rf['answers_503_after_the_first_202_again']}"
                f" after the first 202 again), {rf['events_refused_then_acknowledged']} events"
                f" refused then acknowledged, {ing['deliveries_given_up']} deliveries given up;"
                f" Redis refused {red['writes_refused_oom']} writes (OOM), peak"
                f" {red['used_memory_peak_percent']} % of maxmemory",
            ),
            report.ingress_row(row, ing),
            report.deaths_row(row, self.results),
        ]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python chaos/run.py --scenario redis-full",
        description="A Redis filled to its maxmemory with no worker running, then drained by"
        " two workers under load, once per shed_at_memory_percent mode (see chaos/redis_full.py)",
    )
    parser.add_argument("--scenario", choices=["redis-full"], default="redis-full")
    parser.add_argument("--rate", type=float, default=150.0, help="new events/s (default 150)")
    parser.add_argument(
        "--maxmemory-mb", type=int, default=32, help="Redis's maxmemory in MB (default 32)"
    )
    parser.add_argument(
        "--modes",
        default="95,0",
        help="shed_at_memory_percent values to run, in order (default 95,0: both)",
    )
    parser.add_argument(
        "--fill-timeout",
        type=float,
        default=150.0,
        help="give up waiting for the first 503 after this many seconds (default 150)",
    )
    parser.add_argument(
        "--full-for",
        type=float,
        default=5.0,
        help="keep sending into the full Redis this long before the workers start (default 5)",
    )
    parser.add_argument(
        "--after",
        type=float,
        default=30.0,
        help="keep sending new events this long after the workers started (default 30)",
    )
    parser.add_argument(
        "--provider-retries",
        default=",".join(f"{x:g}" for x in DEFAULT_RETRIES),
        help="the sender's retry delays in seconds after a 5xx or no answer"
        f" (default {','.join(f'{x:g}' for x in DEFAULT_RETRIES)})",
    )
    parser.add_argument(
        "--flaky-share",
        type=float,
        default=Mix.flaky,
        help=f"share of events whose handler fails once, then succeeds (default {Mix.flaky:g})",
    )
    add_scenario_options(parser, DEFAULT_OUT)
    args = parser.parse_args(argv)
    try:
        args.modes = [int(x) for x in args.modes.split(",") if x.strip()]
        args.provider_retries = [float(x) for x in args.provider_retries.split(",") if x.strip()]
    except ValueError:
        parser.error("--modes and --provider-retries are comma-separated numbers")
    if not args.modes or any(not 0 <= m <= 100 for m in args.modes):
        parser.error("--modes takes shed_at_memory_percent values from 0 to 100")
    if args.rate <= 0 or args.maxmemory_mb < 4 or not 0 <= args.flaky_share <= 0.5:
        parser.error(
            "--rate must be positive, --maxmemory-mb at least 4, --flaky-share from 0 to 0.5"
        )
    finish_scenario_args(args, 1.0, WORKERS)
    return args


def run_mode(args: argparse.Namespace, shed: int) -> dict[str, Any]:
    harness = RedisFullHarness(args, shed)
    return run_scenario_mode(
        harness,
        args.keep_workdir,
        "redis-full",
        lambda: harness.wait_drained(harness.profile.drain_timeout, "drain after the sender"),
        shed_at_memory_percent=shed,
    )


def print_summary(results: dict[str, Any]) -> None:
    print()
    print(f"command:  {results['command']}")
    for name, res in results["modes"].items():
        rf, d, c = res.get("redis_full", {}), res.get("deliveries", {}), res.get("checks", {})
        print(
            f"{name}: sent {d.get('events_sent')} events ({d.get('send_rate_per_s')}/s);"
            f" {c.get('acknowledged')} acknowledged; {len(c.get('not_acknowledged', []))} never"
            f" acknowledged; {res.get('wall_seconds')} s; database {res.get('database')}"
        )
        print(
            f"  first 503 at {rf.get('first_503_s')} s; workers started at"
            f" {rf.get('workers_started_s')} s; first 202 again"
            f" {rf.get('workers_started_to_first_202_s')} s after; lost {len(c.get('lost', []))},"
            f" applied twice {len(c.get('duplicated_effects', []))}"
        )
        if res.get("harness_errors"):
            print(f"  harness notes: {res['harness_errors']}")
    report.print_end(results)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)

    def run(results: dict[str, Any]) -> int:
        results.update(
            {
                "rate": args.rate,
                "maxmemory_mb": args.maxmemory_mb,
                "full_for_s": args.full_for,
                "after_s": args.after,
                "provider_retries_s": args.provider_retries,
                "seed": args.seed,
                "modes": {},
                "targets": [],
                "out": str(args.out),
            }
        )
        modes = [(f"shed_{m}", functools.partial(run_mode, args, m)) for m in args.modes]
        return run_modes(results, modes)

    return scenario_main("redis-full", args, argv, run, print_summary)
