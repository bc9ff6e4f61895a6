"""Bulk actions on dead letters (replay, purge), run in the console process as background
tasks so that a page or an API call answers at once and shows the progress.

Each job runs in a thread of a small pool of its own (the page queries keep the default pool):
a replay queues one dead letter at a time through :meth:`Operations.replay_dead`, a purge
deletes :data:`~workers.deadletters.PURGE_CHUNK` at a time through
:meth:`Operations.purge_dead`, each chunk its own short transaction, so the workers never wait
long on a row the console holds. A job stops between two items when the console stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from hookline.ops import Operations
from shared.db import utcnow
from workers.deadletters import OUTCOMES, PURGE_CHUNK

log = logging.getLogger("hookline.console")

ACTIONS = ("replay", "purge")
#: finished jobs kept for their pages (the oldest go first)
JOBS_KEPT = 100
#: bulk jobs running at once; more wait their turn
JOB_THREADS = 2


@dataclass
class Job:
    """One bulk action and how far it got."""

    id: int
    action: str
    ids: Sequence[int]
    #: what the operator asked for, in words ("source flaky, type x")
    description: str
    #: who asked (console, api), for the events' timelines
    by: str = "console"
    started_at: dt.datetime = field(default_factory=utcnow)
    finished_at: dt.datetime | None = None
    #: ids handled so far, and of those the ones replayed or purged (the rest were gone)
    done: int = 0
    applied: int = 0
    error: str | None = None
    stopped: bool = False
    #: a replay's dead letters queued again, each with when (to tell what became of it)
    queued_at: dict[int, dt.datetime] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def total(self) -> int:
        return len(self.ids)

    @property
    def running(self) -> bool:
        return self.finished_at is None

    @property
    def state(self) -> str:
        if self.running:
            return "running"
        if self.error:
            return "failed"
        return "stopped" if self.stopped else "done"

    def outcome(self, ops: Operations) -> dict[str, int] | None:
        """A replay's count of what became of the events it queued again (``processed``,
        ``dead again``, ``waiting``, ``gone``); None for a purge. Read from the database."""
        if self.action != "replay":
            return None
        found = ops.replay_outcomes(dict(self.queued_at))
        return {k: sum(1 for v in found.values() if v == k) for k in OUTCOMES}

    def to_json(self, outcome: dict[str, int] | None = None) -> dict[str, Any]:
        return {
            "id": self.id,
            "action": self.action,
            "description": self.description,
            "state": self.state,
            "total": self.total,
            "done": self.done,
            "applied": self.applied,
            "gone": self.done - self.applied,
            # a replay: what became of the events queued again, so far
            "outcome": outcome,
            "error": self.error,
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
        }


class Jobs:
    """The bulk actions of this console process."""

    def __init__(self, ops: Operations) -> None:
        self._ops = ops
        self._ids = itertools.count(1)
        self._jobs: OrderedDict[int, Job] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()
        self._pool = ThreadPoolExecutor(JOB_THREADS, thread_name_prefix="console-job")

    def get(self, job_id: int) -> Job | None:
        return self._jobs.get(job_id)

    def recent(self, n: int = 10) -> list[Job]:
        return list(reversed(self._jobs.values()))[:n]

    def start(self, action: str, ids: Sequence[int], description: str, *, by: str) -> Job:
        if action not in ACTIONS:
            raise ValueError(f"unknown action {action!r}")
        job = Job(next(self._ids), action, list(ids), description, by)
        self._jobs[job.id] = job
        while len(self._jobs) > JOBS_KEPT:
            oldest = next(iter(self._jobs.values()))
            if oldest.running:
                break
            self._jobs.popitem(last=False)
        task = asyncio.create_task(self._run(job), name=f"console-job-{job.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        log.info("console: job %d started: %s %d dead letter(s)", job.id, action, job.total)
        return job

    async def _run(self, job: Job) -> None:
        loop = asyncio.get_running_loop()
        try:
            work = self._replay if job.action == "replay" else self._purge
            await loop.run_in_executor(self._pool, work, job)
        except Exception as err:  # shown on the job's page; the console goes on
            job.error = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            log.exception("console: job %d failed", job.id)
        finally:
            job.finished_at = utcnow()
            log.info(
                "console: job %d %s: %d of %d %s",
                job.id,
                job.state,
                job.applied,
                job.total,
                "queued again" if job.action == "replay" else "purged",
            )

    def _replay(self, job: Job) -> None:
        """Queue one at a time; a dead letter gone meanwhile is counted, not replayed."""
        for position, dl_id in enumerate(job.ids, 1):
            if job._stop.is_set():
                job.stopped = True
                return
            asked = utcnow()
            if list(self._ops.replay_dead([dl_id], by=job.by)):
                job.applied += 1
                job.queued_at[dl_id] = asked
            job.done = position

    def _purge(self, job: Job) -> None:
        for i in range(0, job.total, PURGE_CHUNK):
            if job._stop.is_set():
                job.stopped = True
                return
            chunk = job.ids[i : i + PURGE_CHUNK]
            job.applied += self._ops.purge_dead(chunk)
            job.done += len(chunk)

    async def close(self) -> None:
        """Stop every job between two items and wait for it."""
        for job in self._jobs.values():
            job._stop.set()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._pool.shutdown(wait=True)
