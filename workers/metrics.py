"""Prometheus metrics of a worker process (served by ``hookline worker --metrics-port``)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram


@dataclass
class WorkerMetrics:
    registry: CollectorRegistry
    events: Counter
    handler_seconds: Histogram

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
        )
