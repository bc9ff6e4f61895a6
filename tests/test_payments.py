"""The ``payments`` table across worker runs, on SQLite and PostgreSQL.

Built only on ``tests.test_worker``'s delivery and burst-worker helpers and its fixtures, so it
holds whatever the worker's internals become.
"""

from __future__ import annotations

import json

import redis
from sqlalchemy import Engine

from shared.config import Settings
from shared.db import payments, webhook_events
from tests import test_worker

# test_worker's fixtures, under their own names: the database backends (the parametrised
# ``database_url``), the settings with the built-in payment handlers and the configured engine
state = test_worker.state
settings = test_worker.settings
engine = test_worker.engine
deliver = test_worker.deliver
run_worker = test_worker.run_worker
rows = test_worker.rows


def moncash(event_id: str, status: str, reference: str, amount: int) -> bytes:
    doc = {"id": event_id, "event": status, "reference": reference, "amount": amount}
    return json.dumps(doc).encode()


def test_the_same_status_again_in_a_later_run_keeps_the_first_event(
    redis_client: redis.Redis, settings: Settings, engine: Engine
) -> None:
    # Given a payment completed by one event, applied by one worker run
    first = moncash("evt_a", "payment.completed", "R", 100)
    deliver(redis_client, settings, "moncash", body=first)
    run_worker(redis_client, settings)
    # When another event with the same status for the same payment comes in a later run
    second = moncash("evt_b", "payment.completed", "R", 999)
    deliver(redis_client, settings, "moncash", body=second)
    run_worker(redis_client, settings)
    # Then both events are recorded, and the payment still holds the first one's amount and id
    assert sorted(e["event_id"] for e in rows(engine, webhook_events)) == ["evt_a", "evt_b"]
    [payment] = rows(engine, payments)
    assert (payment["reference"], payment["status"]) == ("R", "completed")
    assert (float(payment["amount"]), payment["event_id"]) == (100.0, "evt_a")
