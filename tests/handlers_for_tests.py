"""Handlers the worker tests register through ``[worker] handlers`` (as users do).

Their behaviour is steered by files in ``$HOOKLINE_TEST_STATE`` so a worker in another process
can be steered too: ``fail_<event id>`` holds how many more times to fail; ``poison`` makes the
"poison" source raise a payload error; ``sleep`` makes "slow" handlers sleep that many seconds.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

from sqlalchemy.orm import Session

from hookline import Event, on
from shared.errors import PayloadError
from workers.payments import record_payment


def _state() -> Path:
    return Path(os.environ.get("HOOKLINE_TEST_STATE", "/nonexistent"))


def _effect(event: Event, session: Session) -> None:
    """A new payments row each time it runs (deliberately not idempotent), so an effect
    applied twice shows as two rows."""
    record_payment(
        session,
        source=event.source,
        ref=f"{event.event_id}:{uuid.uuid4().hex}",
        status="completed",
        event_id=event.event_id,
        amount_=None,
        currency_=None,
    )


@on("flaky")
def flaky(event: Event, session: Session) -> None:
    counter = _state() / f"fail_{event.event_id}"
    if counter.exists():
        left = int(counter.read_text() or 0)
        if left > 0:
            counter.write_text(str(left - 1))
            raise RuntimeError(f"transient failure, {left - 1} more to come")
    _effect(event, session)


@on("poison")
def poison(event: Event, session: Session) -> None:
    if (_state() / "poison").exists():
        raise PayloadError("this event cannot be processed (poison)")
    _effect(event, session)


@on("slow")
def slow(event: Event, session: Session) -> None:
    marker = _state() / "sleep"
    if marker.exists():
        (_state() / f"started_{event.event_id}").write_text(str(os.getpid()))
        time.sleep(float(marker.read_text()))
    _effect(event, session)
