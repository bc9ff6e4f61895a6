"""``hookline serve --processes N``: N ingress processes on one port, under gunicorn's arbiter
with aiohttp's own gunicorn worker (uvloop).

Gunicorn does what a supervisor must: one listening socket shared by the processes, a process
that dies is started again, SIGTERM stops them all after the requests in flight are answered
(``graceful_timeout``). ``/metrics`` adds up every process's counters: prometheus-client's
multiprocess mode, its files in a folder of this run's own, removed at the end (the gauges read
from Redis are the answering process's reading: see :mod:`ingest.metrics`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Awaitable, Callable
from typing import Any

from gunicorn.app.base import BaseApplication

from shared import logs
from shared.config import Settings

#: seconds SIGTERM gives the requests in flight (answers are due within 5 s)
GRACEFUL_SECONDS = 10
#: where prometheus-client keeps the processes' metrics (its own variable)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def resolve(processes: str) -> int:
    """``auto`` is one per core this process may use; else a positive number."""
    if processes == "auto":
        return max(1, len(os.sched_getaffinity(0)))
    count = int(processes)
    if count < 1:
        raise ValueError("--processes must be auto or a number of 1 or more")
    return count


class IngressProcesses(BaseApplication):  # type: ignore[misc]
    """A gunicorn application serving hookline's ingress."""

    def __init__(self, settings: Settings, host: str, port: int, processes: int) -> None:
        self.settings = settings
        self.options = {
            "bind": f"{host}:{port}",
            "workers": processes,
            "worker_class": "aiohttp.GunicornUVLoopWebWorker",
            "graceful_timeout": GRACEFUL_SECONDS,
            "timeout": 30,
            "keepalive": 75,
            "proc_name": "hookline-ingress",
            "child_exit": _child_exit,
        }
        logconfig = logs.gunicorn_config(settings.logging.format)
        if logconfig is not None:  # the arbiter's and the processes' lines in JSON too
            self.options["logconfig_dict"] = logconfig
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Callable[[], Awaitable[Any]]:
        settings = self.settings

        async def runner() -> Any:
            # in each process, after the fork: the app and aiohttp's runner with hookline's
            # own server options (lingering cut short, the access log without headers)
            from aiohttp import web

            from ingest.app import access_log_options, create_app

            return web.AppRunner(create_app(settings), **access_log_options(settings))

        return runner


def _child_exit(_server: Any, worker: Any) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]


def run(settings: Settings, host: str, port: int, processes: int) -> None:
    """Serve until SIGTERM/SIGINT; the metrics folder is made before any process imports
    prometheus-client, and removed after the last one exits."""
    folder = tempfile.mkdtemp(prefix="hookline-metrics-")
    os.environ[MULTIPROC_ENV] = folder
    try:
        IngressProcesses(settings, host, port, processes).run()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
