"""From a queued envelope to a typed :class:`~workers.handlers.Event`.

JSON is parsed strictly: duplicate keys, NaN/Infinity, nesting past the recursion limit,
integers too long to convert, NUL characters and lone surrogates are payload errors (permanent:
they go to the dead letters at once with the reason, instead of crashing a worker or being
rejected by PostgreSQL later in a retry loop).
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qsl

from multidict import CIMultiDict

from shared.config import SourceSettings
from shared.envelope import Envelope
from shared.errors import PayloadError
from shared.locators import locate
from workers.handlers import Event

#: deeper documents are refused: no provider nests this far, and walking them is costly
MAX_DEPTH = 64


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise PayloadError(f"duplicate key {key[:40]!r} in JSON object")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise PayloadError(f"{name} is not valid JSON")


def _check(value: Any, depth: int = 0) -> None:
    if depth > MAX_DEPTH:
        raise PayloadError(f"JSON nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, str):
        _check_text(value)
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_text(k)
            _check(v, depth + 1)
    elif isinstance(value, list):
        for v in value:
            _check(v, depth + 1)


def _check_text(text: str) -> None:
    if "\x00" in text:
        raise PayloadError("NUL character in JSON string")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise PayloadError("lone surrogate in JSON string") from err


def parse_json(body: bytes) -> Any:
    """Parse ``body`` strictly or raise ``PayloadError`` with a one-line reason."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as err:
        raise PayloadError(f"body is not UTF-8 (byte {err.start})") from err
    try:
        doc = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except RecursionError as err:
        raise PayloadError("JSON nested too deeply") from err
    except ValueError as err:  # JSONDecodeError, and int() of thousands of digits
        raise PayloadError(f"invalid JSON: {str(err)[:120]}") from err
    _check(doc)
    return doc


def parse_body(envelope: Envelope) -> Any:
    """JSON, or form fields for ``application/x-www-form-urlencoded``; empty body is ``None``."""
    if not envelope.body.strip():
        return None
    ctype = (envelope.header("Content-Type") or "").split(";")[0].strip().lower()
    if ctype == "application/x-www-form-urlencoded":
        try:
            fields = parse_qsl(envelope.body.decode("utf-8"), strict_parsing=True)
        except (UnicodeDecodeError, ValueError) as err:
            raise PayloadError("invalid form body") from err
        for k, v in fields:
            _check_text(k)
            _check_text(v)
        return dict(fields)
    return parse_json(envelope.body)


def event_type_of(envelope: Envelope, source: SourceSettings) -> str | None:
    """The event's type where the source says, at most 255 characters; ``PayloadError`` when it
    is text no database takes."""
    if source.event_type is None:
        return None
    event_type = locate(source.event_type, CIMultiDict(envelope.headers), envelope.body)
    if event_type is None:
        return None
    _check_text(event_type)
    return event_type[:255]


def to_event(envelope: Envelope, source: SourceSettings, attempt: int) -> Event:
    data = parse_body(envelope)
    event_type = event_type_of(envelope, source)
    return Event(
        source=envelope.source,
        event_id=envelope.event_id,
        type=event_type,
        data=data,
        scheme=source.scheme.name,
        headers=envelope.headers,
        received_at=envelope.received_at,
        attempt=attempt,
    )
