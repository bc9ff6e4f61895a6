"""Built-in handlers for the payment providers, registered by scheme name.

Provider vocabularies are plain data (dicts), not code: each maps the provider's event to one
of our payment statuses. A source with handlers of its own replaces these (see
``Registry.for_event``); ``[worker] builtin_handlers = false`` turns them off.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from shared.errors import PayloadError
from workers.handlers import Event, Registry
from workers.payments import amount, currency, record_payment, reference

MONCASH_EVENTS = {
    "payment.completed": "completed",
    "payment.failed": "failed",
    "payment.pending": "pending",
    "payment.refunded": "refunded",
}
NOWALLET_STATUSES = {"SUCCESSFUL": "completed", "FAILED": "failed", "PENDING": "pending"}
#: HelloAsso payment ``state`` values (API v5)
HELLOASSO_STATES = {
    "Authorized": "completed",
    "Registered": "completed",
    "Pending": "pending",
    "Waiting": "pending",
    "Refused": "failed",
    "Canceled": "failed",
    "Refunded": "refunded",
    "Refunding": "completed",
    "Contested": "completed",
}


def _object(event: Event) -> dict[str, Any]:
    if not isinstance(event.data, dict):
        raise PayloadError("body must be a JSON object")
    return event.data


def moncash(event: Event, session: Session) -> None:
    data = _object(event)
    record_payment(
        session,
        source=event.source,
        ref=reference(data.get("reference")),
        status=MONCASH_EVENTS[event.type or ""],
        event_id=event.event_id,
        amount_=amount(data.get("amount")),
        currency_=currency(data.get("currency", "HTG")),
    )


def nowallet(event: Event, session: Session) -> None:
    data = _object(event)
    record_payment(
        session,
        source=event.source,
        ref=reference(data.get("transaction_id"), "transaction_id"),
        status=NOWALLET_STATUSES[event.type or ""],
        event_id=event.event_id,
        amount_=amount(data.get("amount")),
        currency_=currency(data.get("currency")),
    )


def helloasso_order(event: Event, session: Session) -> None:
    """An ``Order`` notification: the order is paid (amounts are in cents)."""
    order = _object(event).get("data")
    if not isinstance(order, dict):
        raise PayloadError("HelloAsso Order without data")
    total = order.get("amount")
    total = total.get("total") if isinstance(total, dict) else total
    states = [p.get("state") for p in order.get("payments") or [] if isinstance(p, dict)]
    status = HELLOASSO_STATES.get(str(states[0]), "completed") if states else "completed"
    record_payment(
        session,
        source=event.source,
        ref="order:" + reference(order.get("id"), "data.id"),
        status=status,
        event_id=event.event_id,
        amount_=amount(total, scale=2),
        currency_="EUR",
    )


def helloasso_payment(event: Event, session: Session) -> None:
    """A ``Payment`` notification: its state moves the order's payment."""
    payment = _object(event).get("data")
    if not isinstance(payment, dict):
        raise PayloadError("HelloAsso Payment without data")
    order = payment.get("order")
    order_id = order.get("id") if isinstance(order, dict) else None
    state = payment.get("state")
    if state not in HELLOASSO_STATES:
        raise PayloadError(f"unknown HelloAsso payment state {str(state)[:40]!r}")
    record_payment(
        session,
        source=event.source,
        ref="order:" + reference(order_id, "data.order.id"),
        status=HELLOASSO_STATES[state],
        event_id=event.event_id,
        amount_=amount(payment.get("amount"), scale=2),
        currency_="EUR",
    )


def register(registry: Registry) -> None:
    for event_type in MONCASH_EVENTS:
        registry.add_builtin("moncash", event_type, moncash)
    for status in NOWALLET_STATUSES:
        registry.add_builtin("nowallet", status, nowallet)
    registry.add_builtin("helloasso", "Order", helloasso_order)
    registry.add_builtin("helloasso", "Payment", helloasso_payment)
