"""hookline: queue-backed asynchronous webhook ingestion.

The API for handler modules (listed in ``[worker] handlers``)::

    from hookline import Event, PermanentError, on

    @on("moncash", "payment.completed")
    def mark_paid(event: Event, session: Session) -> None:
        ...

The names are imported on first use, so the command line does not pay for the database
layer when it only needs, say, ``hookline send``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shared.errors import PermanentError
    from workers.handlers import Event, on

__version__ = "0.1.0"
__all__ = ["Event", "PermanentError", "on"]

_WHERE = {"Event": "workers.handlers", "on": "workers.handlers", "PermanentError": "shared.errors"}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'hookline' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
