"""The ``payments`` effect: one row per (source, reference) whose status never moves backwards.

The rank of a status orders them; an update applies only when it raises the rank, in one
``INSERT ... ON CONFLICT DO UPDATE ... WHERE`` statement, so events arriving out of order (a
late ``pending`` after ``completed``) change nothing, on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

import decimal
import functools
import math
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from shared.db import payments, utcnow
from shared.errors import PayloadError

#: ``session.info`` key of the payments recorded in the open transaction
_PENDING = "hookline.payments"
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
    """Insert the payment or move its status forward; never backwards.

    The write joins the transaction's others and is made by :func:`flush_payments` before the
    commit, in one statement for the whole batch of events."""
    now = utcnow()
    session.info.setdefault(_PENDING, []).append(
        {
            "source": source,
            "reference": ref,
            "status": status,
            "status_rank": STATUS_RANK[status],
            "amount": amount_,
            "currency": currency_,
            "event_id": event_id,
            "created_at": now,
            "updated_at": now,
        }
    )


def flush_payments(session: Session) -> None:
    """Write the payments recorded in this transaction.

    Rows for one (source, reference) are first reduced to the first of the highest rank: what
    applying them one after another would leave, and one statement may touch a row only once.
    """
    rows: list[dict[str, Any]] = session.info.pop(_PENDING, [])
    if not rows:
        return
    winners: dict[tuple[str, str], dict[str, Any]] = {}
    for row in rows:
        key = (row["source"], row["reference"])
        if key not in winners or row["status_rank"] > winners[key]["status_rank"]:
            winners[key] = row
    conn: Connection = session.connection()
    conn.execute(_upsert(conn.dialect.name), list(winners.values()))


@functools.lru_cache(maxsize=4)
def _upsert(dialect_name: str) -> Any:
    dialect = sqlite if dialect_name == "sqlite" else postgresql
    stmt = dialect.insert(payments)
    excluded = stmt.excluded
    return stmt.on_conflict_do_update(
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
