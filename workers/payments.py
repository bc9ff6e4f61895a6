"""The ``payments`` effect: one row per (source, reference) whose status never moves backwards.

The rank of a status orders them; an update applies only when it raises the rank, in one
``INSERT ... ON CONFLICT DO UPDATE ... WHERE`` statement, so events arriving out of order (a
late ``pending`` after ``completed``) change nothing, on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

import decimal
import math
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from shared.db import payments, utcnow
from shared.errors import PayloadError

STATUS_RANK = {"pending": 0, "failed": 1, "completed": 2, "refunded": 3}
_MAX_AMOUNT = decimal.Decimal("1e15")


def reference(value: Any, what: str = "reference") -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.strip() or len(value) > 255:
        raise PayloadError(f"{what} must be a non-empty string of at most 255 characters")
    return value


def amount(value: Any, scale: int = 0) -> decimal.Decimal | None:
    """A finite amount; ``scale`` shifts minor units (cents) to major ones."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise PayloadError("amount must be a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise PayloadError("amount must be finite")
    try:
        result = decimal.Decimal(str(value)).scaleb(-scale)
    except decimal.InvalidOperation as err:
        raise PayloadError("amount must be a number") from err
    if not result.is_finite() or abs(result) >= _MAX_AMOUNT:
        raise PayloadError("amount out of range")
    return result


def currency(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not (1 <= len(value) <= 8):
        raise PayloadError("currency must be a short code")
    return value.upper()


def record_payment(
    session: Session,
    *,
    source: str,
    ref: str,
    status: str,
    event_id: str,
    amount_: decimal.Decimal | None,
    currency_: str | None,
) -> None:
    """Insert the payment or move its status forward; never backwards."""
    conn: Connection = session.connection()
    dialect = sqlite if conn.dialect.name == "sqlite" else postgresql
    now = utcnow()
    stmt = dialect.insert(payments).values(
        source=source,
        reference=ref,
        status=status,
        status_rank=STATUS_RANK[status],
        amount=amount_,
        currency=currency_,
        event_id=event_id,
        created_at=now,
        updated_at=now,
    )
    excluded = stmt.excluded
    stmt = stmt.on_conflict_do_update(
        index_elements=[payments.c.source, payments.c.reference],
        set_={
            "status": excluded.status,
            "status_rank": excluded.status_rank,
            "amount": excluded.amount,
            "currency": excluded.currency,
            "event_id": excluded.event_id,
            "updated_at": excluded.updated_at,
        },
        where=payments.c.status_rank < excluded.status_rank,
    )
    conn.execute(stmt)
