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

from shared.config import Settings, load_settings
from shared.db import make_engine
from shared.errors import ConfigError
from workers import builtin
from workers.handlers import REGISTRY, Registry
from workers.metrics import WorkerMetrics


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
    # handler modules usually live beside the configuration, as `python -m` would find them
    if settings.worker.handlers and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    for module in settings.worker.handlers:
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise ConfigError(f"worker.handlers: cannot import {module!r}: {err}") from err
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
            engine=engine or make_engine(settings.database_url),
            registry=REGISTRY,
            metrics=_current.metrics if _current else WorkerMetrics.create(),
        )
        return _current


def current() -> Runtime:
    with _lock:
        rt = _current
    return rt if rt is not None else configure(load_settings())
