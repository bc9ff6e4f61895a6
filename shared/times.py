"""Times as hookline shows them: one form for people everywhere (the CLI's tables and details,
the console's pages), ``2026-12-06 20:41:17 UTC``, and ISO 8601 in every JSON answer
(``--json``, the console's API), ``2026-12-06T20:41:17.123456+00:00``. Stored times are UTC
(SQLite hands them back without a zone)."""

from __future__ import annotations

import datetime as dt
import decimal
from typing import Any

#: the one form for people: to the second, with its zone
PEOPLE_FORMAT = "%Y-%m-%d %H:%M:%S UTC"


def _moment(value: object) -> dt.datetime | None:
    if isinstance(value, dt.datetime):
        moment = value
    elif isinstance(value, int | float) and not isinstance(value, bool):
        moment = dt.datetime.fromtimestamp(value, dt.UTC)
    elif isinstance(value, str):
        try:
            moment = dt.datetime.fromisoformat(value)
        except ValueError:
            return None
    else:
        return None
    if moment.tzinfo is None:  # stored in UTC
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.astimezone(dt.UTC)


def for_people(value: object, never: str = "-") -> str:
    """A time (datetime, unix seconds, ISO text) as people read it; ``never`` for none; text
    that is not a time as it is."""
    if value is None or value == "":
        return never
    moment = _moment(value)
    return moment.strftime(PEOPLE_FORMAT) if moment else str(value)


def iso(value: dt.datetime) -> str:
    """ISO 8601 with its offset, in UTC."""
    moment = _moment(value)
    assert moment is not None
    return moment.isoformat()


def json_default(value: Any) -> Any:
    """For ``json.dumps``: times in ISO 8601, bytes as text, decimals as text."""
    if isinstance(value, dt.datetime):
        return iso(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, decimal.Decimal):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON")
