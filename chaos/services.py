"""The chaos run's own services and processes: a Redis it can kill, an optional PostgreSQL
cluster it can restart, and a small supervisor that restarts the hookline processes that die.

Every process is started in a process group of its own and stopped by its group id, with the
helpers the tests and the benchmark use too (:mod:`tests.processes`); nothing here looks for
processes by name.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hookline.dev import redis_server_binary
from tests.processes import (
    ROOT,
    env_for,
    pid_alive,
    signal_group,
    start_in_group,
    stop_groups,
)

#: a supervised process stopped at the end gets this long after SIGTERM before SIGKILL
STOP_GRACE_SECONDS = 10.0


#: the packages hookline's processes import (and the chaos handlers)
CODE_PACKAGES = ("hookline", "ingest", "shared", "workers", "chaos")


def snapshot_code(dest: Path) -> dict[str, Any]:
    """Copy the code the processes run to ``dest`` (put first on their PYTHONPATH, it wins
    over the editable install), so edits made to the tree during a run cannot mix versions
    between a worker and its restarted successor. Returns what was copied: the commit, the
    files that differ from it, and a digest of the copy."""
    import hashlib

    digest = hashlib.sha256()
    for package in CODE_PACKAGES:
        shutil.copytree(
            ROOT / package, dest / package, ignore=shutil.ignore_patterns("__pycache__", "results")
        )
    for path in sorted(dest.rglob("*.py")):
        digest.update(str(path.relative_to(dest)).encode() + b"\0" + path.read_bytes())

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=False
        )
        return done.stdout.strip()

    return {
        "commit": git("rev-parse", "HEAD"),
        "uncommitted": git("status", "--porcelain", "--", *CODE_PACKAGES).splitlines(),
        "sha256_of_copy": digest.hexdigest(),
    }


@dataclass
class Managed:
    """One process we start, in its own process group, logging to a file."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    cwd: Path = ROOT
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    pids: list[int] = field(default_factory=list)

    def start(self) -> int:
        self.proc = start_in_group(self.argv, self.env, self.log, self.cwd)
        self.started_at = time.time()
        self.pids.append(self.proc.pid)
        return self.proc.pid

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def poll(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal_group(self, sig: int) -> None:
        if self.proc is not None:
            signal_group(self.proc, sig)

    def kill(self, wait: float = 10) -> int | None:
        """SIGKILL the whole group (a stopped process dies too) and reap it: a fault."""
        if self.proc is None:
            return None
        self.signal_group(signal.SIGKILL)
        try:
            return self.proc.wait(wait)
        except subprocess.TimeoutExpired:
            return None

    def stop(self) -> None:
        """The end of the run: SIGTERM, then SIGKILL (a SIGSTOPped process gets SIGCONT too,
        so it can act on the SIGTERM)."""
        if self.proc is not None:
            self.signal_group(signal.SIGCONT)
            stop_groups([self.proc], STOP_GRACE_SECONDS)


class RedisServer:
    """A redis-server of our own: 127.0.0.1, a free port, AOF in a directory of our own. Killed
    with ``kill -9`` and started again on the same port and directory. ``extra`` adds
    options to its command line (``--maxmemory 32mb``...)."""

    def __init__(
        self, workdir: Path, port: int, fsync: str, log: Path, extra: tuple[str, ...] = ()
    ) -> None:
        self.dir = workdir
        self.port = port
        self.dir.mkdir(parents=True, exist_ok=True)
        argv = [
            redis_server_binary(),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.dir),
            "--appendonly",
            "yes",
            "--appendfsync",
            fsync,
            "--save",
            "",
            "--daemonize",
            "no",
            *extra,
        ]
        self.process = Managed("redis", argv, env_for(), log)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 30) -> float:
        """Start and wait until it answers and has loaded its AOF; returns when it was ready."""
        self.process.start()
        return self.wait_ready(timeout)

    def wait_ready(self, timeout: float) -> float:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        client = redis.Redis(
            port=self.port,
            socket_timeout=1,
            socket_connect_timeout=1,
            retry=Retry(NoBackoff(), 0),
        )
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if not self.process.running():
                    raise RuntimeError(f"redis-server exited ({self.process.poll()})")
                try:
                    info: Any = client.info("persistence")
                    if int(info.get("loading", 0)) == 0:
                        return time.time()
                except (redis.RedisError, OSError):
                    pass
                time.sleep(0.05)
        finally:
            client.close()
        raise RuntimeError(f"redis did not become ready within {timeout} s")

    def kill9(self) -> None:
        self.process.kill()

    def stop(self) -> None:
        self.process.stop()


def postgres_bin_dir() -> Path | None:
    """Debian's PostgreSQL binaries (the newest version installed), if any."""
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    for bin_dir in reversed(candidates):
        if (bin_dir / "initdb").exists() and (bin_dir / "pg_ctl").exists():
            return bin_dir
    return None


class PostgresCluster:
    """A throwaway PostgreSQL cluster (initdb in a temporary directory, trust auth, 127.0.0.1
    on a free port) that the run may restart in immediate mode. PostgreSQL refuses to run as
    root, so as root every command runs as the ``postgres`` user through ``runuser``."""

    def __init__(self, bin_dir: Path, port: int) -> None:
        self.bin = bin_dir
        self.port = port
        self.dir = Path(tempfile.mkdtemp(prefix="hookline-chaos-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "postgres.log"
        self.as_root = os.geteuid() == 0
        if self.as_root:
            shutil.chown(self.dir, "postgres", "postgres")
        self.started = False

    @classmethod
    def feasible(cls) -> tuple[Path | None, str]:
        bin_dir = postgres_bin_dir()
        if bin_dir is None:
            return None, "no PostgreSQL server binaries under /usr/lib/postgresql"
        if os.geteuid() == 0:
            if shutil.which("runuser") is None:
                return None, "running as root without runuser"
            try:
                import pwd

                pwd.getpwnam("postgres")
            except KeyError:
                return None, "running as root and there is no postgres user"
        return bin_dir, ""

    def _run(self, argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        full = ["runuser", "-u", "postgres", "--", *argv] if self.as_root else argv
        return subprocess.run(
            full,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd=self.dir,
            stdin=subprocess.DEVNULL,
        )

    def _options(self) -> str:
        return f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c max_connections=100"

    def _pg_ctl(self, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
        argv = [str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w"]
        return self._run([*argv, "-t", "60", *args], timeout)

    def init_and_start(self) -> None:
        done = self._run(
            [
                str(self.bin / "initdb"),
                "-D",
                str(self.data),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
            timeout=180,
        )
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed: {done.stderr.strip()[-500:]}")
        self.started = True  # from here on, stop() must run
        done = self._pg_ctl("-o", self._options(), "start")
        if done.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed: {done.stderr.strip()[-500:]}")

    def restart_immediate(self) -> None:
        done = self._pg_ctl("-m", "immediate", "-o", self._options(), "restart")
        if done.returncode != 0:
            raise RuntimeError(f"pg_ctl restart failed: {done.stderr.strip()[-500:]}")

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def admin_dsn(self) -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres"

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        if self.started:
            pid = self.postmaster_pid()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._pg_ctl("-m", "immediate", "stop", timeout=60)
            if pid is not None and pid_alive(pid):
                # the postmaster we started, by its own pid file
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.dir, ignore_errors=True)


@dataclass
class Restart:
    at: float
    name: str
    old_pid: int
    returncode: int
    expected: bool
    new_pid: int


class Supervisor:
    """Keeps named processes running: :meth:`check` restarts each one that exited (after a
    second's pause if it died within a second of starting). Deaths the run caused are marked
    expected so unexpected ones stand out."""

    def __init__(self) -> None:
        self.procs: dict[str, Managed] = {}
        self.restarts: list[Restart] = []
        self._expected: set[int] = set()
        self._hold_until: dict[str, float] = {}

    def add(
        self, name: str, argv: list[str], env: dict[str, str], log: Path, cwd: Path = ROOT
    ) -> Managed:
        managed = Managed(name, argv, env, log, cwd)
        managed.start()
        self.procs[name] = managed
        return managed

    def expect_death(self, pid: int) -> None:
        self._expected.add(pid)

    def check(self, on_restart: Callable[[Restart], None] | None = None) -> None:
        now = time.time()
        for name, managed in self.procs.items():
            rc = managed.poll()
            if rc is None:
                continue
            if now < self._hold_until.get(name, 0):
                continue
            if now - managed.started_at < 1.0 and name not in self._hold_until:
                self._hold_until[name] = now + 1.0
                continue
            self._hold_until.pop(name, None)
            old = managed.pid
            new = managed.start()
            restart = Restart(now, name, old, rc, old in self._expected, new)
            self.restarts.append(restart)
            if on_restart is not None:
                on_restart(restart)

    def all_pids(self) -> list[int]:
        return [pid for m in self.procs.values() for pid in m.pids]

    def stop_all(self) -> None:
        """SIGCONT and SIGTERM to every group at once, SIGKILL to those left after the grace."""
        running = [m.proc for m in self.procs.values() if m.proc is not None]
        for proc in running:
            signal_group(proc, signal.SIGCONT)
        stop_groups(running, STOP_GRACE_SECONDS)
