"""The failover scenario: ``python chaos/run.py --scenario failover [options]``.

A Redis primary, one replica and three Sentinels (``redis-server`` processes on free
127.0.0.1 ports: :mod:`tests.redis_topology`), one ``hookline serve`` and two ``hookline
worker`` processes whose ``redis_url`` is the topology's ``redis+sentinel://`` URL, under the
provider-like sender (:mod:`chaos.sender`: redeliveries, twins, out-of-order pairs, events
whose handler fails once). Mid-load the primary is killed with ``kill -9``; the Sentinels
promote the replica; a few seconds after the kill (once the promotion is seen) the old
primary is started again, as an operator or a supervisor would, and the Sentinels make it a
replica of the new one.

It runs once per ``[ingest] ack_replicas`` mode asked for (``--modes 1,0``: both, one after
the other, each on a topology, processes and tables of its own) and checks, per mode:

- ``ack_replicas = 1``: no acknowledged event lost (each is in ``webhook_events`` or
  ``dead_letters`` once the queues drained) and none applied twice (the chaos handlers'
  ``chaos_effects`` rows, deliberately not idempotent);
- ``ack_replicas = 0``: the number lost is reported, not asserted (Redis replicates
  asynchronously: what the primary acknowledged in its last moments may never reach the
  replica), with the claims the new primary does not hold (a redelivery of those events
  would be accepted again); still none applied twice;
- both: the time from the kill to the first ``202`` answered by the new primary, the ``503``
  answers during the switch (none may take 1 s or more), and every process stopped at the
  end.

The result JSON has, per mode, the main run's ``checks``, ``ingress``, ``deliveries``,
``tables``, ``redis_keys``, ``processes`` and ``targets`` (PASS/MISS/n/a rows), plus
``failover`` (the switch's timeline and figures); ``targets`` at the top level gathers every
mode's rows. Exit status: 0 all PASS, 1 a MISS, 2 the run itself failed, 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chaos import report
from chaos.harness import (
    Harness,
    add_scenario_options,
    finish_scenario_args,
    run_modes,
    run_scenario_mode,
    scenario_main,
)
from chaos.sender import RETRY_DELAYS, Attempt, Key, Mix, Sender
from tests.processes import ROOT, processes_in_groups
from tests.redis_topology import SERVICE, Node, Topology, restart_as_replica, sentinel_topology

if TYPE_CHECKING:
    import redis

DEFAULT_OUT = ROOT / "chaos" / "results" / "failover-latest.json"
#: an answer during the switch must come within this (a 503 is only useful if it is quick)
MAX_503_SECONDS = report.MAX_503_SECONDS
#: the old primary is started again no later than this after the kill, promoted or not
RESTART_AT_THE_LATEST_SECONDS = 20.0
#: queues idle and nothing more applied for this long: what is missing now stays missing
SETTLE_SECONDS = 8.0


def switch_client(port: int) -> redis.Redis:
    """A client of the node on 127.0.0.1:``port`` that gives up fast (0.3 s, no retry): for
    watching a switch every 0.1 s."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return redis.Redis(
        host="127.0.0.1",
        port=port,
        socket_timeout=0.3,
        socket_connect_timeout=0.3,
        retry=Retry(NoBackoff(), 0),
    )


class FailoverHarness(Harness):
    """The main run's harness (database, configuration, processes under a supervisor, the
    sender, the action loop, the checks on the tables), on a Sentinel topology instead of one
    Redis, with one fault: ``kill -9`` of the primary."""

    def __init__(self, args: argparse.Namespace, ack_replicas: int) -> None:
        super().__init__(args)
        self.ack_replicas = ack_replicas
        duration = float(args.seconds)
        retries = sum(args.provider_retries)
        budget = duration + retries + args.drain_timeout + 150
        self.profile = dataclasses.replace(
            self.profile,
            name=f"failover-ack{ack_replicas}",
            duration=duration,
            workers=2,
            drain_timeout=args.drain_timeout,
            slow_share=0.0,
            budget=budget,
        )
        self.deadline = self.started + budget
        self.topo: Topology | None = None
        self._topo_stack = contextlib.ExitStack()
        self.topo_pids: list[int] = []
        #: wall-clock times of the switch's steps (absent: not seen)
        self.marks: dict[str, float] = {}
        self._restarter: threading.Thread | None = None
        self.role_samples: list[dict[str, Any]] = []

    # -- setup -----------------------------------------------------------------------------

    def plan(self) -> str:
        """The run, said as it starts."""
        a = self.args
        return (
            f"failover, ack_replicas = {self.ack_replicas}: {a.seconds:.0f} s at {a.rate}/s,"
            f" kill -9 of the primary at {a.kill_at:.0f} s, restarted {a.restart_after:.0f} s"
            f" later; 1 ingress, 2 workers; work dir {self.work}"
        )

    def setup(self) -> None:
        self.say(self.plan())
        self.snapshot()
        self._setup_database()
        self._setup_redis()
        self._write_config()
        self._start_processes()

    def _setup_redis(self) -> None:
        from shared import redisconn

        self.topo = self._topo_stack.enter_context(sentinel_topology(self.work / "redis"))
        t = self.topo
        self.topo_pids = [n.proc.pid for n in (t.primary, t.replica, *t.sentinels) if n.proc]
        # follows the primary the sentinels name, like every hookline process
        self.rclient = redisconn.connect(t.url, socket_timeout=2, socket_connect_timeout=1)
        self.say(
            f"redis: primary :{t.primary.port}, replica :{t.replica.port}, sentinels"
            f" {', '.join(f':{s.port}' for s in t.sentinels)} ({t.url})"
        )

    def _write_config(self) -> None:
        from shared.config import load_settings

        assert self.topo is not None
        text = self.config_text(
            "chaos/run.py --scenario failover",
            self.topo.url,
            ingest=f"ack_replicas = {self.ack_replicas}\n"
            f"ack_replicas_timeout_ms = {self.args.ack_timeout_ms}",
        )
        self.config_path.write_text(text)
        self.settings = load_settings(self.config_path)

    # -- watching the switch ---------------------------------------------------------------

    def _start_monitors(self) -> None:
        thread = threading.Thread(target=self._watch_roles, name="chaos-roles", daemon=True)
        thread.start()
        self._threads.append(thread)

    def _mark(self, name: str, **details: Any) -> None:
        if name not in self.marks:
            self.marks[name] = time.time()
            self.record(name, **details)

    def _watch_roles(self) -> None:
        """Which primary the sentinels name, besides :meth:`_watch_switch`'s steps."""
        import redis

        assert self.topo is not None
        t = self.topo
        sentinels = [switch_client(s.port) for s in t.sentinels]

        def look() -> None:
            named: list[int | None] = []
            for s in sentinels:
                try:
                    addr: Any = s.sentinel_get_master_addr_by_name(SERVICE)
                    named.append(int(addr[1]) if addr else None)
                except (redis.RedisError, OSError):
                    named.append(None)
            if t.replica.port in named:
                self._mark("a sentinel names the replica as primary", sentinels=named)
            if all(p == t.replica.port for p in named):
                self._mark("every sentinel names the replica as primary")

        self._watch_switch(t.replica.port, t.primary.port, look, *sentinels)

    def _watch_switch(
        self, heir: int, old: int, look: Callable[[], None], *others: redis.Redis
    ) -> None:
        """Every 0.1 s after the kill: ``look()`` (who the topology names as primary), the
        role of the replica on port ``heir`` and its own replica; once the old primary (port
        ``old``) is back, its role and replication link. The first time each step is seen
        is marked. ``others``, ``look``'s clients, are closed at the end."""
        import redis

        new, back = switch_client(heir), switch_client(old)
        try:
            while not self._stop_threads.wait(0.1):
                if "killed" not in self.marks:
                    continue
                look()
                with contextlib.suppress(redis.RedisError, OSError):
                    self._look_at_heir(new.info("replication"))
                if "old primary started again" in self.marks:
                    with contextlib.suppress(redis.RedisError, OSError):
                        self._look_at_old(back.info("replication"))
        finally:
            for c in (*others, back, new):
                c.close()

    def _look_at_heir(self, info: Any) -> None:
        """The promoted replica's INFO replication: a primary yet, with a replica online?"""
        if info.get("role") == "master":
            self._mark("the replica is a primary (role master)")
            if any(
                isinstance(v, dict) and v.get("state") == "online"
                for k, v in info.items()
                if k.startswith("slave")
            ):
                self._mark("the new primary has a replica online")

    def _look_at_old(self, info: Any) -> None:
        """The old primary's INFO replication once it is back: its role and link (each
        change kept in ``role_samples``), a replica yet, in sync?"""
        sample = {
            "t": round(time.time() - self.t0, 2),
            "role": info.get("role"),
            "link": info.get("master_link_status"),
            "master_port": info.get("master_port"),
        }
        if not self.role_samples or {
            k: v for k, v in self.role_samples[-1].items() if k != "t"
        } != {k: v for k, v in sample.items() if k != "t"}:
            self.role_samples.append(sample)
        if info.get("role") == "slave":
            self._mark("the old primary is a replica", of=info.get("master_port"))
            if info.get("master_link_status") == "up":
                self._mark("the old primary is in sync (link up)")

    # -- the fault -------------------------------------------------------------------------

    def _kill(self, node: Node) -> None:
        """``kill -9`` of ``node`` (SIGKILL to its process group, then reaped): the switch
        starts."""
        window: dict[str, Any] = {"killed_at": time.time()}
        self.redis_windows.append(window)
        self.marks["killed"] = window["killed_at"]
        node.kill()

    @contextlib.contextmanager
    def _restarting(self, node: Node) -> Iterator[None]:
        """Around starting the old primary ``node`` again: a failure is noted (the run goes
        on), and its new process is one of the Redis processes the teardown stops."""
        try:
            yield
        except Exception as err:
            self.errors.append(f"restarting the old primary failed: {err!r}")
            self.record("restarting the old primary failed", error=repr(err))
        finally:
            if node.proc is not None:
                self.topo_pids.append(node.proc.pid)

    def kill_primary(self) -> float | None:
        assert self.topo is not None
        node = self.topo.primary
        self._kill(node)
        self.record("kill -9 redis primary", port=node.port)
        self.schedule(self.args.restart_after, "restart the old primary", self.restart_old, True)
        return None

    def restart_old(self) -> float | None:
        """Once the sentinels have promoted the replica (or 20 s after the kill at the latest),
        start the old primary again in a thread: :func:`restart_as_replica` waits until the
        sentinels have made it a replica."""
        assert self.topo is not None
        since_kill = time.time() - self.marks["killed"]
        promoted = "the replica is a primary (role master)" in self.marks
        if not promoted and since_kill < RESTART_AT_THE_LATEST_SECONDS:
            return 0.2
        topo = self.topo

        def restart() -> None:
            with self._restarting(topo.primary):
                restart_as_replica(topo, topo.primary)
                self.marks.setdefault("restart_as_replica returned", time.time())

        self._mark("old primary started again", port=topo.primary.port, promoted=promoted)
        self._restarter = threading.Thread(target=restart, name="chaos-restart", daemon=True)
        self._restarter.start()
        return None

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
            Mix(poison=0.0, slow=0.0),
            a.seed,
            retry_delays=(0.0, *a.provider_retries),
        )
        self.t0 = time.time()
        self.sender.start()
        self.say("sender started")
        self.schedule(a.kill_at, "kill -9 redis primary", self.kill_primary)
        self.run_actions()
        if self._restarter is not None:
            self._restarter.join(60)

    def wait_settled(self) -> dict[str, Any]:
        """Until Redis holds no queued, in-flight or scheduled job and every acknowledged
        event is in a table; or, when some never arrive (lost with the old primary), until
        Redis has been idle and nothing more was applied for SETTLE_SECONDS; bounded."""
        assert self.sender is not None
        acked = set(self.sender.result.acked)
        started = time.time()
        deadline = min(started + self.profile.drain_timeout, self.deadline - 45)
        state: dict[str, Any] = {}
        missing: set[Key] = set()
        idle_since: float | None = None
        streak = 0
        last_missing = -1
        while time.time() < deadline:
            self.sup.check(self.on_restart)
            try:
                state = self.rq_state()
                missing = acked - self.all_applied()
                busy = any(state[k] for k in ("queued", "intermediate", "started", "scheduled"))
            except Exception as err:
                state, busy = {"error": repr(err)}, True
            streak = streak + 1 if not busy and not missing else 0
            if streak >= 2:
                break
            if busy or len(missing) != last_missing:
                idle_since = None if busy else time.time()
                last_missing = len(missing)
            elif idle_since is not None and time.time() - idle_since >= SETTLE_SECONDS:
                break
            time.sleep(1.0)
        took = time.time() - started
        drained = not missing and streak >= 2
        self.say(
            f"drain: {'drained' if drained else 'settled'} after {took:.1f} s (redis {state},"
            f" {len(missing)} acknowledged events not in a table)"
        )
        return {
            "drained": drained,
            "seconds": round(took, 1),
            "redis": state,
            "missing": len(missing),
        }

    # -- figures ---------------------------------------------------------------------------

    def claims_missing(self, acked: Sequence[Key]) -> list[Key]:
        """The acknowledged events whose claim the primary at the end does not hold."""
        from shared.enqueue import JobSpec, claims_held

        spec = JobSpec.from_settings(self.settings)
        found = claims_held(self.rclient, spec, acked)
        return [k for k, n in zip(acked, found, strict=True) if not n]

    def _first_202(
        self, since: float, of: Callable[[Attempt], bool] = lambda _a: True
    ) -> Attempt | None:
        """The first answer 202 (the first to come back) to a request sent at ``since`` or
        later, of the events ``of`` keeps: by the new primary. The switch, for
        report.ingress, lasts from the kill until then (none: until the sender's end)."""
        assert self.sender is not None
        r = self.sender.result
        after = [a for a in r.attempts if a.t >= since and a.status == 202 and of(a)]
        first = min(after, key=lambda a: a.t + a.latency, default=None)
        self.redis_windows[0]["ready_at"] = first.t + first.latency if first else r.finished_at
        return first

    def _switch_figures(self, first_202: Attempt | None) -> dict[str, Any]:
        """From the kill (none: all None) to the first 202's answer, then to the sending
        of its request; keyed ``to_202`` and ``sent``."""
        kill = self.marks.get("killed")
        if first_202 is None or kill is None:
            return {"to_202": None, "sent": None}
        return {
            "to_202": round(first_202.t + first_202.latency - kill, 3),
            "sent": round(first_202.t - kill, 3),
        }

    def _since_kill(self, at: float | None) -> float | None:
        kill = self.marks.get("killed")
        return None if at is None or kill is None else round(at - kill, 2)

    def _acknowledged_before_kill(self, key: Key) -> float | None:
        assert self.sender is not None
        kill = self.marks.get("killed")
        return None if kill is None else round(kill - self.sender.result.acked[key][0], 3)

    def _after_kill(self) -> dict[str, float | None]:
        """Each step of the switch seen, in seconds after the kill."""
        return {name: self._since_kill(at) for name, at in self.marks.items() if name != "killed"}

    def measure(self, drain: dict[str, Any]) -> None:
        assert self.sender is not None and self.topo is not None
        r = self.sender.result
        kill = self.marks.get("killed")
        tables = self.tables()
        first_202 = None if kill is None else self._first_202(kill)
        report.measure_run(self, tables, drain)
        acked = sorted(r.acked)
        lost = {tuple(k) for k in self.results["checks"]["lost"]}
        no_claim = self.claims_missing(acked)
        switch = [a for a in r.attempts if kill is not None and self._in_switch(a)]
        s503 = [a.latency for a in switch if a.status == 503]
        first = self._switch_figures(first_202)
        self.results["failover"] = {
            "ack_replicas": self.ack_replicas,
            "ack_replicas_timeout_ms": self.args.ack_timeout_ms,
            "killed_at_s": None if kill is None else round(kill - self.t0, 2),
            "after_kill_s": self._after_kill(),
            "kill_to_first_202_s": first["to_202"],
            "first_202_request_sent_after_kill_s": first["sent"],
            "requests_during_switch": len(switch),
            "answers_during_switch": report.count(report.answer(a) for a in switch),
            "answers_503": len(s503),
            **report.slow_503s(s503, (50, 99)),
            "lost": len(lost),
            "lost_events": [
                {"event": list(k), "acknowledged_before_kill_s": self._acknowledged_before_kill(k)}
                for k in sorted(lost)
            ],
            "claims_missing_on_new_primary": len(no_claim),
            "claims_missing_events": [
                {
                    "event": list(k),
                    "acknowledged_before_kill_s": self._acknowledged_before_kill(k),
                    "in_a_table": k not in lost,
                }
                for k in no_claim[:50]
            ],
            "primary_at_end": self.topo.current_primary_port(),
            "replica_port": self.topo.replica.port,
            "old_primary_port": self.topo.primary.port,
            "old_primary_roles": self.role_samples,
        }
        self.results["supervisor"] = report.supervisor(self)
        self.results["redis_keys"] = self.redis_key_census()

    def _in_switch(self, a: Attempt) -> bool:
        return report._redis_window(self, a) is not None

    def targets(self) -> list[dict[str, Any]]:
        c, ing, fo = self.results["checks"], self.results["ingress"], self.results["failover"]
        row = report.rows(f"ack_replicas = {self.ack_replicas}: ")
        lost = len(c["lost"])
        dup = len(c["duplicated_effects"])
        n503 = fo["answers_503"]
        return [
            row(
                "0 acknowledged events lost" if self.ack_replicas else "acknowledged events lost",
                lost == 0 if self.ack_replicas else None,
                f"{lost} lost of {c['acknowledged']} acknowledged;"
                f" {fo['claims_missing_on_new_primary']} claims not on the new primary",
            ),
            row("0 effects applied twice", dup == 0, f"{dup} applied twice"),
            row(
                "503s during the switch each under 1 s",
                None if n503 == 0 else fo["answers_503_1s_or_more"] == 0,
                f"{n503} answers 503, max {fo['answers_503_max_s']} s,"
                f" median {fo['answers_503_p50_s']} s",
            ),
            row(
                "kill -9 -> first 202 on the new primary",
                None,
                f"{fo['kill_to_first_202_s']} s (promotion seen after"
                f" {fo['after_kill_s'].get('the replica is a primary (role master)')} s,"
                f" old primary in sync after"
                f" {fo['after_kill_s'].get('the old primary is in sync (link up)')} s)",
            ),
            report.ingress_row(row, ing),
            report.deaths_row(row, self.results),
        ]

    # -- teardown --------------------------------------------------------------------------

    def teardown(self, keep: bool) -> None:
        if self.sender is not None:
            self.sender.abort()
            self.sender.join(10)
        self._stop_threads.set()
        if self._restarter is not None:
            self._restarter.join(60)
        self.sup.stop_all()  # the processes first, then the Redis topology under them
        try:
            self._topo_stack.close()
        except Exception as err:
            self.errors.append(f"stopping the Redis topology: {err!r}")
        super().teardown(keep)
        left = processes_in_groups(self.topo_pids)
        procs = self.results.setdefault("processes", {})
        procs["redis_process_groups"] = sorted(set(self.topo_pids))
        procs["redis_left_running"] = left
        procs["still_alive"] = sorted(set(procs.get("still_alive", [])) | set(left))


def switch_parser(
    scenario: str,
    description: str,
    default_out: Path,
    add_own: Callable[[argparse.ArgumentParser], object],
) -> argparse.ArgumentParser:
    """The options of a scenario that kills a Redis primary under load: ``--seconds``,
    ``--rate``, ``--kill-at``, ``--restart-after``, the scenario's own (``add_own``),
    ``--ack-timeout-ms``, ``--provider-retries``, then :func:`add_scenario_options`'."""
    parser = argparse.ArgumentParser(
        prog=f"python chaos/run.py --scenario {scenario}", description=description
    )
    parser.add_argument("--scenario", choices=[scenario], default=scenario)
    parser.add_argument("--seconds", type=float, default=60.0, help="sending time (default 60)")
    parser.add_argument("--rate", type=float, default=40.0, help="new events/s (default 40)")
    parser.add_argument(
        "--kill-at", type=float, default=None, help="seconds into sending (default 1/3 of it)"
    )
    parser.add_argument(
        "--restart-after",
        type=float,
        default=5.0,
        help="start the old primary again this long after the kill, once the replica is"
        " promoted (default 5)",
    )
    add_own(parser)
    parser.add_argument("--ack-timeout-ms", type=int, default=200, help="ack_replicas_timeout_ms")
    parser.add_argument(
        "--provider-retries",
        default=",".join(f"{x:g}" for x in RETRY_DELAYS[1:]),
        help="the sender's retry delays in seconds after a 5xx or no answer (default 5,30)",
    )
    add_scenario_options(parser, default_out)
    return parser


def finish_kill_at(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``--kill-at``: a third of ``--seconds`` by default, and within them."""
    if args.kill_at is None:
        args.kill_at = args.seconds / 3
    if not 0 < args.kill_at < args.seconds:
        parser.error("--kill-at must fall within --seconds")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = switch_parser(
        "failover",
        "Redis failover under load: kill -9 of the primary behind Sentinel, once"
        " per ack_replicas mode (see chaos/failover.py)",
        DEFAULT_OUT,
        lambda p: p.add_argument(
            "--modes",
            default="1,0",
            help="ack_replicas values to run, in order (default 1,0: both)",
        ),
    )
    args = parser.parse_args(argv)
    try:
        args.modes = [int(x) for x in args.modes.split(",") if x.strip()]
        args.provider_retries = [float(x) for x in args.provider_retries.split(",") if x.strip()]
    except ValueError:
        parser.error("--modes and --provider-retries are comma-separated numbers")
    if not args.modes or any(m not in (0, 1) for m in args.modes):
        parser.error("--modes takes 0 and/or 1")
    finish_kill_at(parser, args)
    finish_scenario_args(args, args.seconds / 60, 2)
    return args


def switch_header(args: argparse.Namespace) -> dict[str, Any]:
    """A kill scenario's options, at the head of its results."""
    return {
        "seconds": args.seconds,
        "rate": args.rate,
        "kill_at_s": args.kill_at,
        "restart_after_s": args.restart_after,
        "provider_retries_s": args.provider_retries,
        "seed": args.seed,
    }


def run_mode(args: argparse.Namespace, ack_replicas: int) -> dict[str, Any]:
    harness = FailoverHarness(args, ack_replicas)
    return run_scenario_mode(
        harness, args.keep_workdir, "failover", harness.wait_settled, ack_replicas=ack_replicas
    )


def print_summary(results: dict[str, Any]) -> None:
    print()
    print(f"command:  {results['command']}")
    for name, res in results["modes"].items():
        fo, d, c = res.get("failover", {}), res.get("deliveries", {}), res.get("checks", {})
        print(
            f"{name}: sent {d.get('events_sent')} events ({d.get('send_rate_per_s')}/s);"
            f" {c.get('acknowledged')} acknowledged; {len(c.get('not_acknowledged', []))} never"
            f" acknowledged; database {res.get('database')}"
        )
        steps = ", ".join(f"{k} +{v} s" for k, v in fo.get("after_kill_s", {}).items())
        print(f"  after the kill: {steps}")
        print(
            f"  during the switch: {fo.get('answers_during_switch')}; lost {fo.get('lost')},"
            f" claims not on the new primary {fo.get('claims_missing_on_new_primary')}"
        )
        if res.get("harness_errors"):
            print(f"  harness notes: {res['harness_errors']}")
    report.print_end(results)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)

    def run(results: dict[str, Any]) -> int:
        results.update(switch_header(args))
        results.update({"modes": {}, "targets": [], "out": str(args.out)})
        modes = [(f"ack_replicas_{m}", functools.partial(run_mode, args, m)) for m in args.modes]
        return run_modes(results, modes)

    return scenario_main("failover", args, argv, run, print_summary)
