"""Prometheus metrics of a worker process (served by ``hookline worker --metrics-port``)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram

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
