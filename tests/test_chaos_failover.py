"""The failover scenario (``chaos/run.py --scenario failover``), short: a Redis primary, a
replica and three Sentinels under provider-like traffic to a real ingress and two workers; the
primary is killed with ``kill -9`` 5 s in, the Sentinels promote the replica and the old
primary comes back as its replica 5 s after the kill. With ``[ingest] ack_replicas = 1``
nothing acknowledged may be lost, nothing applied twice, and every 503 of the switch must come
within a second. About a minute: 26 s of sending, the provider's retries 5 s and 20 s after a
503, the topology's start and the drain. ``ack_replicas = 0`` is left to the full scenario
(``python chaos/run.py --scenario failover``), which reports what it loses."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos_runs import run_chaos, tail

RUN_TIMEOUT_SECONDS = 150
ARGS = [
    "--scenario",
    "failover",
    "--modes",
    "1",
    "--seconds",
    "26",
    "--rate",
    "20",
    "--kill-at",
    "5",
    "--restart-after",
    "5",
    "--provider-retries",
    "5,20",
]


@pytest.mark.slow
@pytest.mark.timeout(RUN_TIMEOUT_SECONDS + 120)
def test_a_primary_killed_under_load_loses_nothing_acknowledged_with_ack_replicas_1(
    tmp_path: Path, postgres_url: str
) -> None:
    # Given the failover scenario with acknowledgements that wait for one replica
    out, log = tmp_path / "failover.json", tmp_path / "failover.log"
    # When the primary is killed mid-load and the run goes to the end
    result = run_chaos(
        [*ARGS, "--database-url", postgres_url], out, log, RUN_TIMEOUT_SECONDS, "failover"
    )
    mode = result["modes"]["ack_replicas_1"]
    assert mode["exit_status"] in (0, 1), (mode["harness_errors"], tail(log))
    checks, failover = mode["checks"], mode["failover"]
    print(
        f"\nfailover (ack_replicas = 1): kill -9 -> first 202 on the new primary"
        f" {failover['kill_to_first_202_s']} s (promoted"
        f" {failover['after_kill_s'].get('the replica is a primary (role master)')} s, old"
        f" primary in sync {failover['after_kill_s'].get('the old primary is in sync (link up)')}"
        f" s after the kill); {failover['answers_503']} answers 503, slowest"
        f" {failover['answers_503_max_s']} s; {checks['acknowledged']} acknowledged,"
        f" {len(checks['lost'])} lost"
    )
    # Then the Sentinels promoted the replica, and the ingress answered 202 from it (once the
    # old primary was back as its replica) without being restarted
    assert failover["primary_at_end"] == failover["replica_port"]
    assert failover["kill_to_first_202_s"] is not None, tail(log)
    assert mode["supervisor"]["unexpected_deaths"] == []
    # And every acknowledged event is in webhook_events, none applied twice
    assert checks["acknowledged"] > 0
    assert checks["lost"] == [], failover["lost_events"]
    assert failover["claims_missing_on_new_primary"] == 0, failover["claims_missing_events"]
    assert checks["duplicated_effects"] == [], checks["duplicated_effects"]
    # And the switch was answered 503 (nothing acknowledged held by one Redis only), each
    # answer within a second
    assert failover["answers_503"] > 0
    assert failover["answers_503_1s_or_more"] == 0, failover["answers_503_max_s"]
    assert failover["answers_503_max_s"] < 1.0
    # And nothing was left running
    assert mode["processes"]["still_alive"] == [], mode["processes"]
