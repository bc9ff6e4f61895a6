"""A small open-loop HTTP/1.1 load generator for fixed-rate runs (wrk has no fixed rate).

Requests are pre-built bytes sent over ``connections`` keep-alive connections on a uvloop
loop; the parser reads only the status line and ``Content-Length``, so the client costs far
less CPU than an aiohttp client on this 2-core machine. The schedule is open loop: request i
is due at ``start + i / rate`` whatever happened to the others. Two latencies are kept:

- ``latency``: from when the request was dispatched (due, and the scheduler got to it) to the
  last byte of the answer, including any wait for a free connection (server-caused queueing);
- ``latency_from_due``: from the ideal due time, which also counts the client's own timer
  lateness (an upper bound, free of coordinated omission).
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import uvloop
from common import percentile


class _Conn(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[int] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        length = 0
        head = bytes(self.buf[:end])
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
                break
        if len(self.buf) < end + 4 + length:
            return
        status = int(head[9:12])
        del self.buf[: end + 4 + length]
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(status)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError(f"connection lost: {exc!r}"))

    async def send(self, raw: bytes) -> int:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(raw)
        return await self.waiter


@dataclass
class Outcome:
    """One request: perf_counter times (seconds) and the wall-clock time of the answer."""

    due: float
    dispatched: float
    answered: float
    answered_wall: float
    status: int


async def _run(
    host: str,
    port: int,
    requests: Sequence[bytes],
    rate: float,
    connections: int,
    timeout: float,
) -> list[Outcome | None]:
    loop = asyncio.get_running_loop()
    pool: asyncio.Queue[_Conn] = asyncio.Queue()
    conns: list[_Conn] = []
    for _ in range(connections):
        _t, proto = await loop.create_connection(_Conn, host, port)
        conns.append(proto)
        pool.put_nowait(proto)
    results: list[Outcome | None] = [None] * len(requests)
    wall0, pc0 = time.time(), time.perf_counter()

    async def one(i: int, due: float, raw: bytes) -> None:
        dispatched = time.perf_counter()
        conn = await pool.get()
        try:
            status = await conn.send(raw)
        except ConnectionError:
            status = 0
        answered = time.perf_counter()
        pool.put_nowait(conn)
        results[i] = Outcome(due, dispatched, answered, wall0 + (answered - pc0), status)

    tasks: set[asyncio.Task[None]] = set()
    start = time.perf_counter() + 0.05
    interval = 1.0 / rate
    i = 0
    n = len(requests)
    while i < n:
        now = time.perf_counter()
        # dispatch everything due (the timer may wake late); then sleep until the next one
        while i < n and start + i * interval <= now:
            task = asyncio.create_task(one(i, start + i * interval, requests[i]))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            i += 1
        if i < n:
            await asyncio.sleep(max(0.0, start + i * interval - time.perf_counter()))
    if tasks:
        await asyncio.wait(tasks, timeout=timeout)
    for conn in conns:
        if conn.transport is not None:
            conn.transport.close()
    return results


def run_paced(
    host: str,
    port: int,
    requests: Sequence[bytes],
    rate: float,
    connections: int = 32,
    timeout: float = 30.0,
) -> list[Outcome | None]:
    """Send ``requests`` at ``rate`` per second (open loop); ``None`` for a request that got
    no answer within ``timeout`` seconds after the last was sent. GC is paused meanwhile so
    the client's own collections do not show up as server latency."""
    gc.collect()
    gc.disable()
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(_run(host, port, requests, rate, connections, timeout))
    finally:
        gc.enable()


def pct(values: Sequence[float], p: float) -> float:
    """The project's one percentile (``tests.processes.percentile``, nearest rank), NaN when
    there are no values."""
    value = percentile(values, p)
    return float("nan") if value is None else value


def summarize(outcomes: Sequence[Outcome | None], duration_hint: float) -> dict[str, object]:
    done = [o for o in outcomes if o is not None]
    lat = [(o.answered - o.dispatched) * 1000 for o in done]
    lat_due = [(o.answered - o.due) * 1000 for o in done]
    statuses: dict[str, int] = {}
    for o in done:
        statuses[str(o.status)] = statuses.get(str(o.status), 0) + 1
    span = (max(o.answered for o in done) - min(o.due for o in done)) if done else duration_hint

    def pcts(xs: list[float]) -> dict[str, float]:
        return {
            "p50": round(pct(xs, 50), 3),
            "p90": round(pct(xs, 90), 3),
            "p99": round(pct(xs, 99), 3),
            "p999": round(pct(xs, 99.9), 3),
            "max": round(max(xs), 3) if xs else float("nan"),
        }

    return {
        "sent": len(outcomes),
        "answered": len(done),
        "statuses": statuses,
        "achieved_rps": round(len(done) / span, 1) if span > 0 else 0.0,
        "latency_ms": pcts(lat),
        "over_20ms": sum(1 for x in lat if x > 20.0),
        "latency_from_due_ms": pcts(lat_due),
    }
