"""The payment fields at their edges, as a worker run leaves them: the payment row for a value
just inside each bound, the dead letter (with its reason, after one attempt) for one just
outside; and one batch of events for one payment, applied in one transaction.

MonCash events, run by hookline's worker on SQLite (the bounds are checked before any SQL;
tests/test_payments.py covers the database side on both backends). Built on
``tests.test_worker``'s delivery and burst-worker helpers.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import redis
from sqlalchemy import Engine

from shared.config import Settings
from shared.db import dead_letters, payments
from shared.envelope import Envelope
from tests import test_worker
from workers import runtime
from workers.effects import Delivery, apply_events

state = test_worker.state
settings = test_worker.settings
engine = test_worker.engine
deliver = test_worker.deliver
run_worker = test_worker.run_worker
rows = test_worker.rows

REFERENCE_ERROR = "PayloadError: reference must be a non-empty string of at most 255 characters"
NOT_A_NUMBER = "PayloadError: amount must be a number"
CURRENCY_ERROR = "PayloadError: currency must be a short code"

#: (payment fields, the payment row's (reference, amount, currency))
ACCEPTED: list[tuple[dict[str, Any], tuple[str, float, str]]] = [
    ({"reference": 42}, ("42", 100.0, "HTG")),
    ({"reference": "R" * 255}, ("R" * 255, 100.0, "HTG")),
    ({"reference": "float", "amount": 12.5}, ("float", 12.5, "HTG")),
    ({"reference": "one-letter", "currency": "x"}, ("one-letter", 100.0, "X")),
    ({"reference": "eight", "currency": "abcdefgh"}, ("eight", 100.0, "ABCDEFGH")),
    ({"reference": "just-under", "amount": 10**15 - 1}, ("just-under", 10.0**15 - 1, "HTG")),
]

#: (payment fields, the dead letter's reason)
REFUSED: list[tuple[dict[str, Any], str]] = [
    ({"reference": True}, REFERENCE_ERROR),
    ({"reference": "   "}, REFERENCE_ERROR),
    ({"reference": None}, REFERENCE_ERROR),
    ({"reference": "R" * 256}, REFERENCE_ERROR),
    ({"amount": True}, NOT_A_NUMBER),
    ({"amount": "lots"}, NOT_A_NUMBER),
    # written 1e999 in the body: JSON has no infinity, but Python reads that number as one
    ({"amount": float("inf")}, "PayloadError: amount must be finite"),
    ({"amount": 10**15}, "PayloadError: amount out of range"),
    ({"amount": -(10**15)}, "PayloadError: amount out of range"),
    ({"amount": "Infinity"}, "PayloadError: amount out of range"),
    ({"currency": 5}, CURRENCY_ERROR),
    ({"currency": ""}, CURRENCY_ERROR),
    ({"currency": "ABCDEFGHI"}, CURRENCY_ERROR),
]


@pytest.fixture
def database_url(sqlite_url: str) -> str:
    return sqlite_url


def moncash(event_id: str, **fields: Any) -> bytes:
    doc = {"id": event_id, "event": "payment.completed", "reference": event_id, "amount": 100}
    return json.dumps({**doc, **fields}).replace('": Infinity', '": 1e999').encode()


def test_values_just_inside_the_bounds_are_recorded(
    redis_client: redis.Redis, settings: Settings, engine: Engine
) -> None:
    # Given events whose reference, amount and currency sit just inside each bound
    for i, (fields, _) in enumerate(ACCEPTED):
        deliver(redis_client, settings, "moncash", body=moncash(f"ok_{i}", **fields))
    # When a worker runs them
    run_worker(redis_client, settings)
    # Then each has its payment, and nothing is dead-lettered
    recorded = {(p["reference"], float(p["amount"]), p["currency"]) for p in rows(engine, payments)}
    assert recorded == {row for _, row in ACCEPTED}
    assert rows(engine, dead_letters) == []


def test_values_just_outside_the_bounds_are_dead_lettered_at_once_with_the_reason(
    redis_client: redis.Redis, settings: Settings, engine: Engine
) -> None:
    # Given events whose reference, amount or currency no payment can hold
    for i, (fields, _) in enumerate(REFUSED):
        deliver(redis_client, settings, "moncash", body=moncash(f"bad_{i}", **fields))
    # When a worker runs them
    run_worker(redis_client, settings)
    # Then none is paid, and each is dead-lettered after one attempt, permanently, saying why
    assert rows(engine, payments) == []
    letters = {d["event_id"]: d for d in rows(engine, dead_letters)}
    for i, (_, reason) in enumerate(REFUSED):
        letter = letters[f"bad_{i}"]
        assert (letter["reason"], letter["permanent"], letter["attempts"]) == (reason, 1, 1)


def test_events_of_one_payment_in_one_batch_are_applied_together(
    settings: Settings, engine: Engine
) -> None:
    # Given one batch of events for one payment: pending, completed, then failed
    def delivery(n: int, event: str) -> Delivery:
        body = moncash(f"evt_{n}", event=event, reference="ORD-B")
        return Delivery(Envelope("moncash", f"evt_{n}", time.time(), (), body), 1)

    events = ["payment.pending", "payment.completed", "payment.failed"]
    batch = [delivery(n, event) for n, event in enumerate(events)]
    # When it is applied, in one transaction
    outcomes = apply_events(runtime.current(), batch)
    # Then every event is processed, and the payment holds the completed one
    assert outcomes == ["processed"] * 3
    [payment] = rows(engine, payments)
    assert (payment["status"], payment["event_id"]) == ("completed", "evt_1")
