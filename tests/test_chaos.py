"""The chaos run (``chaos/run.py``), short: about a minute of provider-like traffic while
workers are killed with ``kill -9``, one is SIGSTOPped and resumed, and Redis is killed and
restarted; then nothing acknowledged may be missing, no effect may be applied twice, and every
job a fault abandoned must have been retried or dead-lettered within 30 s.

The run starts its own Redis (AOF) and every hookline process, and stops all of them; the
database is this test run's PostgreSQL database (so no PostgreSQL restart fault here: the full
run, ``python chaos/run.py``, restarts a cluster of its own). It runs with a non-default
``RQ_KEY_PREFIX``, which every process it starts inherits: its Redis is its own, so every key
found there must be under that prefix."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from chaos import report
from tests import processes
from tests.chaos_runs import run_chaos, tail
from tests.processes import ROOT, env_for, percentile

#: the run itself takes about two minutes (one of sending, then draining and replaying)
RUN_TIMEOUT_SECONDS = 480
#: RQ's key prefix for the run (RQ's default is "rq")
PREFIX = "hlchaos"


@pytest.mark.slow
@pytest.mark.timeout(RUN_TIMEOUT_SECONDS + 120)
def test_short_chaos_run_loses_nothing_and_applies_nothing_twice(
    tmp_path: Path, postgres_url: str
) -> None:
    # Given the short chaos run against this run's PostgreSQL database, with RQ's keys under
    # a prefix of their own
    out = tmp_path / "chaos.json"
    log = tmp_path / "chaos.log"
    args = ["--minutes", "1", "--rate", "20", "--database-url", postgres_url]
    # When it runs to the end
    result = run_chaos(
        args,
        out,
        log,
        RUN_TIMEOUT_SECONDS,
        "chaos",
        env=env_for(RQ_KEY_PREFIX=PREFIX),
        tail_lines=60,
    )
    print(tail(log, 40))
    assert result["exit_status"] in (0, 1), (result["harness_errors"], tail(log, 60))
    checks = result["checks"]
    # Then every acknowledged event is in webhook_events or dead_letters
    assert checks["acknowledged"] > 0
    assert checks["lost"] == [], checks["lost"]
    # And no effect was applied twice, not even by two replays of the dead letters at once
    assert checks["duplicated_effects"] == [], checks["duplicated_effects"]
    assert result["replay"]["duplicated_effects_after_replay"] == []
    assert result["replay"]["applied_more_than_once"] == []
    # And every job a kill -9 or the SIGSTOP left in the middle was retried or dead-lettered
    # within 30 s (timed by the stamp workers.retries puts on the abandoned attempt's error:
    # exact, whatever the load; when it was then applied also depends on its backoff and on
    # the other faults, so the full run reports it rather than this test asserting it)
    recovery = result["recovery"]
    decided = recovery["retry_decided_after_s"]
    assert decided["n"] > 0, recovery["abandoned"]
    assert decided["max"] <= report.MAX_DECISION_SECONDS, recovery["decision_later_than_target"]
    assert recovery["decision_not_seen"] == [], recovery["decision_not_seen"]
    assert recovery["abandoned_not_recovered"] == 0, recovery["abandoned"]
    # And every key the run left in its Redis is under the run's RQ prefix (hookline's own
    # keys too): nothing named an RQ key by hand
    keys = result["redis_keys"]
    assert keys["rq_key_prefix"] == PREFIX
    assert keys["hookline_prefix"] == f"{PREFIX}:hookline:"
    assert keys["keys"] > 0
    assert keys["outside_prefixes"] == [], keys
    # And the run left no process behind
    assert result["processes"]["still_alive"] == [], result["processes"]


def test_one_percentile_nearest_rank_for_the_chaos_run_and_the_benchmark(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the smallest observed value that at least p % of the values do not exceed
    assert percentile([15, 20, 35, 40, 50], 30) == 20
    assert percentile([15, 20, 35, 40, 50], 40) == 20
    assert percentile([15, 20, 35, 40, 50], 50) == 35
    assert percentile([15, 20, 35, 40, 50], 100) == 50
    assert percentile([3, 1, 2], 0) == 1
    hundred = list(range(1, 101))
    assert percentile(hundred, 99) == 99
    assert percentile(hundred, 99.5) == 100
    # 99.9 % of 1,000 is exactly the 999th value, whatever 99.9 is as a float
    assert percentile(range(1, 1001), 99.9) == 999
    assert percentile([], 99) is None
    with pytest.raises(ValueError):
        percentile([1.0], 101)
    # the fault run and the benchmark report with this very function
    assert vars(report)["percentile"] is processes.percentile
    spec = importlib.util.spec_from_file_location("bench_common", ROOT / "bench" / "common.py")
    assert spec is not None and spec.loader is not None
    common = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_common", common)
    spec.loader.exec_module(common)
    assert common.percentile is processes.percentile
