"""The workers: parse queued events, apply their effects exactly once, retry, dead-letter.

Handler modules import the public API from :mod:`hookline`::

    from hookline import Event, PermanentError, on

``from workers import Event, on`` still works (deprecated: it warns once per name).
"""

from __future__ import annotations

import warnings
from typing import Any

_MOVED = {"Event", "on"}


def __getattr__(name: str) -> Any:
    # dramatiq's way of moving a public name: the old import keeps working, with a note
    if name in _MOVED:
        warnings.warn(
            f"'from workers import {name}' is deprecated; use 'from hookline import {name}'",
            DeprecationWarning,
            stacklevel=2,
        )
        from workers import handlers

        return getattr(handlers, name)
    raise AttributeError(f"module 'workers' has no attribute {name!r}")
