"""The chaos run (``chaos/run.py``), short: about a minute of provider-like traffic while
workers are killed with ``kill -9``, one is SIGSTOPped and resumed, and Redis is killed and
restarted; then nothing acknowledged may be missing and no effect may be applied twice.

The run starts its own Redis (AOF) and every hookline process, and stops all of them; the
database is this test run's PostgreSQL database (so no PostgreSQL restart fault here: the full
run, ``python chaos/run.py``, restarts a cluster of its own)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.processes import ROOT, env_for

pytestmark = pytest.mark.slow

RUN = ROOT / "chaos" / "run.py"
#: the run itself takes about two minutes (one of sending, then draining and replaying)
RUN_TIMEOUT_SECONDS = 480


def _tail(path: Path, lines: int = 60) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@pytest.mark.timeout(RUN_TIMEOUT_SECONDS + 120)
def test_short_chaos_run_loses_nothing_and_applies_nothing_twice(
    tmp_path: Path, postgres_url: str
) -> None:
    # Given the short chaos run against this run's PostgreSQL database
    out = tmp_path / "chaos.json"
    log = tmp_path / "chaos.log"
    argv = [sys.executable, str(RUN), "--minutes", "1", "--rate", "20"]
    argv += ["--database-url", postgres_url, "--out", str(out)]
    # When it runs to the end
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            argv, env=env_for(), stdout=sink, stderr=subprocess.STDOUT, cwd=ROOT
        )
        try:
            proc.wait(timeout=RUN_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            # SIGTERM: the run stops every process it started before it exits
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(90)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
            pytest.fail(f"the chaos run overran {RUN_TIMEOUT_SECONDS} s:\n{_tail(log)}")
    assert out.exists(), _tail(log)
    result = json.loads(out.read_text())
    print(_tail(log, 40))
    assert result["exit_status"] in (0, 1), (result["harness_errors"], _tail(log))
    checks = result["checks"]
    # Then every acknowledged event is in webhook_events or dead_letters
    assert checks["acknowledged"] > 0
    assert checks["lost"] == [], checks["lost"]
    # And no effect was applied twice, not even by two replays of the dead letters at once
    assert checks["duplicated_effects"] == [], checks["duplicated_effects"]
    assert result["replay"]["duplicated_effects_after_replay"] == []
    assert result["replay"]["applied_more_than_once"] == []
    # And the run left no process behind
    assert result["processes"]["still_alive"] == [], result["processes"]
