"""The event envelope: what the ingress queues and the worker receives.

It holds the raw body exactly as received (signatures were computed over those bytes) and the
request headers with every secret-bearing header redacted, so a job, a dead letter or a log line
can never leak a secret or a signature.

On the queue an envelope is plain JSON (see :mod:`shared.rqcompat`): nothing in a job can run
code in a worker. The format has a version the workers check: 2 is JSON with the body in base64;
1 is what hookline queued before (pickled, body as bytes), still read so that jobs queued before
an upgrade are processed. Anything else is refused as :class:`InvalidEnvelope`.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from shared.errors import PermanentError

REDACTED = "[redacted]"
#: the format :meth:`Envelope.to_dict` writes
VERSION = 2
#: what a replay may take over: a dead letter's ``dead`` row, or an ``ignored`` one
Replay = Literal["dead", "ignored"]

#: the replay field as queued; ``True`` is version 1's (a dead letter's replay)
_REPLAYS: dict[Any, Replay | None] = {
    None: None,
    False: None,
    True: "dead",
    "dead": "dead",
    "ignored": "ignored",
}

#: headers never worth storing with an event: hop-by-hop or credentials of our own ingress
_DROP = frozenset({"connection", "keep-alive", "transfer-encoding", "authorization", "cookie"})


class InvalidEnvelope(PermanentError):
    """A job's data is not an event hookline queued: it is never run, only dead-lettered."""


@dataclass(frozen=True)
class Envelope:
    """One accepted delivery."""

    source: str
    event_id: str
    received_at: float
    headers: tuple[tuple[str, str], ...]
    body: bytes
    remote: str | None = None
    #: set by the operators' replays: the event's row in this state may be applied again
    replay: Replay | None = None
    #: the W3C ``traceparent`` of the span that queued it, when traces are on: the worker's
    #: spans join the request's trace (not in the job's data when ``None``)
    trace: str | None = None

    @property
    def trace_id(self) -> str | None:
        """The trace id of :attr:`trace` (32 hex digits), if any."""
        return self.trace[3:35] if self.trace and len(self.trace) >= 35 else None

    def header(self, name: str) -> str | None:
        lname = name.lower()
        for k, v in self.headers:
            if k.lower() == lname:
                return v
        return None

    def to_dict(self) -> dict[str, Any]:
        """The JSON-safe form queued in a job."""
        return {
            "v": VERSION,
            "source": self.source,
            "event_id": self.event_id,
            "received_at": self.received_at,
            "headers": [list(h) for h in self.headers],
            "body": base64.b64encode(self.body).decode("ascii"),
            "remote": self.remote,
            "replay": self.replay,
        } | ({"trace": self.trace} if self.trace is not None else {})

    @classmethod
    def from_dict(cls, data: Any) -> Envelope:
        """Read a queued envelope of any known version, checking every field's type;
        :class:`InvalidEnvelope` names the first thing that is wrong."""
        if not isinstance(data, dict):
            raise InvalidEnvelope("job data is not an event envelope")
        version = data.get("v")
        if version not in (1, 2):
            raise InvalidEnvelope(f"unknown envelope version {str(version)[:20]!r}")
        body = data.get("body")
        if version == 2:
            body = _b64(body)
        elif not isinstance(body, bytes):
            raise InvalidEnvelope("envelope body is not bytes")
        raw_replay = data.get("replay")
        if type(raw_replay) not in (str, bool, type(None)) or raw_replay not in _REPLAYS:
            raise InvalidEnvelope("envelope replay is not dead or ignored")
        return cls(
            source=_text(data, "source"),
            event_id=_text(data, "event_id"),
            received_at=_number(data.get("received_at")),
            headers=_headers(data.get("headers")),
            body=body,
            remote=_optional_text(data.get("remote")),
            replay=_REPLAYS[raw_replay],
            trace=_trace(data.get("trace")),
        )


def _text(data: dict[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise InvalidEnvelope(f"envelope {key} is not text")
    return value


def _optional_text(value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise InvalidEnvelope("envelope remote is not text")
    return value


def _trace(value: Any) -> str | None:
    """A carried trace context is only ever a hint: one that is not text is dropped, never a
    reason to refuse the event."""
    return value[:256] if isinstance(value, str) and value else None


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidEnvelope("envelope received_at is not a time")
    return float(value)


def _headers(value: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, list | tuple):
        raise InvalidEnvelope("envelope headers are not a list")
    out = []
    for pair in value:
        if (
            not isinstance(pair, list | tuple)
            or len(pair) != 2
            or not all(isinstance(x, str) for x in pair)
        ):
            raise InvalidEnvelope("envelope header is not a name and a value")
        out.append((pair[0], pair[1]))
    return tuple(out)


def _b64(value: Any) -> bytes:
    if not isinstance(value, str):
        raise InvalidEnvelope("envelope body is not base64 text")
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError) as err:
        raise InvalidEnvelope("envelope body is not base64") from err


def redact_headers(
    headers: Iterable[tuple[str, str]], sensitive: frozenset[str]
) -> tuple[tuple[str, str], ...]:
    """Headers to keep with an event: secret-bearing values replaced, hop-by-hop dropped."""
    out = []
    for name, value in headers:
        lname = name.lower()
        if lname in _DROP:
            continue
        out.append((name, REDACTED if lname in sensitive else value))
    return tuple(out)
