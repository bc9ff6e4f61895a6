"""Prometheus metrics of a worker process, and its health, served by ``hookline worker
--metrics-port``: ``/metrics``, ``/healthz`` (the process answers) and ``/readyz`` (Redis
answers too), for an orchestrator's probes."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Histogram, make_wsgi_app

#: from tens of milliseconds (a worker keeping up) to the last retries' hours of backoff
LAG_BUCKETS = (
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0,
)  # fmt: skip


@dataclass
class WorkerMetrics:
    registry: CollectorRegistry
    events: Counter
    handler_seconds: Histogram
    event_lag: Histogram

    @classmethod
    def create(cls) -> WorkerMetrics:
        r = CollectorRegistry()
        return cls(
            registry=r,
            events=Counter(
                "hookline_worker_events",
                "Events by outcome: processed, ignored, duplicate, retried, dead_lettered",
                ["source", "outcome"],
                registry=r,
            ),
            handler_seconds=Histogram(
                "hookline_worker_handler_seconds",
                "Time to parse and apply an event (the whole transaction)",
                ["source"],
                registry=r,
            ),
            event_lag=Histogram(
                "hookline_event_lag_seconds",
                "From the request's arrival at the ingress to the event's effects committed",
                ["source"],
                buckets=LAG_BUCKETS,
                registry=r,
            ),
        )


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, *_args: Any) -> None:  # no line per scrape or probe
        pass


def app(registry: CollectorRegistry, ready: Callable[[], bool]) -> Callable[..., Iterable[bytes]]:
    """The WSGI app: the probes, and the metrics on every other path (as prometheus-client's
    own server answers)."""
    metrics = make_wsgi_app(registry)

    def serve(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path in ("/healthz", "/readyz"):
            ok = path == "/healthz" or ready()
            status = "200 OK" if ok else "503 Service Unavailable"
            start_response(status, [("Content-Type", "application/json")])
            return [b'{"status": "ok"}' if ok else b'{"status": "unavailable", "redis": false}']
        return metrics(environ, start_response)  # type: ignore[no-any-return]

    return serve


def serve(port: int, registry: CollectorRegistry, ready: Callable[[], bool]) -> WSGIServer:
    """Serve :func:`app` on every interface's ``port`` from a daemon thread."""
    server = make_server("0.0.0.0", port, app(registry, ready), _Server, _QuietHandler)
    threading.Thread(target=server.serve_forever, daemon=True, name="metrics").start()
    return server
