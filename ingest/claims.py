"""Claiming events in Redis: the claim-and-enqueue script of every request that reaches this
point in one turn of the event loop goes to Redis in one pipeline.

A request still gets its answer only after its own claim is in Redis (and, with
``ack_replicas`` / ``ack_fsync``, on the replicas or on disk: one WAIT / WAITAOF at the end of
the pipeline covers every claim in it, as they were written on the same connection before it).
What changes is the number of round trips under load: one per loop turn instead of one per
request, which is most of what a request costs the ingress and Redis.

The script is sent by its SHA (``EVALSHA``); Redis forgets scripts on restart, so a
``NOSCRIPT`` answer loads it and sends again what failed.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

from shared.config import IngestSettings


@dataclass(frozen=True)
class Claimed:
    """The script's reply for one event, and whether it is as durable as configured."""

    reply: Any
    acknowledged: bool


class Claims:
    """Sends the claims of one loop turn in one pipeline."""

    def __init__(self, redis: aioredis.Redis, script: str, ingest: IngestSettings) -> None:
        self.redis = redis
        self.script = script
        self.sha = hashlib.sha1(script.encode(), usedforsecurity=False).hexdigest()
        self.ingest = ingest
        self._pending: list[tuple[Sequence[Any], asyncio.Future[Claimed]]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def claim(self, keys: Sequence[str], args: Sequence[Any]) -> Claimed:
        """Claim one event; resolves once its claim is in Redis (raises what Redis raised, or
        ``TimeoutError`` after ``redis_timeout_seconds``)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Claimed] = loop.create_future()
        if not self._pending:
            # after the callbacks already due in this turn: the claims they make join this one
            loop.call_soon(self._send_pending)
        self._pending.append(((len(keys), *keys, *args), future))
        return await future

    def _send_pending(self) -> None:
        batch, self._pending = self._pending, []
        task = asyncio.ensure_future(self._send(batch))
        self._tasks.add(task)  # keep a reference until it is done
        task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: list[tuple[Sequence[Any], asyncio.Future[Claimed]]]) -> None:
        try:
            # one deadline for the whole pipeline bounds each of its requests' wait (a
            # request joins a pipeline in the loop turn it asks): none waits longer than
            # redis_timeout_seconds, and a deadline is not set up per request
            async with asyncio.timeout(self.ingest.redis_timeout_seconds):
                replies, acked = await self._round_trip([call for call, _ in batch])
                missing = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
                if missing:  # Redis restarted and forgot the script: load it, send those again
                    await self.redis.script_load(self.script)
                    again, acked_again = await self._round_trip([batch[i][0] for i in missing])
                    for i, reply in zip(missing, again, strict=True):
                        replies[i] = reply
                    acked = acked and acked_again
        except Exception as err:
            for _, future in batch:
                if not future.done():
                    future.set_exception(err)
            return
        for (_, future), reply in zip(batch, replies, strict=True):
            if future.done():  # its request gave up waiting (and answered 503)
                continue
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(Claimed(reply, acked))

    async def _round_trip(self, calls: Sequence[Sequence[Any]]) -> tuple[list[Any], bool]:
        ingest = self.ingest
        async with self.redis.pipeline(transaction=False) as pipe:
            for call in calls:
                pipe.execute_command("EVALSHA", self.sha, *call)
            if ingest.ack_fsync:
                pipe.execute_command(
                    "WAITAOF", 1, ingest.ack_replicas, ingest.ack_replicas_timeout_ms
                )
            elif ingest.ack_replicas:
                pipe.execute_command("WAIT", ingest.ack_replicas, ingest.ack_replicas_timeout_ms)
            replies = await pipe.execute(raise_on_error=False)
        if ingest.ack_fsync:
            local, on_replicas = (int(x) for x in replies.pop())
            return replies, local >= 1 and on_replicas >= ingest.ack_replicas
        if ingest.ack_replicas:
            return replies, int(replies.pop()) >= ingest.ack_replicas
        return replies, True
