"""Handlers: functions registered for (source, event type), run inside the event's transaction.

A handler receives the parsed :class:`Event` and a SQLAlchemy ``Session`` bound to the open
transaction that will also record the event as processed: whatever it writes commits together
with that record or not at all. It must not commit. Raising
:class:`~shared.errors.PermanentError` dead-letters the event at once; any other exception is
retried with backoff.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

WILDCARD = "*"


@dataclass(frozen=True)
class Event:
    """A parsed event."""

    source: str
    event_id: str
    type: str | None
    data: Any
    scheme: str
    headers: tuple[tuple[str, str], ...] = ()
    received_at: float = 0.0
    attempt: int = 1


Handler = Callable[[Event, Session], None]


@dataclass
class Registry:
    """Handlers by source name, and built-in handlers by scheme name."""

    by_source: dict[tuple[str, str], list[Handler]] = field(default_factory=dict)
    by_scheme: dict[tuple[str, str], list[Handler]] = field(default_factory=dict)

    def add(self, source: str, type_: str, handler: Handler) -> None:
        self.by_source.setdefault((source, type_), []).append(handler)

    def add_builtin(self, scheme: str, type_: str, handler: Handler) -> None:
        self.by_scheme.setdefault((scheme, type_), []).append(handler)

    def for_event(self, event: Event, builtins: bool = True) -> list[Handler]:
        """Handlers for the event's source (exact type, then ``*``); built-ins for its scheme
        only when the source has none of its own."""
        t = event.type or ""
        found = self.by_source.get((event.source, t), []) + self.by_source.get(
            (event.source, WILDCARD), []
        )
        if found or not builtins:
            return found
        return self.by_scheme.get((event.scheme, t), []) + self.by_scheme.get(
            (event.scheme, WILDCARD), []
        )


REGISTRY = Registry()


def on(source: str, type_: str = WILDCARD) -> Callable[[Handler], Handler]:
    """Register the decorated function for events of ``type_`` from ``source``."""

    def register(func: Handler) -> Handler:
        REGISTRY.add(source, type_, func)
        return func

    return register
