"""What a worker process holds once: settings, the database engine and the handler registry.

``hookline worker`` configures it before taking jobs; a job run by a plain ``rq worker``
(ops may use RQ's own tools) loads the configuration from ``$HOOKLINE_CONFIG`` instead.
"""

from __future__ import annotations

import importlib
import os
import sys
import threading
from dataclasses import dataclass

from sqlalchemy import Engine

from shared import telemetry
from shared.config import Settings, load_settings
from shared.db import make_engine
from shared.errors import ConfigError
from workers import builtin
from workers.handlers import REGISTRY, Registry
from workers.metrics import WorkerMetrics

#: how long a worker's statement waits for a row another transaction holds. Two workers on one
#: event wait for each other for milliseconds; a transaction held open longer is a frozen worker
#: (SIGSTOP, a paused VM): its successor gives up, the event is retried after its backoff, and
#: the other events of the batch are applied meanwhile, instead of all waiting for the thaw.
LOCK_TIMEOUT_MS = 5000


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    registry: Registry
    metrics: WorkerMetrics


_lock = threading.Lock()
_current: Runtime | None = None


def configure(settings: Settings, engine: Engine | None = None) -> Runtime:
    """Load handler modules and open the engine; replaces any earlier runtime."""
    global _current
    load_handlers(settings)
    telemetry.setup(settings, "hookline-worker")
    if settings.worker.builtin_handlers and not REGISTRY.by_scheme:
        builtin.register(REGISTRY)
    with _lock:
        if (
            _current is not None
            and engine is None
            and _current.settings.database_url == settings.database_url
        ):
            engine = _current.engine
        _current = Runtime(
            settings=settings,
            engine=engine or make_engine(settings.database_url, lock_timeout_ms=LOCK_TIMEOUT_MS),
            registry=REGISTRY,
            metrics=_current.metrics if _current else WorkerMetrics.create(),
        )
        return _current


def load_handlers(settings: Settings) -> None:
    """Import the handler modules of ``[worker] handlers``. A module that fails to import, for
    whatever reason (a missing module, a syntax or indentation error, an exception raised at
    import), is a ``ConfigError`` naming the module and the error in one line, so
    ``hookline worker`` and ``hookline dev`` stop with that line instead of a traceback."""
    # handler modules usually live beside the configuration (or the current directory), as
    # `python -m` would find them
    folders = [os.getcwd()] + ([str(settings.path.resolve().parent)] if settings.path else [])
    for folder in folders:
        if settings.worker.handlers and folder not in sys.path:
            sys.path.insert(0, folder)
    for module in settings.worker.handlers:
        try:
            importlib.import_module(module)
        except Exception as err:
            raise ConfigError(
                f"worker.handlers: cannot import {module!r}: {_one_line(err)}"
            ) from err


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:300]


def current() -> Runtime:
    with _lock:
        rt = _current
    return rt if rt is not None else configure(load_settings())
