"""``hookline worker`` on a sharded deployment: one worker process per shard it serves.

RQ names its keys from ``RQ_KEY_PREFIX``, read once when a process imports RQ; a shard's keys
are RQ's names under the shard's prefix (:mod:`shared.keys`). So each shard is served by a
process of its own, started with the shard's prefix: RQ's own loop, registries, scheduler and
commands run in it unchanged, on a client of the shard's primary. One process per shard also
means no shard waits for another: a flood on one leaves the others' workers free.

This process only starts them, passes SIGTERM and SIGINT on (each finishes its batch), and
ends when they have: with the first failing child's status, after stopping the others (a
supervisor, systemd or Kubernetes restarts the whole), or 0. With ``--metrics-port`` the
children count into prometheus-client's multiprocess folder and this process serves the sum.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

from hookline.exits import EXIT_USAGE
from shared import keys

log = logging.getLogger("hookline.worker")

#: how long the children have to finish their batch once asked to stop, before SIGKILL
STOP_GRACE_SECONDS = 60
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: a shard's worker that died is started again after this long
RESTART_SECONDS = 1.0


def _die_with_parent() -> None:
    """In the child: on Linux, get SIGTERM if this process dies (even by kill -9), so no
    shard's worker is left running alone."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def run(
    shards: Sequence[keys.Shard],
    worker_args: Sequence[str],
    *,
    burst: bool = False,
    metrics_port: int | None = None,
    ready: Callable[[], bool] | None = None,
) -> int:
    """Run a worker process for each of ``shards`` (``hookline worker`` with
    ``worker_args``) until they end; the exit status. A child that dies while the others
    run is started again after :data:`RESTART_SECONDS` (its jobs are recovered as any dead
    worker's are; one stopped alone, by a signal of its own, too: a shard is never left
    without its worker), unless it stopped on a usage or configuration error (status 2) or
    this is a ``--burst`` run: then the others are stopped and its status is this one's."""
    folder = tempfile.mkdtemp(prefix="hookline-metrics-") if metrics_port else None
    children: dict[int, subprocess.Popen[bytes]] = {}
    stopping = False

    def stop(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True
        for child in children.values():
            if child.poll() is None:
                child.send_signal(signum)

    def start(shard: keys.Shard) -> subprocess.Popen[bytes]:
        env = {**os.environ, **shard.child_env()}
        if folder:
            env[MULTIPROC_ENV] = folder
        argv = [sys.executable, "-m", "hookline.cli", "worker", *worker_args]
        argv += ["--shards", str(shard.index)]
        # a process group of its own: a terminal's Ctrl-C (sent to the whole foreground group)
        # reaches this process only, which passes it on once (RQ takes a second SIGINT a
        # second later for a cold shutdown, abandoning the batch)
        return subprocess.Popen(argv, env=env, process_group=0, preexec_fn=_die_with_parent)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    server = None
    status = 0
    try:
        if metrics_port:
            server = _serve_metrics(metrics_port, folder, ready)
        for shard in shards:
            children[shard.index] = start(shard)
        log.info(
            "serving shards %s, one worker process each", ",".join(str(s.index) for s in shards)
        )
        while any(child.poll() is None for child in children.values()):
            time.sleep(0.2)
            for shard in shards:
                code = children[shard.index].poll()
                if code is None:
                    continue
                # what it left behind: RQ's scheduler is a process of its own, forked by the
                # worker, that outlives a worker killed with kill -9 (holding the scheduler
                # lock, heartbeating for ever); a child's process group is its own
                _kill_group(children[shard.index])
                if stopping or (code == 0 and burst):
                    continue
                if burst or code == EXIT_USAGE:
                    log.error(
                        "the worker of shard %d exited with status %d: stopping the others",
                        shard.index,
                        code,
                    )
                    status = code if code > 0 else 1
                    stop(signal.SIGTERM, None)
                    continue
                log.error(
                    "the worker of shard %d exited with status %d: starting it again",
                    shard.index,
                    code,
                )
                time.sleep(RESTART_SECONDS)
                if not stopping:
                    children[shard.index] = start(shard)
        for child in children.values():
            code = child.wait()
            if code > 0 and not status:
                status = code
        return status
    finally:
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for child in children.values():
            if child.poll() is None:
                child.terminate()
        for child in children.values():
            try:
                child.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
            _kill_group(child)
        if server is not None:
            server.shutdown()
        if folder:
            shutil.rmtree(folder, ignore_errors=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _kill_group(child: subprocess.Popen[bytes]) -> None:
    """SIGKILL to what is left in an exited child's process group."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.pid, signal.SIGKILL)


def _serve_metrics(port: int, folder: str | None, ready: Callable[[], bool] | None) -> Any:
    """The children's metrics, added up (prometheus-client's multiprocess collector)."""
    os.environ[MULTIPROC_ENV] = folder or ""
    from prometheus_client import CollectorRegistry, multiprocess

    from workers import metrics

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return metrics.serve(port, registry, ready or (lambda: True))
