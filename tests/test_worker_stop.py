"""How a worker stops, in process on a real Redis: the moments a stop used to miss or wait a
minute for, forced to happen every time (``tests/test_processes.py`` stops real worker
processes, burst and SIGTERM, where those moments come by chance)."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import redis
from redis.client import PubSub
from rq.exceptions import StopRequested
from sqlalchemy import func, select

from shared import eventlog
from shared.db import webhook_events
from tests.helpers import make_settings
from tests.processes import wait_until
from tests.test_worker import deliver
from workers import runtime
from workers.worker import EventWorker, drain, queues_for

#: a stop takes milliseconds here; the old one waited RQ's 60 s listener timeout or forever
STOP_SECONDS = 10


def count(engine: Any, table: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


@pytest.fixture
def own_signals() -> Iterator[None]:
    """The test process's signal handlers as they were, whatever RQ's worker installed."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


@pytest.fixture
def listener_reads_the_reply_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every UNSUBSCRIBE in this test is answered, and the answer read by RQ's command listener
    thread (which then goes round its loop again), before the stopping thread goes on: the
    schedule a busy machine gave about one stop in two."""
    send_unsubscribe = PubSub.unsubscribe

    def unsubscribe_and_let_the_listener_read_the_reply(self: PubSub, *args: Any) -> Any:
        sent = send_unsubscribe(self, *args)
        wait_until(lambda: not self.subscribed, 5, "the listener reading the reply")
        time.sleep(0.2)
        return sent

    monkeypatch.setattr(PubSub, "unsubscribe", unsubscribe_and_let_the_listener_read_the_reply)


def _stop_requested(_signum: int, _frame: Any) -> None:
    raise StopRequested()


def _sigterm_once_idle(worker: EventWorker) -> None:
    wait_until(lambda: worker.get_state() == "idle", 30, "the worker waiting for work")
    os.kill(os.getpid(), signal.SIGTERM)


@contextmanager
def second_sigterm_after(seconds: float) -> Iterator[None]:
    """A SIGTERM ``seconds`` from now unless the block is over by then: it ends a worker that
    waits for something it should not (RQ's cold stop, or its warm one if none came before)."""
    signal.signal(signal.SIGTERM, _stop_requested)  # until RQ's worker installs its own
    timer = threading.Timer(seconds, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    try:
        yield
    except (SystemExit, StopRequested):
        pytest.fail(f"the worker was still stopping {seconds} s later: a signal ended it")
    finally:
        timer.cancel()


def test_a_burst_worker_returns_once_the_queue_is_empty_whoever_reads_the_unsubscribe_reply(
    redis_url: str, sqlite_url: str, listener_reads_the_reply_first: None, own_signals: None
) -> None:
    # Given queued events
    settings = make_settings(redis_url, sqlite_url)
    client = redis.Redis.from_url(redis_url)
    for i in range(20):
        deliver(client, settings, "moncash", n=i)
    engine = runtime.configure(settings).engine
    worker = EventWorker(queues_for(settings, [], client), connection=client)
    # When a burst worker drains them (its listener reading the reply to its UNSUBSCRIBE first)
    started = time.monotonic()
    with second_sigterm_after(STOP_SECONDS):
        drain(worker, worker.queues)
    # Then it returns at once, every event applied
    assert time.monotonic() - started < STOP_SECONDS
    assert count(engine, webhook_events) == 20
    assert not worker.pubsub_thread.is_alive()  # type: ignore[attr-defined]
    client.close()


def test_sigterm_stops_an_idle_worker_at_once_whoever_reads_the_unsubscribe_reply(
    redis_url: str, sqlite_url: str, listener_reads_the_reply_first: None, own_signals: None
) -> None:
    # Given a worker waiting for work
    settings = make_settings(redis_url, sqlite_url)
    runtime.configure(settings)
    client = redis.Redis.from_url(redis_url)
    worker = EventWorker(queues_for(settings, [], client), connection=client)
    # When it gets SIGTERM (its listener reading the reply to its UNSUBSCRIBE first)
    threading.Thread(target=_sigterm_once_idle, args=(worker,), daemon=True).start()
    with second_sigterm_after(STOP_SECONDS):
        worker.work(logging_level="WARNING")
    # Then it stops, warm, at once
    assert worker.stopping
    client.close()


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
    # When SIGTERM arrives while it prunes
    started = time.monotonic()
    with second_sigterm_after(STOP_SECONDS):
        worker.work(logging_level="WARNING")
    client.close()
    # Then it stops, warm, at once
    assert pruned.is_set() and worker.stopping
    assert time.monotonic() - started < STOP_SECONDS
