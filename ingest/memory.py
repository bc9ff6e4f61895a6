"""Shedding load before Redis is full.

Redis at ``maxmemory`` (``noeviction``) refuses writes: the ingress then answers 503 +
Retry-After and acknowledges nothing (the claim script writes nothing it cannot keep). But the
workers need a little room too, to register the events they take before they free them, and
so does the console. So the ingress stops accepting a little before Redis is full:
``[ingest] shed_at_memory_percent`` (95 by default) of ``maxmemory``, read from
``INFO memory`` once a second per process, not per request; in between, each event this
process queues adds an estimate of its size, so a burst does not run past the mark before the
next reading. Events already queued drain; once Redis is below the mark again the ingress
accepts again.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis

#: bytes of a queued event's job beside its body (measured: ``bench/footprint.py``)
QUEUED_EVENT_OVERHEAD = 3072


@dataclass
class MemoryGuard:
    """What the ingress last read of Redis's memory, and whether it sheds load."""

    percent: int
    used: int = 0
    maximum: int = 0
    #: Redis refused a write for want of memory since the last reading
    refused: bool = False

    @property
    def shedding(self) -> bool:
        """True once Redis's memory is past the mark (or Redis said it is full)."""
        if self.refused:
            return True
        if not self.percent or not self.maximum:
            return False
        return self.used * 100 >= self.maximum * self.percent

    async def refresh(self, client: aioredis.Redis) -> None:
        info = await client.info("memory")
        self.used = int(info.get("used_memory", 0))
        self.maximum = int(info.get("maxmemory", 0))
        self.refused = False

    def queued(self, body_bytes: int) -> None:
        """An event was queued: its job (the body in base64 and RQ's ~40 fields, ~3 KB) counts
        until the next reading says what Redis really holds."""
        self.used += body_bytes * 4 // 3 + QUEUED_EVENT_OVERHEAD

    def full(self) -> None:
        """Redis answered OOM: shed until the next reading says otherwise."""
        self.refused = True
