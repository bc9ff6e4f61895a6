"""smino: ``x-hook-signature`` is the UPPER hex SHA-512 (a plain hash, not an HMAC) of
``"{EventId:N}.{TimeStamp}.{secret}"``, both fields taken from the JSON body.

The provider signs neither the rest of the body nor the request, so the signature only proves
that someone who knows the secret produced this (EventId, TimeStamp) pair; the tolerance on
TimeStamp at least bounds how long such a pair can be replayed.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from shared.errors import InvalidSignature, StaleTimestamp
from shared.signatures.base import Headers, Scheme, decode_hex, single_header

HEADER = "x-hook-signature"
# .NET Guid formats N, D, B and P: same dash choice throughout, brackets in matching pairs
_GUID = re.compile(
    r"(?P<open>[{(]?)([0-9a-fA-F]{8})(-?)([0-9a-fA-F]{4})\3([0-9a-fA-F]{4})\3"
    r"([0-9a-fA-F]{4})\3([0-9a-fA-F]{12})(?P<close>[})]?)"
)


def _dotnet_invariant(text: str) -> datetime:
    # DateTime.UtcNow.ToString(CultureInfo.InvariantCulture), as in the provider's sample
    return datetime.strptime(text, "%m/%d/%Y %H:%M:%S")


_STAMP_PARSERS: tuple[Callable[[str], datetime], ...] = (_dotnet_invariant, datetime.fromisoformat)


class SminoScheme(Scheme):
    """smino API webhooks (``EventId``/``TimeStamp`` in the body, hash in ``x-hook-signature``)."""

    name = "smino"
    default_event_id = "json:EventId"
    default_event_type = "json:EventType"
    sensitive_headers = frozenset({HEADER})

    def verify(self, headers: Headers, body: bytes, now: float) -> None:
        received = decode_hex(single_header(headers, HEADER))
        event_id, stamp = _fields(body)
        if abs(now - _seconds(stamp)) > self.config.tolerance_seconds:
            raise StaleTimestamp("TimeStamp outside tolerance")
        self.require_match(lambda secret: _digest(event_id, stamp, secret), [received])

    def sign(self, body: bytes, now: float, event_id: str | None = None) -> dict[str, str]:
        try:
            guid, stamp = _fields(body)
        except InvalidSignature as err:  # the caller passed an unusable body: a usage error
            raise ValueError(f"smino: cannot sign this body: {err}") from err
        return {HEADER: _digest(guid, stamp, self.config.secrets[0]).hex().upper()}


def _fields(body: bytes) -> tuple[str, str]:
    """``EventId`` normalised to 32 lowercase hex digits and the literal ``TimeStamp``."""
    try:
        # UTF-8 only: json.loads(bytes) would also guess UTF-16/32, which no provider sends
        doc = json.loads(body.decode("utf-8"), object_pairs_hook=_unique_keys)
    except (ValueError, RecursionError) as err:  # UnicodeDecodeError is a ValueError
        raise InvalidSignature("body is not a JSON document") from err
    if not isinstance(doc, dict):
        raise InvalidSignature("body is not a JSON object")
    event_id, stamp = doc.get("EventId"), doc.get("TimeStamp")
    if not isinstance(event_id, str) or not isinstance(stamp, str):
        raise InvalidSignature("EventId and TimeStamp must be strings")
    match = _GUID.fullmatch(event_id)
    if not match or match["open"] + match["close"] not in ("", "{}", "()"):
        raise InvalidSignature("EventId is not a GUID")
    return "".join(match.group(2, 4, 5, 6, 7)).lower(), stamp


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # a repeated key would let us and a later parser disagree on which EventId was signed
    if len({key for key, _ in pairs}) != len(pairs):
        raise ValueError("duplicate key")  # pragma: no mutate (_fields never shows this text)
    return dict(pairs)


def _seconds(stamp: str) -> float:
    """Unix seconds of a .NET invariant or ISO 8601 TimeStamp (UTC unless it says otherwise)."""
    for parse in _STAMP_PARSERS:
        try:
            moment = parse(stamp)
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
            return moment.timestamp()
        except (ValueError, OverflowError):
            continue
    raise InvalidSignature("unparseable TimeStamp")


def _digest(event_id: str, stamp: str, secret: str) -> bytes:
    # surrogatepass: a JSON "\ud800" escape must give a mismatch, not a UnicodeEncodeError
    text = f"{event_id}.{stamp}.{secret}"
    return hashlib.sha512(text.encode("utf-8", "surrogatepass")).digest()
