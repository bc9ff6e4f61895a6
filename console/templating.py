"""The templates' environment: Jinja2 with autoescaping on (every value shown is escaped
unless a template says otherwise, and none does), undefined names an error, and the few
filters the pages use."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, urlencode

import aiohttp_jinja2
import jinja2
from aiohttp import web

from shared.times import for_people


def setup(app: web.Application) -> None:
    env = aiohttp_jinja2.setup(
        app,
        loader=jinja2.PackageLoader("console", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["when"] = when
    env.filters["segment"] = segment
    env.filters["size"] = size
    env.globals["qs"] = qs


def when(value: object) -> str:
    """A time as operators read it: UTC, to the second, with its zone (as the CLI prints it)."""
    return for_people(value, never="—")


def size(value: Any) -> str:
    """Bytes for a person (as the CLI prints them); "unknown" when Redis refused INFO."""
    from hookline.printing import size as for_people_size

    return "unknown" if value is None else for_people_size(value)


def segment(value: Any) -> str:
    """One path segment: every ``/``, ``?``, ``#`` and ``%`` encoded."""
    return quote(str(value), safe="")


def qs(params: dict[str, Any], **extra: Any) -> str:
    """A query string of the non-empty values."""
    merged = {**params, **extra}
    return urlencode({k: v for k, v in merged.items() if v not in (None, "")})
