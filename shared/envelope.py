"""The event envelope: what the ingress queues and the worker receives.

It holds the raw body exactly as received (signatures were computed over those bytes) and the
request headers with every secret-bearing header redacted, so a job, a dead letter or a log line
can never leak a secret or a signature.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

REDACTED = "[redacted]"
VERSION = 1

#: headers never worth storing with an event: hop-by-hop or credentials of our own ingress
_DROP = frozenset({"connection", "keep-alive", "transfer-encoding", "authorization", "cookie"})


@dataclass(frozen=True)
class Envelope:
    """One accepted delivery."""

    source: str
    event_id: str
    received_at: float
    headers: tuple[tuple[str, str], ...]
    body: bytes
    remote: str | None = None
    #: sent again by ``hookline dlq replay``: success resolves its dead letter
    replay: bool = False

    def header(self, name: str) -> str | None:
        lname = name.lower()
        for k, v in self.headers:
            if k.lower() == lname:
                return v
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": VERSION,
            "source": self.source,
            "event_id": self.event_id,
            "received_at": self.received_at,
            "headers": [list(h) for h in self.headers],
            "body": self.body,
            "remote": self.remote,
            "replay": self.replay,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Envelope:
        return cls(
            source=str(data["source"]),
            event_id=str(data["event_id"]),
            received_at=float(data["received_at"]),
            headers=tuple((str(k), str(v)) for k, v in data["headers"]),
            body=bytes(data["body"]),
            remote=data.get("remote"),
            replay=bool(data.get("replay", False)),
        )


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
