"""Starting hookline's real processes in tests, and always stopping them."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def env_for(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    for name in ("HOOKLINE_CONFIG", "HOOKLINE_REDIS_URL", "HOOKLINE_DATABASE_URL"):
        env.pop(name, None)
    env.update(extra)
    return env


def hookline(*args: str) -> list[str]:
    return [sys.executable, "-m", "hookline.cli", *args]


class Procs:
    """Every process a test starts, killed (whole process group) when the test ends."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(
        self, argv: list[str], env: dict[str, str], log: Path, cwd: Path | None = None
    ) -> subprocess.Popen[bytes]:
        out = log.open("ab")
        proc = subprocess.Popen(
            argv, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=cwd or ROOT, process_group=0
        )
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        """SIGTERM first (``hookline dev`` then stops its own children), SIGKILL after 15 s."""
        for proc in self.procs:
            if proc.poll() is None:
                with suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                with suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


@contextmanager
def processes() -> Iterator[Procs]:
    procs = Procs()
    try:
        yield procs
    finally:
        procs.stop_all()


def wait_until(
    check: Callable[[], object], timeout: float, what: str, interval: float = 0.1
) -> float:
    """Poll ``check`` until truthy; return the seconds it took, or fail naming ``what``."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            if check():
                return time.monotonic() - start
        except Exception:  # noqa: S110 - not ready yet
            pass
        time.sleep(interval)
    raise AssertionError(f"{what} did not happen within {timeout} s")


def http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=1) as resp:  # noqa: S310
        return bool(resp.status == 200)
