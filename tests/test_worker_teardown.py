"""A worker that stops (a --burst worker done, SIGTERM) leaves at once, whatever RQ's pubsub
thread was doing (real Redis: the thread and its reads are redis-py's)."""

from __future__ import annotations

import time
from typing import Any

import redis
from rq import Queue

from shared.rqcompat import JobSerializer
from workers.worker import EventWorker


def test_a_worker_stops_listening_at_once_when_its_thread_read_the_unsubscribe_first(
    redis_client: redis.Redis,
) -> None:
    # Given a worker subscribed to its command channel
    worker = EventWorker(
        [Queue("hookline", connection=redis_client, serializer=JobSerializer)],
        connection=redis_client,
    )
    worker.subscribe()
    assert worker.pubsub is not None
    # whose pubsub thread gets the unsubscribe reply before anyone tells it to stop (the
    # race seen now and then: the thread then waits RQ's 60 s for a subscription)
    pubsub = worker.pubsub
    unsubscribe = pubsub.unsubscribe

    def unsubscribe_then_let_the_thread_read(*args: Any) -> Any:
        answer = unsubscribe(*args)
        time.sleep(0.5)
        return answer

    pubsub.unsubscribe = unsubscribe_then_let_the_thread_read  # type: ignore[method-assign]
    # When it unsubscribes
    started = time.monotonic()
    worker.unsubscribe()
    # Then its thread is gone in far less than RQ's 60 s
    assert time.monotonic() - started < 20
    assert not worker.pubsub_thread.is_alive()
