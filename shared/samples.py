"""Realistic example deliveries per scheme: what ``hookline send`` posts when given no body,
what ``hookline dev``'s demo uses, and what the tests sign with each scheme's real code."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Sample:
    body: bytes
    #: headers the provider sends besides the signature (ids, topics, content type)
    headers: dict[str, str] = field(default_factory=dict)
    event_id: str | None = None


def _json(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


def sample(scheme: str, now: float, n: int | None = None, **overrides: Any) -> Sample:
    """An example delivery for ``scheme``; ``n`` makes ids unique and reproducible."""
    tag = uuid.uuid4().hex[:12] if n is None else f"{n:012d}"
    builder = _BUILDERS.get(scheme, _generic)
    return builder(tag, now, overrides)


def _moncash(tag: str, now: float, o: dict[str, Any]) -> Sample:
    doc = {
        "id": f"evt_{tag}",
        "event": o.get("event", "payment.completed"),
        "reference": o.get("reference", f"ORD-{tag}"),
        "amount": o.get("amount", 1500),
        "created_at": int(now),
    }
    return Sample(_json(doc), {"Content-Type": "application/json"})


def _nowallet(tag: str, now: float, o: dict[str, Any]) -> Sample:
    doc = {
        "status": o.get("status", "SUCCESSFUL"),
        "transaction_id": o.get("reference", f"TX{tag}"),
        "amount": o.get("amount", 10000),
        "currency": o.get("currency", "XOF"),
        "fee_percent": 1,
        "transaction_method": "MERCHANT",
        "transaction_date": dt.datetime.fromtimestamp(now, dt.UTC).isoformat(),
        "transaction_country_code": "CI",
    }
    return Sample(_json(doc), {"Content-Type": "application/json"})


def _helloasso(tag: str, now: float, o: dict[str, Any]) -> Sample:
    order_id = uuid.uuid5(uuid.NAMESPACE_X500, tag).int % 10**9
    amount = o.get("amount", 2500)  # cents
    doc = {
        "eventType": o.get("event", "Order"),
        "data": {
            "id": order_id,
            "date": dt.datetime.fromtimestamp(now, dt.UTC).isoformat(),
            "amount": {"total": amount, "vat": 0, "discount": 0},
            "payments": [{"id": order_id * 10, "amount": amount, "state": "Authorized"}],
            "formSlug": "adhesion-2026",
            "formType": "Membership",
            "organizationSlug": "mon-association",
        },
    }
    if o.get("event") == "Payment":
        doc["data"] = {
            "id": order_id * 10,
            "amount": amount,
            "state": o.get("state", "Authorized"),
            "order": {"id": order_id},
        }
    return Sample(_json(doc), {"Content-Type": "application/json"})


def _smino(tag: str, now: float, o: dict[str, Any]) -> Sample:
    ts = dt.datetime.fromtimestamp(now, dt.UTC).strftime("%m/%d/%Y %H:%M:%S")
    event_id = uuid.uuid5(uuid.NAMESPACE_DNS, tag)
    doc = {"EventId": str(event_id), "TimeStamp": ts, "EventType": o.get("event", "order.created")}
    return Sample(_json(doc), {"Content-Type": "application/json"})


def _github(tag: str, now: float, o: dict[str, Any]) -> Sample:
    delivery = str(uuid.uuid5(uuid.NAMESPACE_URL, tag))
    doc = {"zen": "Keep it logically awesome.", "hook_id": int(now)}
    return Sample(
        _json(doc),
        {
            "Content-Type": "application/json",
            "X-GitHub-Delivery": delivery,
            "X-GitHub-Event": "ping",
        },
        event_id=delivery,
    )


def _stripe(tag: str, now: float, o: dict[str, Any]) -> Sample:
    doc = {
        "id": f"evt_{tag}",
        "object": "event",
        "type": o.get("event", "payment_intent.succeeded"),
        "created": int(now),
        "data": {"object": {"id": f"pi_{tag}", "amount": 2000, "currency": "usd"}},
    }
    return Sample(_json(doc), {"Content-Type": "application/json"})


def _slack(tag: str, now: float, o: dict[str, Any]) -> Sample:
    doc = {
        "type": "event_callback",
        "event_id": f"Ev{tag.upper()}",
        "event_time": int(now),
        "event": {"type": o.get("event", "app_mention"), "text": "hello", "user": "U061F7AUR"},
    }
    return Sample(_json(doc), {"Content-Type": "application/json"})


def _shopify(tag: str, now: float, o: dict[str, Any]) -> Sample:
    webhook_id = str(uuid.uuid5(uuid.NAMESPACE_OID, tag))
    doc = {"id": int(now), "email": "jon@example.com", "total_price": "19.99", "currency": "CAD"}
    return Sample(
        _json(doc),
        {
            "Content-Type": "application/json",
            "X-Shopify-Webhook-Id": webhook_id,
            "X-Shopify-Topic": o.get("event", "orders/create"),
        },
        event_id=webhook_id,
    )


def _standard(tag: str, now: float, o: dict[str, Any]) -> Sample:
    doc = {"type": o.get("event", "invoice.paid"), "data": {"invoice": f"in_{tag}", "amount": 4200}}
    return Sample(_json(doc), {"Content-Type": "application/json"}, event_id=f"msg_{tag}")


def _generic(tag: str, now: float, o: dict[str, Any]) -> Sample:
    doc = {"id": f"evt_{tag}", "type": o.get("event", "test.event"), "created": int(now)}
    return Sample(_json(doc), {"Content-Type": "application/json"})


_BUILDERS = {
    "moncash": _moncash,
    "nowallet": _nowallet,
    "helloasso": _helloasso,
    "smino": _smino,
    "github": _github,
    "stripe": _stripe,
    "slack": _slack,
    "shopify": _shopify,
    "standard-webhooks": _standard,
}
