"""The cluster scenario (``chaos/run.py --scenario cluster``), short: a Redis Cluster of three
primaries each with a replica, ``redis_shards = 3`` (one shard per primary) and ``[ingest]
ack_replicas = 1``, under provider-like traffic to a real ingress and one ``hookline worker``
(a process per shard); the primary holding shard 1 is killed with ``kill -9`` 4 s in, the
cluster promotes its replica and the old primary rejoins as its replica 3 s after the kill.
Nothing acknowledged may be lost, nothing applied twice, the other shards must answer only
202/200 meanwhile, the 503s must all be shard 1's, and nothing may be left running. About 25
s: 13 s of sending at 15 events/s (a few hundred events), the provider's retries 3 s and 10 s
after a 503, the cluster's start and the drain."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos_runs import run_chaos, tail

RUN_TIMEOUT_SECONDS = 120
ARGS = [
    "--scenario",
    "cluster",
    "--seconds",
    "13",
    "--rate",
    "15",
    "--kill-at",
    "4",
    "--restart-after",
    "3",
    "--shard",
    "1",
    "--provider-retries",
    "3,10",
]


@pytest.mark.slow
@pytest.mark.timeout(RUN_TIMEOUT_SECONDS + 120)
def test_a_shards_primary_killed_under_load_loses_nothing_and_the_other_shards_answer(
    tmp_path: Path, postgres_url: str
) -> None:
    # Given the cluster scenario: three shards, one per primary, acknowledgements that wait
    # for the shard primary's replica
    out, log = tmp_path / "cluster.json", tmp_path / "cluster.log"
    # When shard 1's primary is killed mid-load and the run goes to the end
    result = run_chaos(
        [*ARGS, "--database-url", postgres_url], out, log, RUN_TIMEOUT_SECONDS, "cluster"
    )
    assert result["exit_status"] in (0, 1), (result["harness_errors"], tail(log))
    checks, cluster = result["checks"], result["cluster"]
    print(
        f"\ncluster (ack_replicas = 1): kill -9 of shard 1's primary -> first 202 on the moved"
        f" shard {cluster['kill_to_first_202_on_moved_shard_s']} s (replica promoted"
        f" {cluster['after_kill_s'].get('the replica is a primary (role master)')} s after);"
        f" {cluster['answers_503']} answers 503 {cluster['answers_503_by_shard']} by shard;"
        f" during the switch {cluster['answers_during_switch_by_shard']};"
        f" {checks['acknowledged']} acknowledged, {len(checks['lost'])} lost"
    )
    # Then each primary held one shard, and shard 1's slot moved to the replica, the old
    # primary back as its replica
    assert cluster["one_shard_per_primary"], cluster["placement"]
    assert cluster["killed_shard"] == 1
    assert cluster["slot_primary_at_end"] == cluster["replica_port"]
    assert cluster["old_primary_at_end"] == {
        "role": "slave",
        "master_port": cluster["replica_port"],
    }
    # And shard 1 answered 202 again, and the ingress and the worker never died
    assert cluster["kill_to_first_202_on_moved_shard_s"] is not None, tail(log)
    assert result["supervisor"]["unexpected_deaths"] == []
    # And every acknowledged event is in webhook_events, none applied twice
    assert checks["acknowledged"] > 0
    assert checks["lost"] == [], cluster["lost_events"]
    assert cluster["claims_missing_on_shard_primaries"] == 0, cluster["claims_missing_events"]
    assert checks["duplicated_effects"] == [], checks["duplicated_effects"]
    # And the other shards answered only 202/200 while shard 1 had no primary with a replica;
    # the 503s were all for shard 1's events
    assert cluster["other_shards_answers_during_switch"] > 0
    assert cluster["other_shards_not_2xx_during_switch"] == []
    assert cluster["other_shards_not_2xx_whole_run_count"] == 0
    assert cluster["answers_503"] > 0
    assert cluster["answers_503_not_of_killed_shard"] == []
    assert set(cluster["answers_503_by_shard"]) == {"1"}
    # And nothing was left running: the ingress, the worker and its shard processes, every
    # redis-server (the restarted one too)
    assert result["processes"]["still_alive"] == [], result["processes"]
    assert result["processes"]["redis_left_running"] == [], result["processes"]
