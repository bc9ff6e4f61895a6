"""What the processes write to stderr: ``[logging] format = "text"`` (a line of text per
record) or ``"json"`` (one JSON object per line, for log shippers).

A JSON line has ``time`` (UTC, ISO 8601 with milliseconds), ``level``, ``logger`` and
``message``; and, where known, ``source``, ``event_id``, ``job_id`` and ``trace_id``, taken from
the record (``extra=``), else from the event being handled (:func:`event_context`), else, for
``trace_id``, from the current span when traces are on. An exception is one more field,
``exception``, its traceback in one string: the object stays on one line.

Every logger goes through the root handler set here: hookline's own, aiohttp's access log,
RQ's (its ``setup_loghandlers`` adds no handler of its own when one is already effective),
gunicorn's under ``serve --processes N`` (:func:`gunicorn_config`), Python's warnings, and an
exception nothing caught.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any

import orjson

#: the fields a line may carry about the event it concerns
EVENT_FIELDS = ("source", "event_id", "job_id", "trace_id")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

#: the event being handled in this thread or task (a worker's job, an ingress request)
_event: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "hookline_log_event", default=None
)
#: the current trace id, when traces are on (set by :mod:`shared.telemetry`; nothing here
#: imports OpenTelemetry)
trace_id_of_current_span: Callable[[], str | None] | None = None


@contextlib.contextmanager
def event_context(**fields: str | None) -> Iterator[None]:
    """Every line logged inside carries these fields (``None`` values are left out)."""
    token = _event.set({k: v for k, v in fields.items() if v is not None})
    try:
        yield
    finally:
        _event.reset(token)


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": _iso(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        context = _event.get()
        for name in EVENT_FIELDS:
            value = getattr(record, name, None)
            if value is None and context is not None:
                value = context.get(name)
            if value is None and name == "trace_id" and trace_id_of_current_span is not None:
                value = trace_id_of_current_span()
            if value is not None:
                out[name] = str(value)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(out, default=str).decode()


def _iso(created: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created % 1 * 1000):03d}Z"


def formatter(fmt: str) -> logging.Formatter:
    return JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT)


def configure(fmt: str, level: int = logging.INFO) -> None:
    """One handler on the root logger, writing ``fmt`` to stderr. In JSON, Python's warnings
    and uncaught exceptions (main thread or not) become records too, so nothing else reaches
    stderr as free text."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_hookline", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler._hookline = True  # type: ignore[attr-defined]
    handler.setFormatter(formatter(fmt))
    root.addHandler(handler)
    root.setLevel(level)
    if fmt == "json":
        logging.captureWarnings(True)
        sys.excepthook = _log_uncaught
        threading.excepthook = _log_uncaught_in_thread


def _log_uncaught(
    kind: type[BaseException], value: BaseException, tb: TracebackType | None
) -> None:
    logging.getLogger("hookline").critical("uncaught exception", exc_info=(kind, value, tb))


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    logging.getLogger("hookline").critical(
        "uncaught exception in thread %s",
        args.thread.name if args.thread else "?",
        exc_info=(args.exc_type, args.exc_value or args.exc_type(), args.exc_traceback),
    )


def gunicorn_config(fmt: str) -> dict[str, Any] | None:
    """gunicorn's ``logconfig_dict`` for ``serve --processes N``: its own loggers (the
    arbiter's lines) through one JSON handler on stderr; ``None`` in text, gunicorn's own."""
    if fmt != "json":
        return None
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "root": {"level": "INFO", "handlers": ["stderr"]},
        "loggers": {
            "gunicorn.error": {"level": "INFO", "handlers": [], "propagate": True},
            "gunicorn.access": {"level": "INFO", "handlers": [], "propagate": True},
        },
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stderr",
            }
        },
        "formatters": {"json": {"()": "shared.logs.JsonFormatter"}},
    }


def event_fields(envelope: Any, job_id: str | None = None) -> dict[str, str | None]:
    """The fields of a line about ``envelope`` (an :class:`~shared.envelope.Envelope`)."""
    return {
        "source": envelope.source,
        "event_id": envelope.event_id,
        "job_id": job_id,
        "trace_id": envelope.trace_id,
    }
