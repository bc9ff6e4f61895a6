"""Prometheus metrics of the ingress, on a registry of its own (one per app, so tests and
several apps in one process do not collide)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram


@dataclass
class IngestMetrics:
    registry: CollectorRegistry
    received: Counter
    accepted: Counter
    duplicates: Counter
    rejected: Counter
    enqueue_seconds: Histogram

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
