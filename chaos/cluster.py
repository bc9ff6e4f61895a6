"""The cluster scenario: ``python chaos/run.py --scenario cluster [options]``.

A real Redis Cluster of three primaries, each with a replica (``redis-server`` processes on
free 127.0.0.1 ports: :func:`tests.redis_topology.cluster_topology`, ``cluster-node-timeout``
1000 ms), ``redis_shards = 3`` (each shard's keys in one hash slot; the launcher splits the
slots evenly, so each primary holds one shard: checked, and said so in the result),
``[ingest] ack_replicas = 1`` (an acknowledgement waits for the shard primary's replica), one
``hookline serve`` and one ``hookline worker`` (which runs one process per shard), under the
provider-like sender (:mod:`chaos.sender`: redeliveries, twins, out-of-order pairs, events
whose handler fails once). Mid-load the primary holding one shard (``--shard``, 1 by default)
is killed with ``kill -9``; the cluster promotes its replica by itself; a few seconds after the
kill (once the promotion is seen) the old primary is started again with its ``nodes.conf``
and rejoins as the new primary's replica. Until then the new primary has no replica, so
``WAIT`` cannot be satisfied and the ingress answers that shard's events 503: the kill's
"switch" lasts until the old primary is back and in sync.

It checks: no acknowledged event lost (each is in ``webhook_events`` or ``dead_letters`` once
the queues drained), none applied twice (the chaos handlers' ``chaos_effects`` rows,
deliberately not idempotent), the other shards answered only 202/200 during the switch, the
503s were all for events of the killed shard (and each came within a second), the moved shard
answered 202 again (the time from the kill is the headline figure), the old primary rejoined
as a replica, no hookline process died, and every process was stopped at the end.

It is :class:`chaos.failover.FailoverHarness` (the sender, the kill scheduled mid-load, the
drain that settles when something is lost, the teardown of the Redis processes) on a cluster
instead of a Sentinel topology. The result JSON has the main run's ``checks``, ``ingress``,
``deliveries``, ``tables``, ``redis_keys``, ``processes`` and ``targets`` (PASS/MISS/n/a
rows), plus ``cluster`` (the shards' placement, the switch's timeline and figures, the
answers by shard). Exit status: 0 all PASS, 1 a MISS, 2 the run itself failed, 130
interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import re
import threading
import time
from collections.abc import Sequence
from typing import Any

from chaos import report
from chaos.failover import (
    FailoverHarness,
    finish_kill_at,
    switch_client,
    switch_header,
    switch_parser,
)
from chaos.harness import finish_scenario_args, http_status, run_scenario_mode, scenario_main
from chaos.sender import Attempt, Key
from tests.processes import ROOT, hookline
from tests.redis_topology import Cluster, Node, cluster_topology

DEFAULT_OUT = ROOT / "chaos" / "results" / "cluster-latest.json"
SHARDS = 3
#: the old primary is started again no later than this after the kill, promoted or not
RESTART_AT_THE_LATEST_SECONDS = 20.0
#: ``hookline worker``'s line when one of its shard processes exits (hookline.shardworkers)
_CHILD_EXIT = re.compile(r"the worker of shard (\d+) exited with status (-?\d+)")


class ClusterHarness(FailoverHarness):
    """The failover scenario's harness on a Redis Cluster: ``redis_shards = 3``, one
    ingress, one ``hookline worker`` (three shard processes), one fault: ``kill -9`` of the
    primary holding ``--shard``."""

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args, ack_replicas=1)
        self.profile = dataclasses.replace(self.profile, name="cluster", workers=1)
        from shared import keys

        self.layout = keys.Layout.of(SHARDS, cluster=True)
        self.target = self.layout.shards[args.shard]
        self.cluster: Cluster | None = None
        self.shard_clients: Any = None  # shared.shards.ShardClients[Redis], once configured
        self.victim: Node | None = None  # the primary killed
        self.heir: Node | None = None  # its replica, promoted
        self.placement: list[dict[str, Any]] = []
        self.durations: dict[str, float] = {}

    def shard_of(self, a: Attempt | Key) -> int:
        source, event_id = (a.source, a.event_id) if isinstance(a, Attempt) else a
        return self.layout.route(source, event_id).index

    # -- setup -----------------------------------------------------------------------------

    def plan(self) -> str:
        a = self.args
        return (
            f"cluster: {a.seconds:.0f} s at {a.rate}/s, {SHARDS} shards, ack_replicas = 1;"
            f" kill -9 of shard {a.shard}'s primary at {a.kill_at:.0f} s, restarted"
            f" {a.restart_after:.0f} s later; 1 ingress, 1 worker ({SHARDS} shard processes);"
            f" work dir {self.work}"
        )

    def _setup_redis(self) -> None:
        from shared import redisconn

        self.cluster = self._topo_stack.enter_context(cluster_topology(self.work / "redis"))
        c = self.cluster
        self.topo_pids = [n.proc.pid for n in c.nodes if n.proc]
        self.rclient = redisconn.connect(
            c.url, self.layout.home.slot, socket_timeout=2, socket_connect_timeout=1
        )
        ranges = c.slot_ranges()
        primaries = c.primaries()
        for shard in self.layout.shards:
            assert shard.slot is not None
            primary = c.primary_for_slot(shard.slot)
            first, last = next((f, la) for f, la, n in ranges if n is primary)
            self.placement.append(
                {
                    "shard": shard.index,
                    "tag": shard.tag,
                    "slot": shard.slot,
                    "primary_port": primary.port,
                    "primary_slots": [first, last],
                    "replica_port": c.replica_of(primary).port,
                }
            )
        assert self.target.slot is not None
        self.victim = c.primary_for_slot(self.target.slot)
        self.heir = c.replica_of(self.victim)
        self.results["cluster_at_start"] = {
            "created_in_s": round(c.created_in, 2),
            "primaries": [p.port for p in primaries],
            "placement": self.placement,
            "one_shard_per_primary": self.one_shard_per_primary(primaries),
        }
        where = "; ".join(
            f"shard {p['shard']} (slot {p['slot']}) on :{p['primary_port']}"
            f" (slots {p['primary_slots'][0]}-{p['primary_slots'][1]}, replica"
            f" :{p['replica_port']})"
            for p in self.placement
        )
        self.say(f"redis cluster {c.url}: {where}")

    def one_shard_per_primary(self, primaries: Sequence[Node]) -> bool:
        """Each primary serving slots holds exactly one shard's slot."""
        held = sorted(p["primary_port"] for p in self.placement)
        return held == sorted(n.port for n in primaries) and len(set(held)) == SHARDS

    def _write_config(self) -> None:
        from shared import shards
        from shared.config import load_settings

        assert self.cluster is not None
        text = self.config_text(
            "chaos/run.py --scenario cluster",
            self.cluster.url,
            top=f"redis_shards = {SHARDS}\n",
            ingest=f"ack_replicas = 1\nack_replicas_timeout_ms = {self.args.ack_timeout_ms}",
        )
        self.config_path.write_text(text)
        self.settings = load_settings(self.config_path)
        if shards.layout_for(self.settings) != self.layout:
            raise RuntimeError("the configuration's shards are not the scenario's")
        self.shard_clients = shards.connect(
            self.settings, socket_timeout=2, socket_connect_timeout=1
        )

    def _start_processes(self) -> None:
        """One ingress and one ``hookline worker`` (a process per shard); ready once the
        ingress answers /readyz and every shard has a worker registered."""
        from shared import rqcompat

        env = self._env()
        base = self._add_ingress(env)
        self.sup.add("worker", hookline("worker"), env, self.logs / "worker.log", self.code_root)
        self._wait(lambda: http_status(f"{base}/readyz") == 200, 30, "the ingress being ready")
        queue = self.settings.queue
        self._wait(
            lambda: all(
                rqcompat.read_workers(client, queue, shard) for shard, client in self.shard_clients
            ),
            60,
            "a worker registered on every shard",
        )
        self.say(f"ingress on {base}, a worker on each of the {SHARDS} shards")

    # -- watching the switch ---------------------------------------------------------------

    def _start_monitors(self) -> None:
        thread = threading.Thread(target=self._watch_cluster, name="chaos-cluster", daemon=True)
        thread.start()
        self._threads.append(thread)

    def _watch_cluster(self) -> None:
        """Who another primary says serves the killed shard's slot, besides
        :meth:`_watch_switch`'s steps."""
        import redis

        assert self.victim is not None and self.heir is not None
        victim, heir, slot = self.victim, self.heir, self.target.slot
        witness = next(
            p["primary_port"] for p in self.placement if p["primary_port"] != victim.port
        )
        other = switch_client(witness)

        def look() -> None:
            with contextlib.suppress(redis.RedisError, OSError):
                ranges: Any = other.execute_command("CLUSTER SLOTS")  # type: ignore[no-untyped-call]
                owner = next(
                    (int(r[2][1]) for r in ranges if int(r[0]) <= (slot or 0) <= int(r[1])),
                    None,
                )
                if owner == heir.port:
                    self._mark("another primary names the replica as the slot's primary")

        self._watch_switch(heir.port, victim.port, look, other)

    # -- the fault -------------------------------------------------------------------------

    def kill_primary(self) -> float | None:
        """``kill -9`` of the killed shard's primary; a thread then waits for the cluster to
        promote its replica and starts the old primary again ``--restart-after`` s after the
        kill (promoted or not, RESTART_AT_THE_LATEST_SECONDS after it at the latest)."""
        assert self.victim is not None
        node = self.victim
        self._kill(node)
        self.marks["dead"] = time.time()
        self.record(
            "kill -9 cluster primary",
            port=node.port,
            shard=self.target.index,
            slot=self.target.slot,
            replica=self.heir.port if self.heir else None,
        )
        self._restarter = threading.Thread(
            target=self._promote_then_restart, name="chaos-restart", daemon=True
        )
        self._restarter.start()
        return None

    def _promote_then_restart(self) -> None:
        assert self.cluster is not None and self.victim is not None
        c, old, slot = self.cluster, self.victim, self.target.slot
        assert slot is not None
        kill = self.marks["killed"]
        try:
            self.durations["promoted_s"] = c.wait_promoted(
                slot, old, timeout=RESTART_AT_THE_LATEST_SECONDS, between=None
            )
            self._mark("every live node names a new primary for the slot (cluster_state ok)")
        except AssertionError as err:
            self.errors.append(f"no promotion seen: {err}")
            self.record("no promotion seen", error=str(err))
        if self._stop_threads.wait(max(0.0, kill + self.args.restart_after - time.time())):
            return
        self._mark("old primary started again", port=old.port)
        with self._restarting(old):
            self.durations["rejoined_s"] = c.restart(old, timeout=30)
            self._mark("the old primary rejoined as a replica and the cluster settled")

    # -- what Redis holds ------------------------------------------------------------------

    def rq_state(self) -> dict[str, int]:
        """RQ's counts added up over the shards (each read on its shard's primary)."""
        from shared import keys, rqcompat

        queue = self.settings.queue
        total = dict.fromkeys(
            ("queued", "intermediate", "started", "scheduled", "failed_registry"), 0
        )
        for shard, client in self.shard_clients:
            counts = rqcompat.read_counts(client, queue, shard)
            total["queued"] += counts.queued
            total["intermediate"] += int(client.llen(shard.rq_key(keys.intermediate_key(queue))))
            total["started"] += counts.running
            total["scheduled"] += counts.waiting_to_retry
            total["failed_registry"] += counts.failed_jobs
        return total

    def claims_missing(self, acked: Sequence[Key]) -> list[Key]:
        """The acknowledged events whose claim their shard's primary at the end does not
        hold."""
        from shared.enqueue import JobSpec, claims_held

        spec = JobSpec.from_settings(self.settings)
        missing: list[Key] = []
        for shard, client in self.shard_clients:
            mine = [k for k in acked if self.shard_of(k) == shard.index]
            found = claims_held(client, spec, mine, shard=shard) if mine else []
            missing += [k for k, n in zip(mine, found, strict=True) if not n]
        return sorted(missing)

    def redis_key_census(self) -> dict[str, Any]:
        """Every key on every primary: under RQ's prefix or hookline's, and in one of the
        shards' hash slots (nothing of hookline's outside its shards)."""
        from redis.crc import key_slot

        assert self.cluster is not None
        slots = {s.slot: s.index for s in self.layout.shards}
        names: list[bytes] = []
        for node in self.cluster.primaries():
            names += node.ask(lambda c: list(c.scan_iter(count=1000)))
        stray = sorted(k.decode(errors="replace") for k in names if key_slot(k) not in slots)
        return {
            **self.key_census(names),
            "keys_by_shard": report.count(str(slots.get(key_slot(k), "none")) for k in names),
            "outside_shard_slots": stray[:50],
            "outside_shard_slots_count": len(stray),
        }

    def shard_worker_exits(self) -> list[dict[str, int]]:
        """The shard processes ``hookline worker`` saw exit (and started again), from its log."""
        try:
            text = (self.logs / "worker.log").read_text(errors="replace")
        except OSError:
            return []
        return [{"shard": int(s), "status": int(c)} for s, c in _CHILD_EXIT.findall(text)]

    # -- figures ---------------------------------------------------------------------------

    def measure(self, drain: dict[str, Any]) -> None:
        assert self.sender is not None and self.cluster is not None
        assert self.victim is not None and self.heir is not None
        r = self.sender.result
        k = self.target.index
        kill, dead = self.marks.get("killed"), self.marks.get("dead")
        first_202: Attempt | None = None
        if kill is not None and dead is not None:
            # a request of the moved shard sent once the old primary was gone
            first_202 = self._first_202(dead, lambda a: self.shard_of(a) == k)
        report.measure_run(self, self.tables(), drain)
        acked = sorted(r.acked)
        lost = {tuple(x) for x in self.results["checks"]["lost"]}
        no_claim = self.claims_missing(acked)
        switch = [a for a in r.attempts if kill is not None and self._in_switch(a)]
        others = [a for a in switch if self.shard_of(a) != k]
        others_bad = [a for a in others if a.status not in (200, 202)]
        all_bad_others = [
            a for a in r.attempts if self.shard_of(a) != k and a.status not in (200, 202)
        ]
        s503 = [a for a in r.attempts if a.status == 503]

        def shown(a: Attempt) -> dict[str, Any]:
            return {
                "event": [a.source, a.event_id],
                "shard": self.shard_of(a),
                "t_after_kill_s": self._since_kill(a.t),
                "answer": report.answer(a),
                "latency_s": round(a.latency, 3),
            }

        def answers(attempts: Sequence[Attempt]) -> dict[str, dict[str, int]]:
            """Their answers, by shard."""
            return {
                str(s.index): report.count(
                    report.answer(a) for a in attempts if self.shard_of(a) == s.index
                )
                for s in self.layout.shards
            }

        end_primary: int | None = None
        old_role: dict[str, Any] = {}
        with contextlib.suppress(Exception):
            assert self.target.slot is not None
            end_primary = self.cluster.primary_for_slot(self.target.slot).port
        with contextlib.suppress(Exception):
            info = self.victim.ask(lambda c: c.info("replication"))
            old_role = {"role": info.get("role"), "master_port": info.get("master_port")}
        first = self._switch_figures(first_202)
        self.results["cluster"] = {
            **self.results.pop("cluster_at_start", {}),
            "killed_shard": k,
            "killed_slot": self.target.slot,
            "old_primary_port": self.victim.port,
            "replica_port": self.heir.port,
            "ack_replicas": 1,
            "ack_replicas_timeout_ms": self.args.ack_timeout_ms,
            "killed_at_s": None if kill is None else round(kill - self.t0, 2),
            "kill_took_s": None if kill is None or dead is None else round(dead - kill, 3),
            "after_kill_s": self._after_kill(),
            "promotion_wait_s": report.rnd(self.durations.get("promoted_s"), 2),
            "restart_to_rejoined_s": report.rnd(self.durations.get("rejoined_s"), 2),
            "kill_to_first_202_on_moved_shard_s": first["to_202"],
            "first_202_request_sent_after_kill_s": first["sent"],
            "requests_during_switch": len(switch),
            "answers_during_switch_by_shard": answers(switch),
            "other_shards_answers_during_switch": len(others),
            "other_shards_not_2xx_during_switch": [shown(a) for a in others_bad[:50]],
            "other_shards_not_2xx_whole_run": [shown(a) for a in all_bad_others[:50]],
            "other_shards_not_2xx_whole_run_count": len(all_bad_others),
            "answers_by_shard": answers(r.attempts),
            "answers_503": len(s503),
            "answers_503_by_shard": report.count(str(self.shard_of(a)) for a in s503),
            "answers_503_during_switch": sum(1 for a in s503 if self._in_switch(a)),
            "answers_503_not_of_killed_shard": [shown(a) for a in s503 if self.shard_of(a) != k],
            **report.slow_503s([a.latency for a in s503]),
            "acknowledged_by_shard": report.count(str(self.shard_of(x)) for x in acked),
            "lost": len(lost),
            "lost_events": [
                {
                    "event": list(x),
                    "shard": self.shard_of((x[0], x[1])),
                    "acknowledged_before_kill_s": self._acknowledged_before_kill((x[0], x[1])),
                }
                for x in sorted(lost)
            ],
            "claims_missing_on_shard_primaries": len(no_claim),
            "claims_missing_events": [
                {"event": list(x), "shard": self.shard_of(x), "in_a_table": x not in lost}
                for x in no_claim[:50]
            ],
            "slot_primary_at_end": end_primary,
            "old_primary_at_end": old_role,
            "old_primary_roles": self.role_samples,
            "shard_worker_exits": self.shard_worker_exits(),
        }
        self.results["supervisor"] = report.supervisor(self)
        self.results["redis_keys"] = self.redis_key_census()

    def targets(self) -> list[dict[str, Any]]:
        c, ing, cl = self.results["checks"], self.results["ingress"], self.results["cluster"]
        k = cl["killed_shard"]
        row = report.rows("cluster: ")
        lost = len(c["lost"])
        dup = len(c["duplicated_effects"])
        n503 = cl["answers_503"]
        wrong503 = cl["answers_503_not_of_killed_shard"]
        others = cl["other_shards_answers_during_switch"]
        others_bad = cl["other_shards_not_2xx_during_switch"]
        others_answers = {
            s: v for s, v in cl["answers_during_switch_by_shard"].items() if s != str(k)
        }
        after = cl["after_kill_s"]
        exits = cl["shard_worker_exits"]
        keys_ = self.results["redis_keys"]
        return [
            row(
                "each primary holds one shard (the launcher's even slot split)",
                cl["one_shard_per_primary"],
                "; ".join(
                    f"shard {p['shard']} slot {p['slot']} on :{p['primary_port']}"
                    f" ({p['primary_slots'][0]}-{p['primary_slots'][1]})"
                    for p in cl["placement"]
                ),
            ),
            row(
                "0 acknowledged events lost (ack_replicas = 1)",
                lost == 0,
                f"{lost} lost of {c['acknowledged']} acknowledged;"
                f" {cl['claims_missing_on_shard_primaries']} claims not on their shard's primary",
            ),
            row("0 effects applied twice", dup == 0, f"{dup} applied twice"),
            row(
                f"kill -9 -> first 202 on the moved shard ({k})",
                cl["kill_to_first_202_on_moved_shard_s"] is not None,
                f"{cl['kill_to_first_202_on_moved_shard_s']} s (replica promoted after"
                f" {after.get('the replica is a primary (role master)')} s, old primary"
                f" started again after {after.get('old primary started again')} s and in sync"
                f" after {after.get('the old primary is in sync (link up)')} s)",
            ),
            row(
                "the other shards answered only 202/200 during the switch",
                others > 0 and not others_bad,
                f"{others} answers for shards {', '.join(others_answers)}:"
                f" {others_answers}; {len(others_bad)} not 2xx (whole run:"
                f" {cl['other_shards_not_2xx_whole_run_count']})",
            ),
            row(
                f"503s only for the killed shard's events (shard {k})",
                None if n503 == 0 else not wrong503,
                f"{n503} answers 503 ({cl['answers_503_by_shard']} by shard,"
                f" {cl['answers_503_during_switch']} during the switch); {len(wrong503)} for"
                " another shard's event",
            ),
            row(
                "503s each under 1 s",
                None if n503 == 0 else cl["answers_503_1s_or_more"] == 0,
                f"max {cl['answers_503_max_s']} s, median {cl['answers_503_p50_s']} s",
            ),
            row(
                "the old primary rejoined as a replica of the promoted one",
                cl["old_primary_at_end"].get("role") == "slave"
                and cl["old_primary_at_end"].get("master_port") == cl["replica_port"]
                and cl["slot_primary_at_end"] == cl["replica_port"],
                f"slot {cl['killed_slot']} served by :{cl['slot_primary_at_end']} (the replica"
                f" was :{cl['replica_port']}); old primary :{cl['old_primary_port']}"
                f" {cl['old_primary_at_end']}",
            ),
            report.ingress_row(row, ing),
            report.deaths_row(
                row,
                self.results,
                f"; shard processes restarted by hookline worker: {exits or 'none'}",
            ),
            row(
                "every key in a shard's hash slot, under RQ's or hookline's prefix",
                keys_["outside_shard_slots_count"] == 0 and keys_["outside_prefixes_count"] == 0,
                f"{keys_['keys']} keys {keys_['keys_by_shard']} by shard;"
                f" {keys_['outside_shard_slots_count']} outside the shards' slots,"
                f" {keys_['outside_prefixes_count']} outside the prefixes",
            ),
        ]

    # -- teardown --------------------------------------------------------------------------

    def teardown(self, keep: bool) -> None:
        if self.shard_clients is not None:
            from shared import shards

            with contextlib.suppress(Exception):
                shards.close(self.shard_clients)
        super().teardown(keep)


def stopped_row(res: dict[str, Any]) -> dict[str, Any]:
    """Every process the run started was stopped (known only after the teardown)."""
    procs = res.get("processes", {})
    alive = procs.get("still_alive")
    return report.rows("cluster: ")(
        "every process stopped at the end",
        alive == [],
        f"{len(procs.get('process_groups', []))} hookline process groups,"
        f" {len(procs.get('redis_process_groups', []))} redis-server ones; still alive:"
        f" {alive}",
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = switch_parser(
        "cluster",
        "Redis Cluster under load: kill -9 of the primary holding one of three"
        " shards, ack_replicas = 1 (see chaos/cluster.py)",
        DEFAULT_OUT,
        lambda p: p.add_argument(
            "--shard",
            type=int,
            default=1,
            help=f"the shard whose primary is killed, 0 to {SHARDS - 1} (default 1)",
        ),
    )
    args = parser.parse_args(argv)
    try:
        args.provider_retries = [float(x) for x in args.provider_retries.split(",") if x.strip()]
    except ValueError:
        parser.error("--provider-retries takes comma-separated numbers")
    if not 0 <= args.shard < SHARDS:
        parser.error(f"--shard takes 0 to {SHARDS - 1}")
    finish_kill_at(parser, args)
    if args.rate <= 0:
        parser.error("--rate must be positive")
    finish_scenario_args(args, args.seconds / 60, 1)
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    harness = ClusterHarness(args)
    res = run_scenario_mode(
        harness,
        args.keep_workdir,
        "cluster",
        harness.wait_settled,
        shards=SHARDS,
        killed_shard=args.shard,
        ack_replicas=1,
    )
    if "targets" in res:
        res["targets"] = [*res["targets"], stopped_row(res)]
        if res["exit_status"] == 0 and res["targets"][-1]["result"] == "MISS":
            res["exit_status"] = 1
    return res


def print_summary(results: dict[str, Any]) -> None:
    cl, d, c = results.get("cluster", {}), results.get("deliveries", {}), results.get("checks", {})
    print()
    print(f"command:  {results['command']}")
    print(
        f"sent {d.get('events_sent')} events ({d.get('send_rate_per_s')}/s);"
        f" {c.get('acknowledged')} acknowledged {cl.get('acknowledged_by_shard')} by shard;"
        f" {len(c.get('not_acknowledged', []))} never acknowledged; database"
        f" {results.get('database')}"
    )
    steps = ", ".join(f"{k} +{v} s" for k, v in cl.get("after_kill_s", {}).items())
    print(f"after the kill of shard {cl.get('killed_shard')}'s primary: {steps}")
    print(
        f"kill -9 -> first 202 on the moved shard: {cl.get('kill_to_first_202_on_moved_shard_s')}"
        f" s; {cl.get('answers_503')} answers 503 {cl.get('answers_503_by_shard')} by shard;"
        f" during the switch {cl.get('answers_during_switch_by_shard')}; lost {cl.get('lost')},"
        f" applied twice {len(c.get('duplicated_effects', []))}"
    )
    if results.get("harness_errors"):
        print(f"harness notes: {results['harness_errors']}")
    report.print_end(results)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)

    def run_all(results: dict[str, Any]) -> int:
        results.update(switch_header(args))
        results.update(run(args))
        results["out"] = str(args.out)
        return int(results["exit_status"])

    return scenario_main("cluster", args, argv, run_all, print_summary)
