"""Where a source keeps its event id and type: ``header:NAME``, ``json:a.b`` or ``sha256``.

Alternatives are separated by ``|`` (the first that is present wins) and parts are joined by
``+`` into one value with ``:`` between them (Nowallet sends one ``transaction_id`` for every
status of a transaction, so its id is ``json:transaction_id+json:status``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from shared.errors import ConfigError
from shared.signatures.base import Headers

#: ids longer than this are refused: they key the claim in Redis and a unique index in SQL
MAX_ID_LENGTH = 255


@dataclass(frozen=True)
class Part:
    kind: str  # "header", "json" or "sha256"
    arg: str = ""
    path: tuple[str, ...] = ()


@dataclass(frozen=True)
class Locator:
    """A parsed locator: alternatives, each a tuple of parts."""

    text: str
    alternatives: tuple[tuple[Part, ...], ...]

    @property
    def needs_json(self) -> bool:
        return any(p.kind == "json" for alt in self.alternatives for p in alt)


def parse_locator(text: str, where: str) -> Locator:
    """Parse ``text`` or raise ``ConfigError`` naming ``where``."""
    alternatives = []
    for alt in text.split("|"):
        parts = []
        for raw in alt.split("+"):
            kind, _, arg = raw.strip().partition(":")
            if kind == "sha256" and not arg:
                parts.append(Part("sha256"))
            elif kind == "header" and arg:
                parts.append(Part("header", arg))
            elif kind == "json" and arg and all(arg.split(".")):
                parts.append(Part("json", arg, tuple(arg.split("."))))
            else:
                raise ConfigError(
                    f"{where}: {raw.strip()!r} is not header:NAME, json:a.b or sha256"
                )
        alternatives.append(tuple(parts))
    return Locator(text, tuple(alternatives))


class JsonBody:
    """The body parsed as JSON at most once, lazily; ``None`` when it is not JSON."""

    def __init__(self, body: bytes) -> None:
        self._body = body
        self._parsed = False
        self._value: Any = None

    def value(self) -> Any:
        if not self._parsed:
            self._parsed = True
            self._value = loads_or_none(self._body)
        return self._value


def loads_or_none(body: bytes) -> Any:
    """The body as JSON, or ``None`` when it is anything malformed. orjson reads nearly every
    body, fast; the standard library what orjson refuses but JSON allows (integers past 64
    bits, nesting past 1,024), so an authentic event is never refused for either."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(body)
    except (ValueError, RecursionError, UnicodeDecodeError):
        return None


def _at_path(doc: Any, path: tuple[str, ...]) -> str | None:
    for key in path:
        if not isinstance(doc, dict) or key not in doc:
            return None
        doc = doc[key]
    if isinstance(doc, str):
        return doc or None
    if isinstance(doc, int) and not isinstance(doc, bool):
        return str(doc)
    return None


def _part(part: Part, headers: Headers, body: bytes, doc: Callable[[], Any]) -> str | None:
    if part.kind == "sha256":
        return hashlib.sha256(body).hexdigest()
    if part.kind == "header":
        values = headers.getall(part.arg, [])
        return values[0].strip() or None if len(values) == 1 else None
    return _at_path(doc(), part.path)


def locate(
    locator: Locator, headers: Headers, body: bytes, doc: JsonBody | None = None
) -> str | None:
    """The located value, or ``None`` when no alternative is fully present."""
    parsed = doc or JsonBody(body)
    for alt in locator.alternatives:
        values = [_part(p, headers, body, parsed.value) for p in alt]
        if all(v is not None for v in values):
            return ":".join(v for v in values if v is not None)
    return None
