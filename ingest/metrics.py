"""Prometheus metrics of the ingress, on a registry of its own (one per app, so tests and
several apps in one process do not collide)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram


@dataclass(frozen=True)
class SourceMetrics:
    """One source's counters (label children of :class:`IngestMetrics`'s)."""

    received: Counter
    accepted: Counter
    duplicates: Counter


@dataclass
class IngestMetrics:
    registry: CollectorRegistry
    received: Counter
    accepted: Counter
    duplicates: Counter
    rejected: Counter
    enqueue_seconds: Histogram

    def __post_init__(self) -> None:
        self._sources: dict[str, SourceMetrics] = {}

    def source(self, name: str) -> SourceMetrics:
        """The counters of one source, their label children looked up once."""
        found = self._sources.get(name)
        if found is None:
            found = self._sources[name] = SourceMetrics(
                received=self.received.labels(name),
                accepted=self.accepted.labels(name),
                duplicates=self.duplicates.labels(name),
            )
        return found

    @classmethod
    def create(cls) -> IngestMetrics:
        r = CollectorRegistry()
        return cls(
            registry=r,
            received=Counter(
                "hookline_ingest_received", "Webhook requests received", ["source"], registry=r
            ),
            accepted=Counter(
                "hookline_ingest_accepted", "Events claimed and queued", ["source"], registry=r
            ),
            duplicates=Counter(
                "hookline_ingest_duplicates",
                "Deliveries of an already claimed event",
                ["source"],
                registry=r,
            ),
            rejected=Counter(
                "hookline_ingest_rejected",
                "Requests refused, by reason",
                ["source", "reason"],
                registry=r,
            ),
            enqueue_seconds=Histogram(
                "hookline_ingest_enqueue_seconds",
                "Claim-and-enqueue round trip to Redis",
                buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
                registry=r,
            ),
        )
