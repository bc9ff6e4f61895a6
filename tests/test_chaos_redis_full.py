"""The redis-full scenario (``chaos/run.py --scenario redis-full``), short: a Redis of 8 MB
(``noeviction``) filled through a real ingress by the provider-like sender (redeliveries,
twins, out-of-order pairs, 5 % of events whose handler fails once) with no worker running,
until the ingress answers 503; 3 s later two long-running workers start under the same
traffic, which goes on 10 s more. Nothing acknowledged may be lost, nothing applied twice,
every 202 applied exactly once, no key evicted, and new events must be answered 202 again.

With ``shed_at_memory_percent = 0``: Redis filled to its very limit, where the workers' first
writes must free memory and a failed attempt's bookkeeping is refused (about 50 s). The
default, 95, is run by the full scenario and, without the sender, by tests/test_redis_full.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.chaos_runs import run_chaos, tail

RUN_TIMEOUT_SECONDS = 150
ARGS = [
    "--scenario",
    "redis-full",
    "--maxmemory-mb",
    "8",
    "--rate",
    "120",
    "--full-for",
    "3",
    "--after",
    "10",
    "--provider-retries",
    "2,4,8,16",
    "--drain-timeout",
    "45",
]


def _run(tmp_path: Path, postgres_url: str, shed: int) -> dict[str, Any]:
    out, log = tmp_path / "redis-full.json", tmp_path / "redis-full.log"
    args = [*ARGS, "--modes", str(shed), "--database-url", postgres_url]
    result = run_chaos(args, out, log, RUN_TIMEOUT_SECONDS, "redis-full")
    mode = result["modes"][f"shed_{shed}"]
    assert mode["exit_status"] in (0, 1), (mode["harness_errors"], tail(log))
    full = mode["redis_full"]
    print(
        f"\nredis-full (shed_at_memory_percent = {shed}): first 503 after"
        f" {full['acknowledged_before_first_503']} events acknowledged; workers started ->"
        f" first 202 {full['workers_started_to_first_202_s']} s;"
        f" {mode['checks']['acknowledged']} acknowledged, {len(mode['checks']['lost'])} lost,"
        f" {len(mode['checks']['duplicated_effects'])} applied twice"
    )
    return dict(mode)


def _assert_drained_once_each(mode: dict[str, Any]) -> None:
    checks, full = mode["checks"], mode["redis_full"]
    start = full["at_workers_start"]
    # Then Redis was full (the ingress refused) before any worker ran, and held every event
    # it had acknowledged in its queue
    assert full["first_503_s"] is not None
    assert start["queued"] >= full["acknowledged_before_first_503"] > 500
    # And once the workers started, new events were answered 202 again
    assert full["workers_started_to_first_202_s"] is not None
    # And every acknowledged event is applied, exactly once; none applied twice
    assert checks["acknowledged"] > start["queued"]
    assert checks["lost"] == [], checks["lost"][:20]
    assert checks["duplicated_effects"] == [], checks["duplicated_effects"][:20]
    assert full["acknowledged_not_applied_exactly_once"] == []
    assert mode["deliveries"]["redeliveries_accepted_again_after_acknowledgement"] == []
    assert checks["drain_after_sender"]["drained"], checks["drain_after_sender"]
    # And Redis evicted nothing
    assert full["redis"]["evicted_keys"] == 0
    assert full["redis"]["maxmemory_policy"] == "noeviction"
    # And no hookline process died, and nothing was left running
    assert mode["supervisor"]["unexpected_deaths"] == []
    assert mode["processes"]["still_alive"] == [], mode["processes"]


# The default mode (shedding at 95 %) is the full run's other half (``python chaos/run.py
# --scenario redis-full``) and, without the sender's load, tests/test_redis_full.py: the suite
# keeps the harder one here, within its ten minutes.


@pytest.mark.slow
@pytest.mark.timeout(RUN_TIMEOUT_SECONDS + 120)
def test_a_redis_filled_to_its_limit_drains_by_itself(tmp_path: Path, postgres_url: str) -> None:
    # Given no shedding (shed_at_memory_percent = 0): the ingress fills Redis to maxmemory
    mode = _run(tmp_path, postgres_url, 0)
    assert mode["redis_full"]["at_workers_start"]["percent_of_maxmemory"] >= 99
    # When two workers start under the same traffic, 5 % of whose events fail once (their
    # retries' bookkeeping refused while Redis is full)
    # Then every acknowledged event is applied once, as with shedding
    _assert_drained_once_each(mode)
    assert mode["exit_status"] == 0, [t for t in mode["targets"] if t["result"] == "MISS"]
