"""Starting hookline's real processes and always stopping them, and the small helpers around
that: one definition of each for the tests, the fault-injection run (``chaos/``) and the
benchmark (``bench/``), which import this module (they put the repository root on
``sys.path`` first).

- :func:`start_in_group`: a child in a process group of its own (the group's id is its pid),
  its output appended to a log file, its stdin ``/dev/null``;
- :func:`stop_groups`: SIGTERM to each group, SIGKILL to the groups still there after a grace
  period, then SIGKILL to whatever is left in them (a child that outlived its leader, such as
  RQ's scheduler); nothing is ever looked up by name;
- :func:`wait_until`, :func:`free_port`, :func:`env_for`, :func:`hookline`;
- :func:`percentile`: the one percentile every report uses (nearest rank).
"""

from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from fractions import Fraction
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

#: how long a stopped process may take to exit after SIGTERM before its group gets SIGKILL
STOP_GRACE_SECONDS = 15.0


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bindable(port: int) -> bool:
    """Whether a server could listen on 127.0.0.1:``port`` now (as `hookline dev` checks it:
    a port that is the local end of some connection is not free either)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_dev_port(*taken: int) -> int:
    """A port for `hookline dev --port`: free, with the console's port (the next one) free
    too, and neither among ``taken`` (say the Redis port already picked for the same dev)."""
    for _ in range(50):
        port = free_port()
        if port < 65535 and bindable(port + 1) and not {port, port + 1} & set(taken):
            return port
    raise AssertionError("no two free ports in a row")


def env_for(code_root: Path = ROOT, **extra: str) -> dict[str, str]:
    """This environment for a hookline child: the code under ``code_root`` first on its path,
    unbuffered output, none of hookline's own variables (a test's configuration comes from
    ``extra``). Everything else is inherited, ``RQ_KEY_PREFIX`` included."""
    env = {**os.environ, "PYTHONPATH": str(code_root), "PYTHONUNBUFFERED": "1"}
    for name in (
        "HOOKLINE_CONFIG",
        "HOOKLINE_REDIS_URL",
        "HOOKLINE_DATABASE_URL",
        "HOOKLINE_CONSOLE_TOKEN",
    ):
        env.pop(name, None)
    env.update(extra)
    return env


def hookline(*args: str) -> list[str]:
    """The command line running ``hookline ARGS`` with this interpreter."""
    return [sys.executable, "-m", "hookline.cli", *args]


# -- starting and stopping -----------------------------------------------------------------


def start_in_group(
    argv: Sequence[str], env: dict[str, str], log: Path, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in a process group of its own (its id is the child's pid), stdout and
    stderr appended to ``log``, stdin ``/dev/null``."""
    with log.open("ab") as out:
        return subprocess.Popen(
            list(argv),
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=cwd or ROOT,
            process_group=0,
        )


def signal_group(proc: subprocess.Popen[Any], sig: int) -> None:
    """Send ``sig`` to the process group ``proc`` leads (started by :func:`start_in_group`
    or with ``process_group=0``); nothing if the group is gone."""
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def pid_alive(pid: int) -> bool:
    """True for a live process (a zombie awaiting its parent does not count)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def processes_in_groups(pgids: Iterable[int]) -> list[int]:
    """Live processes (not zombies) whose process group is one of ``pgids``."""
    wanted = set(pgids)
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) in wanted:
            found.append(int(entry.name))
    return found


def _wait(proc: subprocess.Popen[Any], seconds: float) -> bool:
    try:
        proc.wait(seconds)
    except subprocess.TimeoutExpired:
        return False
    return True


def stop_groups(
    procs: Sequence[subprocess.Popen[Any]],
    grace: float = STOP_GRACE_SECONDS,
    wait: Callable[[subprocess.Popen[Any], float], bool] = _wait,
) -> None:
    """Stop the process groups ``procs`` lead: SIGTERM to every running one at once (so
    ``hookline dev`` stops its own children, a worker finishes its batch), SIGKILL to each
    group whose leader has not exited ``grace`` seconds later, then SIGKILL to any process
    left in one of the groups. ``wait(proc, seconds)`` reaps a leader and says whether it
    exited (the benchmark reaps with ``wait4`` for the rusage)."""
    for proc in procs:
        if proc.poll() is None:
            signal_group(proc, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for proc in procs:
        if not wait(proc, max(0.0, deadline - time.monotonic())):
            signal_group(proc, signal.SIGKILL)
            wait(proc, 10.0)
    # the group's id stays reserved while a member lives, so this reaches only our processes
    for proc in procs:
        if processes_in_groups([proc.pid]):
            signal_group(proc, signal.SIGKILL)


class Procs:
    """Every process a test starts, stopped (whole process groups) when the test ends."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[Any]] = []

    def start(
        self, argv: list[str], env: dict[str, str], log: Path, cwd: Path | None = None
    ) -> subprocess.Popen[bytes]:
        proc = start_in_group(argv, env, log, cwd)
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        """SIGTERM first (``hookline dev`` then stops its own children), SIGKILL after 15 s."""
        stop_groups(self.procs)


@contextmanager
def processes() -> Iterator[Procs]:
    procs = Procs()
    try:
        yield procs
    finally:
        procs.stop_all()


# -- waiting -------------------------------------------------------------------------------


def wait_until(
    check: Callable[[], object],
    timeout: float,
    what: str,
    interval: float = 0.1,
    between: Callable[[], object] | None = None,
) -> float:
    """Poll ``check`` every ``interval`` s until it is truthy (an exception counts as not yet)
    and return the seconds it took; after ``timeout`` s, AssertionError naming ``what`` and
    the last exception. ``between`` runs after each unsuccessful poll (a supervisor's
    round, say)."""
    start = time.monotonic()
    last: BaseException | None = None
    while time.monotonic() - start < timeout:
        try:
            if check():
                return time.monotonic() - start
        except Exception as err:  # not ready yet
            last = err
        if between is not None:
            between()
        time.sleep(interval)
    why = f" (last error: {last!r})" if last is not None else ""
    raise AssertionError(f"{what} did not happen within {timeout} s{why}")


def start_dev(procs: Procs, folder: Path, port: int, *args: str) -> subprocess.Popen[bytes]:
    """`hookline dev --port PORT ARGS` in ``folder`` (its output in ``folder/dev.log``), once
    it says it is running; if it stops first, the test fails with the end of its output."""
    dev = procs.start(
        hookline("dev", "--port", str(port), *args), env_for(), folder / "dev.log", cwd=folder
    )
    log = folder / "dev.log"
    wait_until(
        lambda: "hookline is running" in log.read_text() or dev.poll() is not None, 60, "dev"
    )
    assert dev.poll() is None, log.read_text()[-3000:]
    return dev


def http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=1) as resp:  # noqa: S310 - 127.0.0.1 only
        return bool(resp.status == 200)


# -- figures -------------------------------------------------------------------------------


def percentile(values: Iterable[float], p: float) -> float | None:
    """The ``p``-th percentile (0 <= p <= 100) of ``values`` by the nearest-rank definition:
    the smallest observed value that at least ``p`` % of the values do not exceed, i.e. the
    ``ceil(p / 100 * n)``-th smallest (the smallest for p = 0); ``None`` when there are none.

    Nearest rank, not interpolation: the result is always a value that was observed, and
    "p99 <= 20 ms" then means exactly that 99 % of the requests took 20 ms or less (numpy's
    default linear interpolation can report a p99 below what 1 % of a small sample exceeded).
    It is also what wrk's and HdrHistogram's percentiles are, which the benchmark shows
    beside its own. ``p`` is taken as written in decimal (99.9 is 999/1000), so float
    rounding never moves the rank."""
    ordered = sorted(values)
    if not ordered:
        return None
    if not 0 <= p <= 100 or not math.isfinite(p):
        raise ValueError(f"percentile {p!r} is not within 0..100")
    rank = math.ceil(Fraction(str(p)) * len(ordered) / 100)
    return ordered[max(1, rank) - 1]
