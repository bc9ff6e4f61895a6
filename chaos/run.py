"""hookline's fault-injection runs.

``python chaos/run.py [--minutes M] [--rate R] [--fsync everysec|always] [--out FILE]``: the
main run (workers killed and frozen, Redis killed, PostgreSQL restarted under provider-like
traffic); see :mod:`chaos.harness`.

``python chaos/run.py --scenario failover [--seconds S] [--rate R] [--modes 1,0] [--out FILE]``:
a Redis primary, a replica and three Sentinels under the same traffic; the primary is killed
with ``kill -9`` mid-load, once per ``[ingest] ack_replicas`` mode (both by default); see
:mod:`chaos.failover` (``--scenario failover --help`` for its options).

``python chaos/run.py --scenario redis-full [--rate R] [--maxmemory-mb M] [--modes 95,0]
[--out FILE]``: a Redis at a small ``maxmemory`` filled through the ingress with no worker
running until it answers 503, then drained by two workers under the same traffic, once per
``[ingest] shed_at_memory_percent`` mode (both by default); see :mod:`chaos.redis_full`
(``--scenario redis-full --help`` for its options).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main(argv: list[str]) -> int:
    """Dispatch on ``--scenario`` (``faults``, the default, ``failover`` or ``redis-full``)."""
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
    from chaos import harness

    return harness.main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
