"""The chaos run: hookline's real processes on real Redis and PostgreSQL, a provider-like sender,
and faults injected while it runs; then the guarantees of the README's "What is guaranteed"
are checked on what the tables hold.

Setup: a Redis of our own (AOF, ``appendfsync everysec`` or ``always``) on a free port, a
PostgreSQL cluster of our own when this machine allows one (else a database of our own on
the PostgreSQL at 127.0.0.1:5432, or the one given by ``--database-url``), one
``hookline serve`` and N ``hookline worker`` processes under a supervisor that restarts what
dies.

Faults: ``kill -9`` of a whole worker (its process group: the worker and its RQ scheduler)
every ~20 s, preferably while it holds an open transaction; Redis ``kill -9`` and restart ~5 s
later on the same port and AOF directory; PostgreSQL ``pg_ctl -m immediate restart`` (own
cluster only); SIGSTOP of a worker holding an open transaction for ~100 s (longer if its
jobs' registry entries outlive that, so another worker has taken them over before SIGCONT: a
zombie racing its successor). Workers run their jobs in process (hookline's EventWorker, an
RQ SimpleWorker with a batch loop: no fork per job), so "kill only the job's child process"
does not apply: there is no such child.

Checks after the queues drain: no acknowledged event lost (each is in ``webhook_events`` or
``dead_letters``), no effect applied twice, the dead letters are exactly the poison events
(each with its ``webhook_events`` row ``dead``, none also applied), every job a fault left in
the middle retried or dead-lettered within 30 s of the kill or SIGSTOP (the decision's time is
the one ``workers.retries`` stamps on the abandoned attempt's error) and, after a kill, applied
after its backoff; and replaying the dead letters (two ``hookline dlq replay --all`` at once)
after the cause is fixed applies each once. Every key in the run's Redis must be under RQ's
``RQ_KEY_PREFIX`` or hookline's own prefix (the run and every process it starts read the
variable from the environment).

The Redis failover scenario (a primary, a replica and three Sentinels; ``kill -9`` of the
primary) is :mod:`chaos.failover`: ``python chaos/run.py --scenario failover``; a Redis filled
to its ``maxmemory`` with no worker running, then drained, is :mod:`chaos.redis_full`:
``python chaos/run.py --scenario redis-full``; a Redis Cluster losing the primary of one
of its shards is :mod:`chaos.cluster`: ``python chaos/run.py --scenario cluster``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from chaos.handlers import EFFECTS_TABLE_DDL, SLOW_ENV, STATE_ENV
from chaos.sender import Key, Mix, Sender
from chaos.services import PostgresCluster, RedisServer, Restart, Supervisor, snapshot_code
from tests.processes import (
    ROOT,
    env_for,
    free_port,
    hookline,
    pid_alive,
    processes_in_groups,
    wait_until,
)

SYSTEM_PG_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=test connect_timeout=5"
SYSTEM_PG_URL = "postgresql://postgres@127.0.0.1:5432/{db}"
DEFAULT_OUT = ROOT / "chaos" / "results" / "latest.json"


# -- the plan ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Profile:
    """How hard and how often to break things, for a run of ``duration`` seconds."""

    name: str
    duration: float
    workers: int
    job_timeout: int
    kill_every: float
    first_kill: float
    stop_at: float
    stop_seek: float
    stop_seconds: float
    force_takeover: bool
    stop_max: float
    redis_kills: tuple[float, ...]
    redis_down: float
    pg_restart_at: float | None
    quiet_tail: float
    drain_timeout: float
    replay_timeout: float
    slow_share: float
    slow_seconds: float
    budget: float  # the whole run, setup to teardown, should stay under this

    @classmethod
    def make(cls, name: str, duration: float, workers: int) -> Profile:
        d = duration
        if name == "full":
            return cls(
                name=name,
                duration=d,
                workers=workers,
                job_timeout=60,
                kill_every=20,
                first_kill=20,
                stop_at=0.075 * d,
                stop_seek=30,
                stop_seconds=100,
                force_takeover=True,
                stop_max=170,
                redis_kills=(0.35 * d, 0.75 * d),
                redis_down=5,
                pg_restart_at=0.53 * d,
                quiet_tail=30,
                drain_timeout=150,
                replay_timeout=60,
                slow_share=0.01,
                slow_seconds=1.0,
                budget=d + 290,
            )
        return cls(
            name=name,
            duration=d,
            workers=workers,
            job_timeout=10,
            kill_every=8,
            first_kill=8,
            stop_at=3,
            stop_seek=8,
            stop_seconds=25,
            force_takeover=False,
            stop_max=25,
            redis_kills=(max(38.0, 0.62 * d),),
            redis_down=5,
            pg_restart_at=max(50.0, 0.83 * d),
            quiet_tail=6,
            drain_timeout=120,
            replay_timeout=60,
            slow_share=0.03,
            slow_seconds=1.0,
            budget=d + 330,
        )

    def kill_times(self, rng: random.Random, with_pg: bool) -> list[float]:
        """Worker kills every ~kill_every s, not while another fault is under way."""
        quiet = [(k - 2, k + self.redis_down + 5) for k in self.redis_kills]
        if with_pg and self.pg_restart_at is not None:
            quiet.append((self.pg_restart_at - 2, self.pg_restart_at + 4))
        out = []
        t = self.first_kill
        while t < self.duration - self.quiet_tail:
            at = t + rng.uniform(-0.15, 0.15) * self.kill_every
            if not any(a <= at <= b for a, b in quiet):
                out.append(at)
            t += self.kill_every
        return out


@dataclass
class Action:
    due: float
    name: str
    run: Callable[[], float | None]  # returns "call me again in N s", or None when done
    restorative: bool = False  # undoes a fault: runs even after the sender has finished


@dataclass
class Abandoned:
    """A job a fault left behind in the middle: the event it was applying and when."""

    fault: str  # kill | stop
    source: str
    event_id: str
    fault_at: float
    worker: str
    pid: int
    how_found: str
    job_id: str | None = None
    visible_at_fault: bool = False


# -- small helpers -------------------------------------------------------------------------


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:  # noqa: S310 - 127.0.0.1 only
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return int(err.code)


# -- the run -------------------------------------------------------------------------------


class Harness:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.started = time.time()
        duration = args.minutes * 60
        name = args.profile
        if name == "auto":
            name = "full" if args.minutes >= 5 else "short"
        self.profile = Profile.make(name, duration, args.workers)
        self.rng = random.Random(args.seed)
        self.deadline = self.started + self.profile.budget
        self.work = Path(tempfile.mkdtemp(prefix="hookline-chaos-"))
        self.logs = self.work / "logs"
        self.logs.mkdir()
        self.state = self.work / "state"
        self.state.mkdir()
        self.sup = Supervisor()
        self.pg: PostgresCluster | None = None
        self.pg_note = ""
        self.db_url = ""
        self.own_database: tuple[str, str] | None = None  # (admin dsn, name) to drop at the end
        self.redis: RedisServer | None = None
        self.engine: Any = None
        self.rclient: Any = None
        self.settings: Any = None
        self.config_path = self.work / "hookline.toml"
        self.sender: Sender | None = None
        self.t0 = 0.0
        self.timeline: list[dict[str, Any]] = []
        self.redis_windows: list[dict[str, Any]] = []
        self.pg_restarts: list[dict[str, Any]] = []
        self.abandoned: list[Abandoned] = []
        self._abandoned_keys: set[Key] = set()
        self.stopped_pid: int | None = None
        #: when each SIGSTOPped worker (by pid) got its SIGCONT
        self.resumed_at: dict[int, float] = {}
        self.first_visible: dict[Key, float] = {}
        self._watch: dict[Key, float] = {}
        self._watch_lock = threading.Lock()
        self.queue_samples: list[tuple[float, int]] = []
        self.scheduler_lock: list[dict[str, Any]] = []
        self._stop_threads = threading.Event()
        self._threads: list[threading.Thread] = []
        self.extra_pgids: list[int] = []
        self.results: dict[str, Any] = {}
        self.errors: list[str] = []
        self._pending: list[Action] = []
        self._seeking_stop = False
        self.port = 0
        self.code_root = ROOT
        self.code_version: dict[str, Any] = {}

    # -- logging ---------------------------------------------------------------------------

    def say(self, text: str) -> None:
        rel = time.time() - (self.t0 or self.started)
        print(f"[chaos {rel:7.1f}s] {text}", flush=True)

    def record(self, fault: str, **details: Any) -> dict[str, Any]:
        now = time.time()
        entry = {"t": round(now - self.t0, 2) if self.t0 else None, "at": now, "fault": fault}
        entry.update(details)
        self.timeline.append(entry)
        shown = {k: v for k, v in details.items() if k not in ("at",)}
        self.say(f"{fault} {shown}")
        return entry

    # -- setup -----------------------------------------------------------------------------

    def snapshot(self) -> None:
        """The code under test, copied into the work dir (``--no-snapshot``: run in place), so
        editing the checkout mid-run changes nothing the run's processes load."""
        if self.args.no_snapshot:
            self.code_version = {"snapshot": False}
        else:
            self.code_root = self.work / "code"
            self.code_version = {"snapshot": str(self.code_root), **snapshot_code(self.code_root)}

    def setup(self) -> None:
        p = self.profile
        self.say(
            f"profile {p.name}: {p.duration:.0f} s at {self.args.rate}/s, {p.workers} workers,"
            f" fsync {self.args.fsync}, work dir {self.work}"
        )
        (self.state / "poison").write_text("the cause of the poison events, until fixed\n")
        self.snapshot()
        self.say(f"code under test: {self.code_version}")
        self._setup_database()
        self._setup_redis()
        self._write_config()
        self._start_processes()

    def _setup_database(self) -> None:
        import psycopg

        from shared.db import make_engine
        from shared.migrate import upgrade

        db_name = f"hookline_chaos_{os.getpid()}"
        if self.args.database_url:
            self.db_url = self.args.database_url
            self.pg_note = "given by --database-url: no PostgreSQL restart fault"
        else:
            bin_dir, why = PostgresCluster.feasible()
            if bin_dir is not None and not self.args.system_postgres:
                try:
                    self.pg = PostgresCluster(bin_dir, free_port())
                    self.pg.init_and_start()
                    with psycopg.connect(self.pg.admin_dsn(), autocommit=True) as conn:
                        conn.execute(f'CREATE DATABASE "{db_name}"')
                    self.db_url = self.pg.url(db_name)
                    self.pg_note = f"own cluster ({bin_dir.parent.name}) on port {self.pg.port}"
                except Exception as err:
                    if self.pg is not None:
                        self.pg.stop()
                    self.pg = None
                    why = f"own cluster failed: {err}"
            if self.pg is None:
                with psycopg.connect(SYSTEM_PG_ADMIN, autocommit=True) as conn:
                    conn.execute(f'CREATE DATABASE "{db_name}"')
                self.own_database = (SYSTEM_PG_ADMIN, db_name)
                self.db_url = SYSTEM_PG_URL.format(db=db_name)
                reason = why or "--system-postgres"
                self.pg_note = (
                    f"system PostgreSQL, database {db_name}; restart fault skipped: {reason}"
                )
        self.say(f"database: {self.pg_note}")
        upgrade(self.db_url)
        self.engine = make_engine(self.db_url, pool_size=3, max_overflow=2)
        from sqlalchemy import text

        with self.engine.begin() as conn:
            conn.execute(text(EFFECTS_TABLE_DDL))
            conn.execute(
                text(
                    "TRUNCATE event_bodies, event_steps, webhook_events, payments, dead_letters,"
                    " chaos_effects"
                    " RESTART IDENTITY"
                )
            )

    def _setup_redis(self) -> None:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self.redis = RedisServer(
            self.work / "redis", free_port(), self.args.fsync, self.logs / "redis.log"
        )
        self.redis.start()
        self.rclient = redis.Redis(
            port=self.redis.port,
            socket_timeout=2,
            socket_connect_timeout=1,
            retry=Retry(NoBackoff(), 0),
        )
        self.say(f"redis: 127.0.0.1:{self.redis.port}, AOF appendfsync {self.args.fsync}")

    def _write_config(self) -> None:
        from shared.config import load_settings

        assert self.redis is not None
        self.config_path.write_text(self.config_text("chaos/run.py", self.redis.url))
        self.settings = load_settings(self.config_path)

    def config_text(self, written_by: str, redis_url: str, top: str = "", ingest: str = "") -> str:
        """The run's configuration: ``redis_url`` (and the ``top`` level lines), the chaos
        handlers, the three sources (fresh secrets), ``ingest`` as the [ingest] table's lines."""
        keys = {name: secrets.token_urlsafe(24) for name in ("moncash", "flaky", "poison")}
        hmac_source = (
            'scheme = "hmac"\nsecrets = ["{key}"]\nevent_id = "json:id"\nevent_type = "json:type"\n'
        )
        ingest_table = f"\n[ingest]\n{ingest}\n" if ingest else ""
        return f"""# written by {written_by}
redis_url = "{redis_url}"
database_url = "{self.db_url}"
queue = "hookline"
{top}{ingest_table}
[worker]
max_attempts = 5
backoff_seconds = [1, 2, 5]
job_timeout_seconds = {self.profile.job_timeout}
handlers = ["chaos.handlers"]

[sources.moncash]
scheme = "moncash"
secrets = ["{keys["moncash"]}"]

[sources.flaky]
{hmac_source.format(key=keys["flaky"])}
[sources.poison]
{hmac_source.format(key=keys["poison"])}"""

    def _env(self) -> dict[str, str]:
        return env_for(
            self.code_root,
            HOOKLINE_CONFIG=str(self.config_path),
            **{STATE_ENV: str(self.state), SLOW_ENV: str(self.profile.slow_seconds)},
        )

    def _add_ingress(self, env: dict[str, str]) -> str:
        """``hookline serve`` on a free port, under the supervisor; its base URL."""
        self.port = free_port()
        self.sup.add(
            "serve",
            hookline("serve", "--host", "127.0.0.1", "--port", str(self.port)),
            env,
            self.logs / "serve.log",
            self.code_root,
        )
        return f"http://127.0.0.1:{self.port}"

    def _start_processes(self) -> None:
        from rq import Worker

        env = self._env()
        base = self._add_ingress(env)
        for i in range(1, self.profile.workers + 1):
            self.sup.add(
                f"worker-{i}",
                hookline("worker"),
                env,
                self.logs / f"worker-{i}.log",
                self.code_root,
            )
        self._wait(lambda: http_status(f"{base}/readyz") == 200, 30, "the ingress being ready")
        self._wait(
            lambda: Worker.count(connection=self.rclient) >= self.profile.workers,
            60,
            "the workers registering",
        )
        self.say(f"ingress on {base}, {self.profile.workers} workers up")

    def _wait(self, check: Callable[[], bool], timeout: float, what: str) -> None:
        wait_until(check, timeout, what, between=self.sup.check)

    # -- monitors --------------------------------------------------------------------------

    def _start_monitors(self) -> None:
        for target, name in ((self._queue_monitor, "queue"), (self._visibility_watch, "watch")):
            thread = threading.Thread(target=target, name=f"chaos-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _queue_monitor(self) -> None:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        assert self.redis is not None
        client = redis.Redis(
            port=self.redis.port,
            socket_timeout=0.5,
            socket_connect_timeout=0.5,
            retry=Retry(NoBackoff(), 0),
        )
        from rq.scheduler import RQScheduler

        from shared import keys

        key = keys.queue_key(self.settings.queue)
        lock_key = str(RQScheduler.get_locking_key(self.settings.queue))
        holder: bytes | None = b"?"
        while not self._stop_threads.wait(0.25):
            try:
                pipe = client.pipeline(transaction=False)
                pipe.llen(key)
                pipe.get(lock_key)
                length, lock = pipe.execute()
                self.queue_samples.append((time.time(), int(length)))
                if lock != holder:
                    holder = lock
                    self.scheduler_lock.append(
                        {"t": round(time.time() - self.t0, 2), "holder": lock and lock.decode()}
                    )
            except Exception:
                self.queue_samples.append((time.time(), -1))
        client.close()

    def watch(self, key: Key, since: float) -> None:
        with self._watch_lock:
            self._watch[key] = since

    def _visibility_watch(self) -> None:
        """Polls the tables for the events faults left in the middle, to time their recovery as
        an observer sees it (the row becoming visible)."""
        while not self._stop_threads.wait(0.5):
            with self._watch_lock:
                keys = [k for k in self._watch if k not in self.first_visible]
            if not keys:
                continue
            with contextlib.suppress(Exception):
                now = time.time()
                for key in self.visible(keys):
                    self.first_visible.setdefault(key, now)

    def visible(self, keys: Sequence[Key]) -> dict[Key, tuple[str, float]]:
        """Which of ``keys`` are in webhook_events or dead_letters: (table, when applied)."""
        from sqlalchemy import select, tuple_

        from shared.db import dead_letters, webhook_events

        out: dict[Key, tuple[str, float]] = {}
        if not keys:
            return out
        with self.engine.connect() as conn:
            for table, when, label in (
                (webhook_events, webhook_events.c.processed_at, "processed"),
                (dead_letters, dead_letters.c.failed_at, "dead"),
            ):
                rows = conn.execute(
                    select(table.c.source, table.c.event_id, when).where(
                        tuple_(table.c.source, table.c.event_id).in_(list(keys))
                    )
                )
                for source, event_id, at in rows:
                    out.setdefault((source, event_id), (label, at.timestamp()))
        return out

    # -- faults ----------------------------------------------------------------------------

    def workers(self) -> dict[int, str]:
        """Running worker processes by pid (the SIGSTOPped one excluded)."""
        return {
            m.pid: name
            for name, m in self.sup.procs.items()
            if name.startswith("worker-") and m.running() and m.pid != self.stopped_pid
        }

    def _slow_holder(self, candidates: dict[int, str]) -> tuple[int, Key] | None:
        """A worker inside a slow handler right now (its open transaction holds the event's
        uncommitted webhook_events row)."""
        for marker in self.state.glob("slow_*"):
            try:
                pid = int(marker.name.split("_", 1)[1])
                source, event_id = marker.read_text().splitlines()[:2]
            except (OSError, ValueError):
                continue
            # an event abandoned before is not hit again on purpose: each fault on its own
            if pid in candidates and (source, event_id) not in self._abandoned_keys:
                return pid, (source, event_id)
        return None

    def _queue(self) -> Any:
        """RQ's queue object for the run's queue (every key it names follows RQ_KEY_PREFIX)."""
        from rq import Queue

        from shared.rqcompat import JobSerializer

        return Queue(self.settings.queue, connection=self.rclient, serializer=JobSerializer)

    def _held_jobs(self, pid: int) -> tuple[list[tuple[str, Key | None]], float | None]:
        """The jobs the worker process ``pid`` holds, as RQ's own API lists them (its current
        executions: a batch registers one per job), each with its event, and the latest expiry
        among their StartedJobRegistry entries. The process may be registered under more than
        one name (it registers again after a Redis outage): all of them count."""
        from rq import Worker

        from shared.rqcompat import JobSerializer

        executions: list[Any] = []
        with contextlib.suppress(Exception):
            for w in Worker.all(connection=self.rclient, serializer=JobSerializer):
                if w.pid == pid:
                    executions += w.get_current_executions(refresh=True)
        if not executions:
            return [], None
        registry = self._queue().started_job_registry.key
        scores = self.rclient.zmscore(registry, [e.composite_key for e in executions])
        expiry = max((float(x) for x in scores if x is not None), default=None)
        return self._events_of(sorted({str(e.job_id) for e in executions})), expiry

    def _events_of(self, job_ids: Sequence[str]) -> list[tuple[str, Key | None]]:
        """Each job with the event it carries (None if the job or its data is gone)."""
        from rq.job import Job

        from shared.rqcompat import JobSerializer

        jobs = Job.fetch_many(list(job_ids), connection=self.rclient, serializer=JobSerializer)
        out: list[tuple[str, Key | None]] = []
        for job_id, job in zip(job_ids, jobs, strict=True):
            key: Key | None = None
            with contextlib.suppress(Exception):
                if job is not None:
                    envelope = job.args[0]
                    key = (str(envelope["source"]), str(envelope["event_id"]))
            out.append((job_id, key))
        return out

    def job_errors(self, job_ids: Iterable[str]) -> dict[str, list[dict[str, Any]]]:
        """The failed attempts' errors each job carries in its meta (hookline keeps them there
        until the event ends; the job outlives its success by its result TTL)."""
        from rq.job import Job

        from shared.rqcompat import JobSerializer
        from workers.retries import ERRORS_META

        ids = sorted(set(job_ids))
        out: dict[str, list[dict[str, Any]]] = {}
        with contextlib.suppress(Exception):
            jobs = Job.fetch_many(ids, connection=self.rclient, serializer=JobSerializer)
            for job_id, job in zip(ids, jobs, strict=True):
                errors = job.meta.get(ERRORS_META) if job is not None else None
                if isinstance(errors, list):
                    out[job_id] = [e for e in errors if isinstance(e, dict)]
        return out

    def _stuck_in_intermediate(self) -> list[tuple[str, Key | None]]:
        """Jobs a worker had moved into RQ's intermediate list (its blocking BLMOVE) but not
        yet taken: a live worker takes its id out within milliseconds, so an id still there
        half a second after a kill was the victim's."""
        key = self._queue().intermediate_queue_key
        before = {x.decode() for x in self.rclient.lrange(key, 0, -1)}
        if not before:
            return []
        time.sleep(0.5)
        stuck = sorted(before & {x.decode() for x in self.rclient.lrange(key, 0, -1)})
        return self._events_of(stuck)

    def _seek_victim(self, deadline: float) -> tuple[int, str, Key | None, str] | None:
        """A worker to hit: one inside a slow handler if any shows up before the deadline,
        else any running one. None: keep looking."""
        candidates = self.workers()
        if not candidates:
            return None
        found = self._slow_holder(candidates)
        if found is not None:
            pid, key = found
            return pid, candidates[pid], key, "in a slow handler (open transaction)"
        if time.time() < deadline:
            return None
        pid = self.rng.choice(sorted(candidates))
        return pid, candidates[pid], None, "whatever it was doing"

    def _note_abandoned(
        self,
        fault: str,
        at: float,
        pid: int,
        worker: str,
        how: str,
        slow_key: Key | None,
        held: list[tuple[str, Key | None]],
        held_label: str = "in its batch",
    ) -> int:
        """Remember every event the fault (at ``at``) left in the middle; returns how many."""
        items: dict[Key, Abandoned] = {}
        if slow_key is not None:
            items[slow_key] = Abandoned(fault, *slow_key, at, worker, pid, how)
        for job_id, key in held:
            if key is None:
                continue
            item = items.get(key) or Abandoned(fault, *key, at, worker, pid, held_label)
            item.job_id = job_id
            items[key] = item
        visible: dict[Key, tuple[str, float]] = {}
        with contextlib.suppress(Exception):
            visible = self.visible(list(items))
        for key, item in items.items():
            item.visible_at_fault = key in visible
            self.abandoned.append(item)
            self._abandoned_keys.add(key)
            if not item.visible_at_fault:
                self.watch(key, at)
        return len(items)

    def kill_worker_action(self) -> Callable[[], float | None]:
        deadline: list[float] = []

        def run() -> float | None:
            if self._seeking_stop:
                return 0.5  # not while the SIGSTOP looks for its victim
            if not deadline:
                deadline.append(time.time() + 3.0)
            victim = self._seek_victim(deadline[0])
            if victim is None:
                return 0.03
            pid, worker, slow_key, how = victim
            self.sup.expect_death(pid)
            self.sup.procs[worker].signal_group(signal.SIGKILL)
            at = time.time()
            held, _ = self._held_jobs(pid)
            n = self._note_abandoned("kill", at, pid, worker, how, slow_key, held)
            stuck = self._stuck_in_intermediate()
            n += self._note_abandoned(
                "kill", at, pid, worker, how, None, stuck, "in RQ's intermediate list, not taken"
            )
            self.record(
                "kill -9 worker", worker=worker, pid=pid, holding=how, event=slow_key, jobs_held=n
            )
            return None

        return run

    def stop_worker_action(self) -> Callable[[], float | None]:
        deadline: list[float] = []

        def run() -> float | None:
            if not deadline:
                deadline.append(time.time() + self.profile.stop_seek)
                self._seeking_stop = True
            victim = self._seek_victim(deadline[0])
            if victim is None:
                return 0.03
            self._seeking_stop = False
            pid, worker, slow_key, how = victim
            self.sup.procs[worker].signal_group(signal.SIGSTOP)
            at = time.time()
            self.stopped_pid = pid
            held, expiry = self._held_jobs(pid)
            n = self._note_abandoned("stop", at, pid, worker, how, slow_key, held)
            stop_for = self.profile.stop_seconds
            if self.profile.force_takeover and expiry is not None:
                # resume only once another worker has taken the jobs over: their registry
                # entries expire, then a janitor round (every 5 s) retries them
                stop_for = min(self.profile.stop_max, max(stop_for, expiry - time.time() + 25))
            self.record(
                "SIGSTOP worker",
                worker=worker,
                pid=pid,
                holding=how,
                event=slow_key,
                jobs_held=n,
                entries_expire_in_s=None if expiry is None else round(expiry - time.time(), 1),
                resume_in_s=round(stop_for, 1),
            )
            self.schedule(stop_for, "SIGCONT", self._resume(worker, pid), restorative=True)
            return None

        return run

    def _resume(self, worker: str, pid: int) -> Callable[[], float | None]:
        def run() -> float | None:
            self.sup.procs[worker].signal_group(signal.SIGCONT)
            self.resumed_at[pid] = time.time()
            self.stopped_pid = None
            self.record("SIGCONT worker", worker=worker, pid=pid)
            return None

        return run

    def kill_redis(self) -> float | None:
        assert self.redis is not None
        killed = time.time()
        self.redis.kill9()
        window: dict[str, Any] = {"killed_at": killed}
        self.redis_windows.append(window)
        self.record("kill -9 redis", port=self.redis.port)

        def restart() -> float | None:
            assert self.redis is not None
            window["restarted_at"] = time.time()
            window["ready_at"] = self.redis.start(timeout=60)
            self.record(
                "redis restarted",
                down_s=round(window["ready_at"] - killed, 2),
                loading_s=round(window["ready_at"] - window["restarted_at"], 2),
            )
            return None

        self.schedule(self.profile.redis_down, "restart redis", restart, restorative=True)
        return None

    def restart_postgres(self) -> float | None:
        assert self.pg is not None
        started = time.time()
        entry: dict[str, Any] = {"at": started}
        try:
            self.pg.restart_immediate()
            entry["ready_at"] = time.time()
            self.record(
                "postgres restarted (immediate)", took_s=round(entry["ready_at"] - started, 2)
            )
        except Exception as err:
            entry["error"] = str(err)
            self.record("postgres restart failed", error=str(err))
            self.errors.append(f"postgres restart failed: {err}")
        self.pg_restarts.append(entry)
        return None

    # -- the loop --------------------------------------------------------------------------

    def schedule(
        self,
        delay: float,
        name: str,
        run: Callable[[], float | None],
        restorative: bool = False,
    ) -> None:
        self._pending.append(Action(time.time() + delay, name, run, restorative))

    def on_restart(self, restart: Restart) -> None:
        self.record(
            "supervisor restarted",
            name=restart.name,
            old_pid=restart.old_pid,
            rc=restart.returncode,
            expected=restart.expected,
            new_pid=restart.new_pid,
        )
        if not restart.expected:
            self.errors.append(
                f"{restart.name} (pid {restart.old_pid}) died unexpectedly, rc {restart.returncode}"
            )

    def inject(self) -> None:
        p = self.profile
        self._start_monitors()
        schemes = {name: src.scheme for name, src in self.settings.sources.items()}
        mix = Mix(slow=p.slow_share)
        self.sender = Sender(
            f"http://127.0.0.1:{self.port}",
            schemes,
            self.args.rate,
            p.duration,
            mix,
            self.args.seed,
        )
        self.t0 = time.time()
        self.sender.start()
        self.say("sender started")
        self.schedule(p.stop_at, "SIGSTOP a worker", self.stop_worker_action())
        for at in p.redis_kills:
            self.schedule(at, "kill -9 redis", self.kill_redis)
        if self.pg is not None and p.pg_restart_at is not None:
            self.schedule(p.pg_restart_at, "restart postgres", self.restart_postgres)
        for at in p.kill_times(self.rng, self.pg is not None):
            self.schedule(at, "kill -9 worker", self.kill_worker_action())
        self.run_actions()

    def run_actions(self) -> None:
        """Run the scheduled actions (faults and what undoes them) while the sender sends,
        and the supervisor's rounds; returns once the sender has finished and nothing
        restorative is left to run."""
        assert self.sender is not None
        sender = self.sender
        while True:
            now = time.time()
            self._pending.sort(key=lambda a: a.due)
            while self._pending and self._pending[0].due <= now:
                action = self._pending.pop(0)
                try:
                    again = action.run()
                except Exception as err:
                    self.errors.append(f"fault {action.name} failed: {err!r}")
                    self.record("fault failed", name=action.name, error=repr(err))
                    again = None
                if again is not None:
                    self._pending.append(
                        Action(time.time() + again, action.name, action.run, action.restorative)
                    )
                    break
            self.sup.check(self.on_restart)
            if not sender.alive():
                self._pending = [a for a in self._pending if a.restorative]
                if not self._pending:
                    break
            if time.time() > self.deadline:
                raise RuntimeError("the run overran its time budget during the faults")
            time.sleep(0.02)
        if sender.error is not None:
            raise RuntimeError(f"the sender failed: {sender.error!r}")
        r = sender.result
        self.say(
            f"sender done: {len(r.events)} events, {len(r.attempts)} requests,"
            f" {len(r.acked)} acknowledged, {len(r.gave_up)} deliveries given up"
        )

    # -- draining --------------------------------------------------------------------------

    def rq_state(self) -> dict[str, int]:
        q = self._queue()
        pipe = self.rclient.pipeline(transaction=False)
        pipe.llen(q.key)
        pipe.llen(q.intermediate_queue_key)
        pipe.zcard(q.started_job_registry.key)
        pipe.zcard(q.scheduled_job_registry.key)
        pipe.zcard(q.failed_job_registry.key)
        queued, intermediate, started, scheduled, failed = pipe.execute()
        return {
            "queued": int(queued),
            "intermediate": int(intermediate),
            "started": int(started),
            "scheduled": int(scheduled),
            "failed_registry": int(failed),
        }

    def all_applied(self) -> set[Key]:
        from sqlalchemy import select

        from shared.db import dead_letters, webhook_events

        with self.engine.connect() as conn:
            done = {
                (s, e)
                for s, e in conn.execute(select(webhook_events.c.source, webhook_events.c.event_id))
            }
            done |= {
                (s, e)
                for s, e in conn.execute(select(dead_letters.c.source, dead_letters.c.event_id))
            }
        return done

    def wait_drained(
        self, timeout: float, what: str, extra: Callable[[], bool] | None = None
    ) -> dict[str, Any]:
        """Until Redis holds no queued, in-flight or scheduled job, every acknowledged event is
        in a table (and ``extra`` holds), twice in a row a second apart; bounded."""
        assert self.sender is not None
        acked = set(self.sender.result.acked)
        started = time.time()
        deadline = min(started + timeout, self.deadline - 45)
        streak = 0
        state: dict[str, Any] = {}
        missing: set[Key] = set()
        while time.time() < deadline:
            self.sup.check(self.on_restart)
            try:
                state = self.rq_state()
                missing = acked - self.all_applied()
                busy = any(state[k] for k in ("queued", "intermediate", "started", "scheduled"))
                ok = not busy and not missing and (extra is None or extra())
            except Exception as err:
                state = {"error": repr(err)}
                ok = False
            streak = streak + 1 if ok else 0
            if streak >= 2:
                break
            time.sleep(1.0)
        took = time.time() - started
        drained = streak >= 2
        self.say(
            f"{what}: {'drained' if drained else 'NOT drained'} after {took:.1f} s"
            f" (redis {state}, {len(missing)} acknowledged events not in a table yet)"
        )
        return {
            "drained": drained,
            "seconds": round(took, 1),
            "redis": state,
            "missing": len(missing),
        }

    # -- checks ----------------------------------------------------------------------------

    def tables(self) -> dict[str, Any]:
        from sqlalchemy import select, text

        from shared.db import dead_letters, payments, webhook_events

        with self.engine.connect() as conn:
            events = {
                (r.source, r.event_id): r
                for r in conn.execute(
                    select(
                        webhook_events.c.source,
                        webhook_events.c.event_id,
                        webhook_events.c.status,
                        webhook_events.c.attempts,
                        webhook_events.c.processed_at,
                        webhook_events.c.errors,
                    )
                )
            }
            dead = {
                (r.source, r.event_id): r
                for r in conn.execute(
                    select(
                        dead_letters.c.id,
                        dead_letters.c.source,
                        dead_letters.c.event_id,
                        dead_letters.c.reason,
                        dead_letters.c.permanent,
                        dead_letters.c.attempts,
                        dead_letters.c.failed_at,
                        dead_letters.c.replays,
                        dead_letters.c.errors,
                    )
                    # still dead: a dead letter a replay applied is kept, marked applied
                    .where(dead_letters.c.applied_at.is_(None))
                )
            }
            effects = {
                (r.source, r.event_id): r
                for r in conn.execute(
                    text(
                        "select source, event_id, count(*) as n,"
                        " array_agg(pid order by id) as pids,"
                        " array_agg(attempt order by id) as attempts,"
                        " max(at) as last_at from chaos_effects group by source, event_id"
                    )
                )
            }
            pays = {
                r.reference: r
                for r in conn.execute(
                    select(payments.c.reference, payments.c.status, payments.c.event_id).where(
                        payments.c.source == "moncash"
                    )
                )
            }
        return {"events": events, "dead": dead, "effects": effects, "payments": pays}

    def redis_key_census(self) -> dict[str, Any]:
        """Every key in the run's Redis (its own: nothing else writes there) must be under
        RQ's prefix or hookline's. With a non-default ``RQ_KEY_PREFIX`` this shows that no
        process of the run (ingress, workers, RQ's scheduler, ``dlq replay``, this harness)
        named an RQ key by hand."""
        return self.key_census(list(self.rclient.scan_iter(count=1000)))

    @staticmethod
    def key_census(found: Sequence[bytes]) -> dict[str, Any]:
        """The keys ``found`` against the two prefixes: RQ's and hookline's."""
        from rq.defaults import RQ_KEY_PREFIX

        from shared import keys

        allowed = (f"{RQ_KEY_PREFIX}:", keys.PREFIX)
        names = [k.decode(errors="replace") for k in found]
        outside = sorted(n for n in names if not n.startswith(allowed))
        return {
            "rq_key_prefix": RQ_KEY_PREFIX,
            "hookline_prefix": keys.PREFIX,
            "keys": len(names),
            "outside_prefixes": outside[:50],
            "outside_prefixes_count": len(outside),
        }

    # -- replay ----------------------------------------------------------------------------

    def replay(self) -> None:
        from sqlalchemy import func, select

        from shared.db import dead_letters

        before = self.tables()
        dead_keys = sorted(before["dead"])
        (self.state / "poison").unlink()
        self.say(f"poison cause fixed; replaying {len(dead_keys)} dead letters, twice at once")
        env = self._env()
        argv = hookline("dlq", "replay", "--all")
        procs = [
            subprocess.Popen(
                argv,
                env=env,
                cwd=self.code_root,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                process_group=0,
            )
            for _ in range(2)
        ]
        self.extra_pgids += [p.pid for p in procs]
        outputs = []
        for proc in procs:
            try:
                out, _ = proc.communicate(
                    timeout=max(10, min(120, self.deadline - time.time() - 60))
                )
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                out, _ = proc.communicate()
            text = out.decode(errors="replace").strip().splitlines()
            outputs.append({"rc": proc.returncode, "last_line": text[-1] if text else ""})

        def no_dead_letters() -> bool:
            with self.engine.connect() as conn:
                still_dead = (
                    select(func.count())
                    .select_from(dead_letters)
                    .where(dead_letters.c.applied_at.is_(None))
                )
                return int(conn.execute(still_dead).scalar_one()) == 0

        drain = self.wait_drained(self.profile.replay_timeout, "replay", extra=no_dead_letters)
        after = self.tables()
        per_event: list[dict[str, Any]] = []
        for key in dead_keys:
            eff = after["effects"].get(key)
            row = after["events"].get(key)
            per_event.append(
                {
                    "event": list(key),
                    "effect_rows": eff.n if eff is not None else 0,
                    # a dead letter has a webhook_events row 'dead' too: applied means processed
                    "processed": row is not None and row.status == "processed",
                    "still_dead": key in after["dead"],
                }
            )
        dup_after = sorted(k for k, e in after["effects"].items() if e.n > 1)
        self.results["replay"] = {
            "dead_letters_replayed": len(dead_keys),
            "replays": outputs,
            "drain": drain,
            "applied_once": sum(1 for x in per_event if x["effect_rows"] == 1 and x["processed"]),
            "not_processed": [x["event"] for x in per_event if not x["processed"]],
            "not_applied": [x["event"] for x in per_event if x["effect_rows"] == 0],
            "applied_more_than_once": [x["event"] for x in per_event if x["effect_rows"] > 1],
            "dead_letters_left": len(after["dead"]),
            "duplicated_effects_after_replay": [list(k) for k in dup_after],
        }

    # -- report ----------------------------------------------------------------------------

    # -- teardown --------------------------------------------------------------------------

    def run_record(self, keep: bool, status: int) -> dict[str, Any]:
        """What every run's results say of it: its database and code, when it ran and how
        long, its timeline, the harness's errors, the work folder if kept, its exit status."""
        return {
            "database": self.pg_note,
            "code": self.code_version,
            "started_at": dt.datetime.fromtimestamp(self.started, dt.UTC).isoformat(),
            "wall_seconds": round(time.time() - self.started, 1),
            "timeline": [{k: v for k, v in e.items() if k != "at"} for e in self.timeline],
            "harness_errors": self.errors,
            "workdir_kept": str(self.work) if keep else None,
            "exit_status": status,
        }

    def teardown(self, keep: bool) -> None:
        if self.sender is not None:
            self.sender.abort()
            self.sender.join(10)
        self._stop_threads.set()
        for thread in self._threads:
            thread.join(5)
        pgids = self.sup.all_pids() + self.extra_pgids
        if self.redis is not None:
            pgids += self.redis.process.pids
        self.sup.stop_all()
        if self.redis is not None:
            self.redis.stop()
        for pgid in self.extra_pgids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
        if self.rclient is not None:
            self.rclient.close()
        if self.engine is not None:
            if self.own_database is None and self.args.database_url:
                with contextlib.suppress(Exception), self.engine.begin() as conn:
                    from sqlalchemy import text

                    conn.execute(text("DROP TABLE IF EXISTS chaos_effects"))
            self.engine.dispose()
        if self.pg is not None:
            if keep:
                with contextlib.suppress(OSError):
                    shutil.copy(self.pg.log, self.logs / "postgres.log")
            self.pg.stop()
        if self.own_database is not None:
            import psycopg

            admin, name = self.own_database
            with contextlib.suppress(Exception), psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        # anything left in one of our process groups (a worker's RQ scheduler child...)
        time.sleep(0.2)
        left = processes_in_groups(pgids)
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.results["processes"] = {
            "process_groups": sorted(set(pgids)),
            "left_running_at_teardown": left,
            "still_alive": [p for p in left if pid_alive(p)],
        }
        if keep:
            self.say(f"work dir kept for inspection: {self.work}")
        else:
            shutil.rmtree(self.work, ignore_errors=True)


def _raise_interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python chaos/run.py", description="hookline's fault-injection run"
    )
    parser.add_argument(
        "--scenario",
        choices=["faults", "failover", "redis-full", "cluster"],
        default="faults",
        help="faults (default): this run; failover: kill -9 of a Redis primary behind Sentinel,"
        " with ack_replicas 1 and 0 (chaos/failover.py; --scenario failover --help lists its"
        " options); redis-full: a Redis filled to its maxmemory with no worker, then drained"
        " under load (chaos/redis_full.py; --scenario redis-full --help); cluster: kill -9 of"
        " the primary holding one shard of a Redis Cluster (chaos/cluster.py; --scenario"
        " cluster --help)",
    )
    parser.add_argument("--minutes", type=float, default=10.0, help="sending time (default 10)")
    parser.add_argument(
        "--rate", type=float, default=40.0, help="new events per second (default 40)"
    )
    parser.add_argument("--fsync", choices=["everysec", "always"], default="everysec")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument(
        "--profile",
        choices=["auto", "full", "short"],
        default="auto",
        help="fault schedule: full (>= 5 minutes) or short (about a minute);"
        " auto picks by --minutes",
    )
    parser.add_argument(
        "--database-url",
        default=None,
        help="use this existing (empty) PostgreSQL database; no PostgreSQL restart fault",
    )
    parser.add_argument(
        "--system-postgres",
        action="store_true",
        help="use a database of our own on 127.0.0.1:5432 instead of a cluster of our own",
    )
    add_run_options(parser)
    args = parser.parse_args(argv)
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1 << 30)
    if args.workers < 2:
        parser.error("--workers must be at least 2")
    return args


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """Every run's last options: ``--no-snapshot``, ``--seed``, ``--keep-workdir``."""
    parser.add_argument(
        "--no-snapshot",
        action="store_true",
        help="run the processes from the tree itself, not from a copy taken at the start",
    )
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--keep-workdir", action="store_true", help="keep logs even when all pass")


def add_scenario_options(parser: argparse.ArgumentParser, default_out: Path) -> None:
    """A scenario's (``--scenario failover``, ``redis-full``, ``cluster``) last options:
    ``--drain-timeout``, ``--out``, ``--database-url``, then :func:`add_run_options`'."""
    parser.add_argument("--drain-timeout", type=float, default=120.0)
    parser.add_argument("--out", type=Path, default=default_out)
    parser.add_argument(
        "--database-url",
        default=None,
        help="an existing PostgreSQL database to use (else one of our own on 127.0.0.1:5432)",
    )
    add_run_options(parser)


def finish_scenario_args(args: argparse.Namespace, minutes: float, workers: int) -> None:
    """A scenario's parsed options completed: a random ``--seed`` when none was given, and
    what the main run's harness reads (a short profile of ``minutes`` and ``workers``, AOF
    ``everysec``, a database of our own on the system's PostgreSQL)."""
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1 << 30)
    args.minutes = minutes
    args.profile = "short"
    args.workers = workers
    args.fsync = "everysec"
    args.system_postgres = True


def run_scenario_mode(
    harness: Any, keep: bool, label: str, settled: Callable[[], dict[str, Any]], **mode: Any
) -> dict[str, Any]:
    """One mode of a scenario built on :class:`Harness` (``--scenario failover``,
    ``redis-full``): set up, inject, wait with ``settled``, measure and judge with the
    scenario's own ``measure`` and ``targets``; an error or Ctrl-C aborts the mode with its
    traceback; everything is stopped, and the results carry ``mode``, where and when it ran
    and its exit status (0 every check PASS, 1 a MISS, 2 aborted, 130 interrupted)."""
    import traceback

    status = 2
    try:
        harness.setup()
        harness.inject()
        harness.measure(settled())
        harness.results["targets"] = harness.targets()
        status = 1 if any(t["result"] == "MISS" for t in harness.results["targets"]) else 0
        keep = keep or status != 0 or bool(harness.errors)
    except (Exception, KeyboardInterrupt) as err:
        harness.errors.append(f"run aborted: {err!r}")
        keep = True
        status = 2 if isinstance(err, Exception) else 130
        print(f"[chaos] {label} run aborted: {err!r}", file=sys.stderr, flush=True)
        traceback.print_exc()
        if isinstance(err, KeyboardInterrupt):
            harness.results["interrupted"] = True
    finally:
        harness.teardown(keep)
        harness.results.update({**mode, **harness.run_record(keep, status)})
    return dict(harness.results)


def run_modes(
    results: dict[str, Any], modes: Iterable[tuple[str, Callable[[], dict[str, Any]]]]
) -> int:
    """A scenario's modes (name, run) in turn, until one aborts or is interrupted: each
    one's results under ``results["modes"][name]``, its targets added to
    ``results["targets"]``; the worst exit status."""
    status = 0
    for name, run in modes:
        res = run()
        results["modes"][name] = res
        results["targets"] += res.get("targets", [])
        status = max(status, res["exit_status"])
        if res["exit_status"] in (2, 130):
            break
    return status


def scenario_main(
    scenario: str,
    args: argparse.Namespace,
    argv: Sequence[str] | None,
    run: Callable[[dict[str, Any]], int],
    print_summary: Callable[[dict[str, Any]], None],
) -> int:
    """A scenario's command: SIGTERM and SIGHUP interrupt it (its runs stop everything they
    started); ``run`` adds to the results (after ``scenario`` and ``command``) and returns
    the exit status; the results, with ``wall_seconds`` and ``exit_status``, are written to
    ``args.out`` as JSON, then ``print_summary`` shows them."""
    command = "python chaos/run.py " + " ".join(sys.argv[1:] if argv is None else argv)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_interrupt)
    started = time.time()
    results: dict[str, Any] = {"scenario": scenario, "command": command}
    status = run(results)
    results["wall_seconds"] = round(time.time() - started, 1)
    results["exit_status"] = status
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=str))
    print_summary(results)
    return status
