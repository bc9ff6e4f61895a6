"""What the benchmark's parts share: the configuration, the ~1 KB payload, signed requests,
child processes (always stopped) and their peak RSS, and the bench's Redis and PostgreSQL."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent

REDIS_URL = "redis://127.0.0.1:6379/12"
PG_ADMIN_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=test"
PG_DB = "hookline_bench"
PG_DSN = f"host=127.0.0.1 port=5432 user=postgres dbname={PG_DB}"
DATABASE_URL = f"postgresql://postgres@127.0.0.1:5432/{PG_DB}"
QUEUE = "hookline"
SOURCE = "moncash"
SECRET = "whsec_bench_moncash_secret_0123456789"
BODY_BYTES = 1024
WEBHOOK_PATH = f"/webhooks/{SOURCE}"

CONFIG_TOML = f"""# written by bench/run.py
redis_url = "{REDIS_URL}"
database_url = "{DATABASE_URL}"
queue = "{QUEUE}"

[sources.{SOURCE}]
scheme = "moncash"
secrets = ["{SECRET}"]
"""


def settings() -> Any:
    """The same configuration as CONFIG_TOML, parsed by the project's own code."""
    import tomllib

    from shared.config import settings_from_mapping

    return settings_from_mapping(tomllib.loads(CONFIG_TOML), environ={})


# -- payload ---------------------------------------------------------------------------------


def body_for(n: int, now: float) -> bytes:
    """A MonCash ``payment.completed`` event of exactly BODY_BYTES bytes, unique per ``n``: the
    project's own sample, padded with the fields a real payment notification carries."""
    from shared.samples import sample

    doc = json.loads(sample("moncash", now, n).body)
    tag = f"{n:012d}"
    doc.update(
        {
            "currency": "HTG",
            "description": f"Order ORD-{tag} - 3 items - boutique en ligne",
            "customer": {
                "id": f"cus_{tag}",
                "name": "Jean-Baptiste Pierre-Louis",
                "email": f"client.{tag}@example.ht",
                "phone": "+50937001234",
                "address": {"city": "Port-au-Prince", "country": "HT", "line1": "12 Rue Capois"},
            },
            "items": [
                {"sku": "SKU-1001", "name": "Cafe Rebo 500 g", "qty": 2, "unit_amount": 450},
                {"sku": "SKU-2002", "name": "Chocolat 70 %", "qty": 1, "unit_amount": 600},
            ],
            "payment": {
                "method": "wallet",
                "transaction_id": f"TXN{tag}",
                "payer": "50937001234",
                "fee": 15,
            },
            "metadata": {"store": "boutique-01", "channel": "web", "attempt": 1},
        }
    )
    raw = json.dumps(doc, separators=(",", ":"))
    pad = BODY_BYTES - len(raw) - len(',"note":""')
    if pad < 0:
        raise ValueError("payload base is larger than BODY_BYTES")
    doc["note"] = ("Merci pour votre achat. " * 60)[:pad]
    out = json.dumps(doc, separators=(",", ":")).encode()
    assert len(out) == BODY_BYTES, len(out)
    return out


@dataclass(frozen=True)
class Signed:
    event_id: str
    timestamp: str
    signature: str
    body: bytes

    def raw_http(self, host: str) -> bytes:
        """The HTTP/1.1 request wrk sends for this event (same header set)."""
        head = (
            f"POST {WEBHOOK_PATH} HTTP/1.1\r\n"
            f"Host: {host}\r\n"
            "Content-Type: application/json\r\n"
            f"X-MCC-Timestamp: {self.timestamp}\r\n"
            f"X-MCC-Signature: {self.signature}\r\n"
            f"Content-Length: {len(self.body)}\r\n\r\n"
        )
        return head.encode("ascii") + self.body

    def wrk_line(self) -> bytes:
        return f"{self.timestamp}\t{self.signature}\t".encode("ascii") + self.body + b"\n"


def sign_many(first: int, count: int, now: float | None = None) -> list[Signed]:
    """``count`` new events numbered from ``first``, signed with the project's MonCash scheme
    (HMAC-SHA256 over ``"{timestamp}." + body``) at ``now``: valid for the 300 s tolerance."""
    now = time.time() if now is None else now
    scheme = settings().sources[SOURCE].scheme
    out = []
    for n in range(first, first + count):
        body = body_for(n, now)
        headers = scheme.sign(body, now)
        out.append(
            Signed(
                event_id=f"evt_{n:012d}",
                timestamp=headers["X-MCC-Timestamp"],
                signature=headers["X-MCC-Signature"],
                body=body,
            )
        )
    return out


def write_wrk_file(path: Path, events: Sequence[Signed]) -> None:
    with path.open("wb") as f:
        for e in events:
            f.write(e.wrk_line())


# -- processes ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bench_env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    for name in ("HOOKLINE_CONFIG", "HOOKLINE_REDIS_URL", "HOOKLINE_DATABASE_URL"):
        env.pop(name, None)
    return env


def hookline_cmd(*args: str) -> list[str]:
    """The installed console script next to this interpreter, else ``python -m``."""
    script = Path(sys.executable).parent / "hookline"
    if script.exists():
        return [str(script), *args]
    return [sys.executable, "-m", "hookline.cli", *args]


def vm_hwm_mb(pid: int) -> float | None:
    """Peak resident set size (VmHWM) of a live process, in MB (10^6 bytes)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / 1e6
    return None


@dataclass
class Proc:
    """A child in its own process group; ``peak_rss_mb`` is kept once it has exited."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    started: float = field(default_factory=time.monotonic)
    peak_rss_mb: float | None = None
    ended: float | None = None
    #: user + system CPU seconds, known once reaped
    cpu_s: float | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.returncode is None

    def sample_rss(self) -> float | None:
        value = vm_hwm_mb(self.pid) if self.alive() else None
        if value is not None:
            self.peak_rss_mb = max(self.peak_rss_mb or 0.0, value)
        return self.peak_rss_mb

    def reap(self, block: bool) -> bool:
        """Wait for the child with ``wait4``: its rusage gives the exact peak RSS even after it
        exited on its own (``/proc`` is gone by then)."""
        if not self.alive():
            return True
        try:
            pid, status, usage = os.wait4(self.pid, 0 if block else os.WNOHANG)
        except ChildProcessError:
            self.popen.returncode = self.popen.returncode or -1
            return True
        if pid == 0:
            return False
        self.popen.returncode = os.waitstatus_to_exitcode(status)
        self.ended = time.monotonic()
        self.peak_rss_mb = max(self.peak_rss_mb or 0.0, usage.ru_maxrss * 1024 / 1e6)
        self.cpu_s = usage.ru_utime + usage.ru_stime
        return True

    def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.reap(block=False):
                return True
            time.sleep(0.02)
        return self.reap(block=False)

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM to the whole group, SIGKILL after ``grace`` seconds."""
        if not self.alive():
            return
        self.sample_rss()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGTERM)
        if not self.wait(grace):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
            self.reap(block=True)
        # a process group may hold children (RQ's scheduler): make sure none is left
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)


class Procs:
    """Every process the benchmark starts; ``stop_all`` is called in a ``finally``."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: list[Proc] = []

    def start(self, name: str, argv: list[str], cwd: Path | None = None) -> Proc:
        log = self.log_dir / f"{name}.log"
        with log.open("ab") as out:
            popen = subprocess.Popen(
                argv,
                env=bench_env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=cwd or ROOT,
                start_new_session=True,
            )
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            proc.stop(grace=5.0)


def wait_until(check: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception as err:  # not ready yet
            last = err
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not happen within {timeout} s (last error: {last!r})")


def http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=1) as resp:  # noqa: S310 - loopback only
        return bool(resp.status == 200)


def wait_http(proc: Proc, url: str, timeout: float = 20.0) -> None:
    def ready() -> bool:
        if not proc.alive() or proc.reap(block=False):
            raise RuntimeError(f"{proc.name} exited; see {proc.log}")
        return http_ok(url)

    wait_until(ready, timeout, f"{proc.name} answering {url}")


# -- Redis and PostgreSQL ------------------------------------------------------------------------


def redis_client() -> Any:
    from redis import Redis

    return Redis.from_url(REDIS_URL)


def create_database() -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {PG_DB} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {PG_DB}")


def drop_database() -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {PG_DB} WITH (FORCE)")


def truncate_tables() -> None:
    import psycopg

    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute("TRUNCATE webhook_events, payments, dead_letters RESTART IDENTITY")


def table_counts() -> dict[str, int]:
    import psycopg

    with psycopg.connect(PG_DSN) as conn:
        return {
            t: int(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0])  # type: ignore[index]  # noqa: S608
            for t in ("webhook_events", "payments", "dead_letters")
        }
