"""Running a scenario of the fault-injection run (``chaos/run.py``) from a test: as a
subprocess with a time limit, its output in a log, its result JSON read back."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.processes import ROOT, env_for

RUN = ROOT / "chaos" / "run.py"


def tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a log."""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def run_chaos(
    args: Sequence[str],
    out: Path,
    log: Path,
    timeout: float,
    what: str,
    env: dict[str, str] | None = None,
    tail_lines: int = 40,
) -> dict[str, Any]:
    """``python chaos/run.py *args --out out``, its output in ``log``, in ``env`` (by
    default :func:`tests.processes.env_for`'s); its result JSON. Past ``timeout`` seconds it
    gets SIGTERM (the run stops everything it started, then exits; SIGKILL if it has not
    after 90 s) and the test fails, showing the log's last ``tail_lines`` lines."""
    argv = [sys.executable, str(RUN), *args, "--out", str(out)]
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            argv,
            env=env_for() if env is None else env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(90)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
            pytest.fail(f"the {what} run overran {timeout} s:\n{tail(log, tail_lines)}")
    assert out.exists(), tail(log, tail_lines)
    result: dict[str, Any] = json.loads(out.read_text())
    return result
