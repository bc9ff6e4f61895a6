"""hookline's fault-injection runs.

``python chaos/run.py [--minutes M] [--rate R] [--fsync everysec|always] [--out FILE]``: the
main run (workers killed and frozen, Redis killed, PostgreSQL restarted under provider-like
traffic); see :mod:`chaos.harness`
(the run) and :mod:`chaos.report` (its checks and summary), tied together here.

``python chaos/run.py --scenario failover [--seconds S] [--rate R] [--modes 1,0] [--out FILE]``:
a Redis primary, a replica and three Sentinels under the same traffic; the primary is killed
with ``kill -9`` mid-load, once per ``[ingest] ack_replicas`` mode (both by default); see
:mod:`chaos.failover` (``--scenario failover --help`` for its options).

``python chaos/run.py --scenario redis-full [--rate R] [--maxmemory-mb M] [--modes 95,0]
[--out FILE]``: a Redis at a small ``maxmemory`` filled through the ingress with no worker
running until it answers 503, then drained by two workers under the same traffic, once per
``[ingest] shed_at_memory_percent`` mode (both by default); see :mod:`chaos.redis_full`
(``--scenario redis-full --help`` for its options).

``python chaos/run.py --scenario cluster [--seconds S] [--rate R] [--shard N] [--out FILE]``: a
Redis Cluster of three primaries, each with a replica, ``redis_shards = 3`` (one shard per
primary) and ``[ingest] ack_replicas = 1`` under the same traffic; the primary holding one
shard is killed with ``kill -9`` mid-load, the cluster promotes its replica and the old
primary rejoins as its replica; the other shards must keep answering 202 meanwhile. See
:mod:`chaos.cluster` (``--scenario cluster --help`` for its options).
"""

from __future__ import annotations

import json
import signal
import sys
import traceback
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from chaos import report  # noqa: E402 - after the path above, when run as a script
from chaos.harness import Harness, _raise_interrupt, parse_args  # noqa: E402


def main(argv: list[str]) -> int:
    """Dispatch on ``--scenario`` (``faults``, the default, ``failover``, ``redis-full`` or
    ``cluster``)."""
    scenario = "faults"
    for i, arg in enumerate(argv):
        if arg == "--scenario" and i + 1 < len(argv):
            scenario = argv[i + 1]
        elif arg.startswith("--scenario="):
            scenario = arg.split("=", 1)[1]
    if scenario == "failover":
        from chaos import failover

        return failover.main(argv)
    if scenario == "redis-full":
        from chaos import redis_full

        return redis_full.main(argv)
    if scenario == "cluster":
        from chaos import cluster

        return cluster.main(argv)
    return faults(argv)


def faults(argv: Sequence[str] | None = None) -> int:
    """The main run: faults injected under traffic, then the checks and the report (the
    harness runs it, :mod:`chaos.report` judges it; neither knows the other)."""
    args = parse_args(argv)
    command = "python chaos/run.py " + " ".join(sys.argv[1:] if argv is None else argv)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_interrupt)
    harness = Harness(args)
    status = 2
    keep = args.keep_workdir
    try:
        harness.setup()
        harness.inject()
        drain = harness.wait_drained(
            harness.profile.drain_timeout, "drain after the sender stopped"
        )
        report.measure(harness, harness.tables(), drain)
        harness.replay()
        harness.results["redis_keys"] = harness.redis_key_census()
        harness.results["targets"] = report.targets(harness.results)
        missed = [t for t in harness.results["targets"] if t["result"] == "MISS"]
        status = 1 if missed else 0
        keep = keep or bool(missed)
    except (Exception, KeyboardInterrupt) as err:
        harness.errors.append(f"run aborted: {err!r}")
        keep = True
        status = 2 if isinstance(err, Exception) else 130
        print(f"[chaos] run aborted: {err!r}", file=sys.stderr, flush=True)
        traceback.print_exc()
    finally:
        harness.teardown(keep)
        harness.results.update(
            {
                "command": command,
                "profile": asdict(harness.profile),
                "rate": args.rate,
                "fsync": args.fsync,
                "seed": args.seed,
                "rq_scheduler_lock_holders": harness.scheduler_lock,
                **harness.run_record(keep, status),
            }
        )
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(harness.results, indent=2, default=str))
        if "targets" in harness.results:
            report.print_summary(harness, command)
        else:
            print(f"[chaos] incomplete results written to {args.out}", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
