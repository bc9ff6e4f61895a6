"""The workers: parse queued events, apply their effects exactly once, retry, dead-letter.

The public API for handler modules is :func:`on` and :class:`Event`::

    from workers import Event, on

    @on("moncash", "payment.completed")
    def mark_paid(event: Event, session: Session) -> None:
        ...
"""

from workers.handlers import Event, on

__all__ = ["Event", "on"]
