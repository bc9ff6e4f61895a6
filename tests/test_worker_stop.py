"""How a worker stops, in process on a real Redis: the moments a stop used to miss or wait a
minute for, forced to happen every time (``tests/test_processes.py`` stops real worker
processes, burst and SIGTERM, where those moments come by chance)."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from rq import Queue

from shared import eventlog
from shared.rqcompat import JobSerializer
from tests.helpers import make_settings
from tests.processes import wait_until
from workers import runtime
from workers.worker import EventWorker, queues_for

#: a stop takes milliseconds here; the old one waited RQ's 60 s listener timeout or forever
STOP_SECONDS = 10


@pytest.fixture
def own_signals() -> Iterator[None]:
    """The test process's signal handlers as they were, whatever RQ's worker installed."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def test_a_stop_is_not_held_by_the_listener_reading_the_unsubscribe_reply_first(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a worker with RQ's command listener thread running
    queue = Queue("stop-test", connection=redis_client, serializer=JobSerializer)
    worker = EventWorker([queue], connection=redis_client)
    worker.subscribe()
    pubsub: Any = worker.pubsub
    listener: Any = worker.pubsub_thread
    send_unsubscribe = pubsub.unsubscribe

    def unsubscribe_and_let_the_listener_read_the_reply(*args: Any) -> Any:
        sent = send_unsubscribe(*args)
        wait_until(lambda: not pubsub.subscribed, 5, "the listener reading the reply")
        time.sleep(0.2)  # and going round its loop again
        return sent

    # When the stop's UNSUBSCRIBE is answered and read before the stopping thread goes on
    # (what a busy machine's scheduler did to about one stop in two)
    monkeypatch.setattr(pubsub, "unsubscribe", unsubscribe_and_let_the_listener_read_the_reply)
    stopping = threading.Thread(target=worker.unsubscribe, daemon=True)
    started = time.monotonic()
    stopping.start()
    stopping.join(STOP_SECONDS)
    # Then the stop ends at once, the listener with it
    assert not stopping.is_alive(), "the stop waited for the listener's timeout (60 s)"
    assert not listener.is_alive()
    print(f"\nstopped in {time.monotonic() - started:.2f} s")


def test_sigterm_while_the_worker_prunes_the_event_log_stops_it(
    redis_url: str, sqlite_url: str, monkeypatch: pytest.MonkeyPatch, own_signals: None
) -> None:
    # Given a worker starting on an empty queue, whose first maintenance round prunes the
    # event log
    settings = make_settings(redis_url, sqlite_url)
    runtime.configure(settings)
    client = redis.Redis.from_url(redis_url)
    worker = EventWorker(queues_for(settings, [], client), connection=client)
    pruned = threading.Event()

    def prune_as_sigterm_arrives(*_args: Any, **_kwargs: Any) -> int:
        pruned.set()
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.5)  # RQ's handler runs here, in the main thread
        return 0

    monkeypatch.setattr(eventlog, "prune", prune_as_sigterm_arrives)
    # (a second SIGTERM later is RQ's cold stop: it ends a worker that ignored the first)
    second = threading.Timer(STOP_SECONDS, os.kill, (os.getpid(), signal.SIGTERM))
    # When SIGTERM arrives while it prunes
    second.start()
    started = time.monotonic()
    try:
        worker.work(logging_level="WARNING")
    except SystemExit:
        pytest.fail("the worker went on after SIGTERM: only a second one stopped it")
    finally:
        second.cancel()
        client.close()
    # Then it stops, warm, at once
    assert pruned.is_set() and worker.stopping
    assert time.monotonic() - started < STOP_SECONDS
