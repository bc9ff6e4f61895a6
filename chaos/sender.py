"""A sender that behaves like a webhook provider.

At a steady rate it sends new events, each signed with its source's real scheme code at the
moment it goes out (a retry is signed afresh, as providers do). Among them: redeliveries of
earlier events, events delivered twice at the same moment, pairs of statuses for one MonCash
reference arriving out of order, events whose handler fails once, poison events, and slow
events (which give the fault injector a worker holding an open transaction).

Like a provider it retries an answer >= 500, a timeout or a broken connection after 5 s and
then 30 s (``retry_delays``), and gives up after that (the event is then "not acknowledged").
Every HTTP attempt is recorded with its latency; every event answered 202 or 200 is
acknowledged.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from shared.samples import sample
from shared.signatures import Scheme

#: provider retry schedule: first attempt, then after 5 s, then after 30 s
RETRY_DELAYS = (0.0, 5.0, 30.0)
CLIENT_TIMEOUT_SECONDS = 3.0

Key = tuple[str, str]


@dataclass(frozen=True)
class Mix:
    """Shares of ticks (one new event per tick) by kind, and the share of ticks that also
    redeliver an earlier event."""

    redeliver: float = 0.10
    twin: float = 0.01
    pair: float = 0.02
    flaky: float = 0.05
    poison: float = 0.005
    slow: float = 0.01


@dataclass
class EventSpec:
    source: str
    event_id: str
    kind: str  # moncash | slow | twin | pair_failed | pair_completed | flaky | poison
    body: bytes
    headers: dict[str, str]
    reference: str | None = None
    first_sent: float = 0.0

    @property
    def key(self) -> Key:
        return (self.source, self.event_id)


@dataclass
class Attempt:
    source: str
    event_id: str
    delivery: str  # first | redelivery | twin
    try_no: int
    t: float  # wall clock when the request started
    latency: float
    status: int | None
    error: str | None


@dataclass
class SenderResult:
    events: dict[Key, EventSpec] = field(default_factory=dict)
    attempts: list[Attempt] = field(default_factory=list)
    #: first acknowledgement per event: (wall clock of the answer, status)
    acked: dict[Key, tuple[float, int]] = field(default_factory=dict)
    #: deliveries given up after the last retry: (key, delivery kind)
    gave_up: list[tuple[Key, str]] = field(default_factory=list)
    #: answers that are neither 2xx nor retried (4xx): should never happen
    rejected: list[Attempt] = field(default_factory=list)
    started_at: float = 0.0
    stopped_sending_at: float = 0.0
    finished_at: float = 0.0
    ticks: int = 0


class Sender:
    """Runs in a thread of its own with its own event loop (:meth:`start`, :meth:`join`)."""

    def __init__(
        self,
        base_url: str,
        schemes: Mapping[str, Scheme],
        rate: float,
        duration: float,
        mix: Mix,
        seed: int,
        retry_delays: Sequence[float] = RETRY_DELAYS,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        #: when each try goes out, after the one before it (the first 0.0)
        self.retry_delays = tuple(retry_delays)
        self.schemes = schemes
        self.rate = rate
        self.duration = duration
        self.mix = mix
        self.rng = random.Random(seed)
        self.result = SenderResult()
        self.error: BaseException | None = None
        self._abort = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos-sender", daemon=True)
        self._n = 0
        self._sent: list[EventSpec] = []

    # -- thread plumbing -------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def abort(self) -> None:
        self._abort.set()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def send_for(self, seconds: float) -> None:
        """Send new events for ``seconds`` more from now, then only finish the retries (a run
        whose length depends on what it sees, once sending has started)."""
        self.duration = time.time() - self.result.started_at + seconds

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as err:  # reported by the harness
            self.error = err

    # -- building events -------------------------------------------------------------------

    def _next_n(self) -> int:
        self._n += 1
        return self._n

    def _moncash(
        self, kind: str, event: str = "payment.completed", ref: str | None = None
    ) -> EventSpec:
        n = self._next_n()
        overrides: dict[str, Any] = {"event": event}
        if ref is not None:
            overrides["reference"] = ref
        example = sample("moncash", time.time(), n, **overrides)
        doc = json.loads(example.body)
        if kind == "slow":
            doc["chaos"] = "slow"
        body = json.dumps(doc, separators=(",", ":")).encode()
        return EventSpec(
            "moncash", str(doc["id"]), kind, body, dict(example.headers), str(doc["reference"])
        )

    def _hmac_event(self, source: str, kind: str, directive: str) -> EventSpec:
        n = self._next_n()
        event_id = f"{source}_{n:012d}"
        doc = {
            "id": event_id,
            "type": f"chaos.{kind}",
            "chaos": directive,
            "created": int(time.time()),
        }
        body = json.dumps(doc, separators=(",", ":")).encode()
        return EventSpec(source, event_id, kind, body, {"Content-Type": "application/json"})

    def _sign(self, spec: EventSpec) -> dict[str, str]:
        scheme = self.schemes[spec.source]
        return {**spec.headers, **scheme.sign(spec.body, time.time(), event_id=spec.event_id)}

    # -- sending ---------------------------------------------------------------------------

    async def _main(self) -> None:
        timeout = aiohttp.ClientTimeout(total=CLIENT_TIMEOUT_SECONDS)
        connector = aiohttp.TCPConnector(limit=256)
        tasks: set[asyncio.Task[None]] = set()

        def spawn(coro: Any) -> None:
            task = asyncio.ensure_future(coro)
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            loop = asyncio.get_running_loop()
            self.result.started_at = time.time()
            start = loop.time()
            tick = 0
            while not self._abort.is_set():
                due = start + tick / self.rate
                if due - start >= self.duration:
                    break
                delay = due - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                self._tick(session, spawn)
                tick += 1
            self.result.ticks = tick
            self.result.stopped_sending_at = time.time()
            while tasks and not self._abort.is_set():
                await asyncio.wait(set(tasks), timeout=0.5)
            for task in list(tasks):
                task.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
        self.result.finished_at = time.time()

    def _tick(self, session: aiohttp.ClientSession, spawn: Any) -> None:
        m = self.mix
        r = self.rng.random()
        if r < m.poison:
            spec = self._hmac_event("poison", "poison", "poison")
            spawn(self._deliver(session, spec, "first"))
        elif r < m.poison + m.flaky:
            spec = self._hmac_event("flaky", "flaky", "fail_once")
            spawn(self._deliver(session, spec, "first"))
        elif r < m.poison + m.flaky + m.pair:
            ref = f"PAIR-{self._n + 1:012d}"
            failed = self._moncash("pair_failed", "payment.failed", ref)
            completed = self._moncash("pair_completed", "payment.completed", ref)
            # out of order: half the pairs send "failed" first, half "completed" first
            first, second = (failed, completed) if self.rng.random() < 0.5 else (completed, failed)
            spawn(self._deliver(session, first, "first"))
            spawn(self._deliver(session, second, "first", delay=self.rng.uniform(0.05, 0.5)))
            spec = second
            self._remember(first)
        elif r < m.poison + m.flaky + m.pair + m.twin:
            spec = self._moncash("twin")
            headers = self._sign(spec)  # one signature, two identical requests at once
            spawn(self._deliver(session, spec, "first", headers=headers))
            spawn(self._deliver(session, spec, "twin", headers=headers))
        elif r < m.poison + m.flaky + m.pair + m.twin + m.slow:
            spec = self._moncash("slow")
            spawn(self._deliver(session, spec, "first"))
        else:
            spec = self._moncash("moncash")
            spawn(self._deliver(session, spec, "first"))
        self._remember(spec)
        if self._sent and self.rng.random() < m.redeliver:
            now = time.time()
            earlier = [s for s in self._sent[-2000:] if 0 < s.first_sent < now - 1.0]
            if earlier:
                spawn(self._deliver(session, self.rng.choice(earlier), "redelivery"))

    def _remember(self, spec: EventSpec) -> None:
        if spec.key not in self.result.events:
            self.result.events[spec.key] = spec
            self._sent.append(spec)

    async def _deliver(
        self,
        session: aiohttp.ClientSession,
        spec: EventSpec,
        delivery: str,
        headers: dict[str, str] | None = None,
        delay: float = 0.0,
    ) -> None:
        if delay:
            await asyncio.sleep(delay)
        url = f"{self.base_url}/webhooks/{spec.source}"
        for try_no, wait in enumerate(self.retry_delays, start=1):
            if wait:
                await asyncio.sleep(wait)
            if self._abort.is_set():
                return
            sign = headers if (headers is not None and try_no == 1) else self._sign(spec)
            t = time.time()
            if delivery == "first" and try_no == 1:
                spec.first_sent = t
            started = time.perf_counter()
            status: int | None = None
            error: str | None = None
            try:
                async with session.post(url, data=spec.body, headers=sign) as resp:
                    await resp.read()
                    status = resp.status
            except TimeoutError:
                error = "timeout"
            except aiohttp.ClientError as err:
                error = type(err).__name__
            latency = time.perf_counter() - started
            attempt = Attempt(
                spec.source, spec.event_id, delivery, try_no, t, latency, status, error
            )
            self.result.attempts.append(attempt)
            if status in (200, 202):
                if spec.key not in self.result.acked:
                    self.result.acked[spec.key] = (t + latency, status)
                return
            if status is not None and status < 500:
                self.result.rejected.append(attempt)
                return
        self.result.gave_up.append((spec.key, delivery))
