"""What the pages and the API both ask of :class:`~hookline.ops.Operations`, with the input
checked first: every call here runs the synchronous operation in a thread (never on the event
loop), and every bad input is a :class:`BadInput` (400) or :class:`NotFound` (404) naming it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from hookline.ops import Operations
from shared.eventlog import MAX_LIMIT, EventDetail, Filter, FilterError, Page
from shared.traffic import Rejection

#: the filters each list takes from its query string
EVENT_FILTERS = ("source", "type", "status", "since", "until", "event_id")
DEAD_LETTER_FILTERS = ("source", "type", "since", "until", "event_id", "replayed")
REJECTION_FILTERS = ("source", "reason")
PAGING = ("before", "limit")
DEFAULT_LIMIT = 50
#: a row id that PostgreSQL's BIGINT can hold: anything larger cannot exist
MAX_ID = 2**63 - 1
#: the longest source name and event id there can be (shared.db's columns)
MAX_SOURCE = 64
MAX_EVENT_ID = 255


class BadInput(ValueError):
    """A parameter that cannot be understood; the message names it (400)."""


class NotFound(LookupError):
    """An event, dead letter or job that does not exist (404)."""


class NothingToDo(Exception):
    """A replay of something that needs none (409): the message says why."""


def check_known(query: Mapping[str, str], allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(query) - set(allowed))
    if unknown:
        raise BadInput(f"unknown parameter {unknown[0]!r}")


def parse_filter(query: Mapping[str, str], names: tuple[str, ...]) -> Filter:
    """``Filter.parse`` of the names this list takes; its message names a bad one."""
    try:
        return Filter.parse({name: query.get(name) for name in names})
    except FilterError as err:
        raise BadInput(str(err)) from err


def parse_id(text: str | None, name: str) -> int | None:
    """A positive row id, or None when not given."""
    if text in (None, ""):
        return None
    assert text is not None
    try:
        value = int(text)
    except ValueError:
        raise BadInput(f"{name}: {text!r} is not a row id") from None
    if not 1 <= value <= MAX_ID:
        raise BadInput(f"{name}: {text!r} is not a row id")
    return value


def parse_limit(text: str | None, default: int = DEFAULT_LIMIT) -> int:
    if text in (None, ""):
        return default
    assert text is not None
    try:
        value = int(text)
    except ValueError:
        raise BadInput(f"limit: {text!r} is not a number from 1 to {MAX_LIMIT}") from None
    if not 1 <= value <= MAX_LIMIT:
        raise BadInput(f"limit: {text!r} is not a number from 1 to {MAX_LIMIT}")
    return value


def path_id(text: str) -> int:
    """A dead letter or job id from a path: one that cannot exist is not found."""
    try:
        value = int(text)
    except ValueError:
        raise NotFound(f"no such id {text!r}") from None
    if not 1 <= value <= MAX_ID:
        raise NotFound(f"no such id {text!r}")
    return value


@dataclass(frozen=True)
class ListQuery:
    """A list's filter and page, as parsed from a query string."""

    flt: Filter
    before: int | None
    limit: int
    #: the raw values, for the form and the links to the next page
    raw: dict[str, str]


def list_query(query: Mapping[str, str], names: tuple[str, ...]) -> ListQuery:
    check_known(query, (*names, *PAGING))
    return ListQuery(
        flt=parse_filter(query, names),
        before=parse_id(query.get("before"), "before"),
        limit=parse_limit(query.get("limit")),
        raw={name: query[name] for name in names if query.get(name)},
    )


async def events(ops: Operations, q: ListQuery) -> Page:
    return await asyncio.to_thread(ops.events, q.flt, limit=q.limit, before=q.before)


async def event(ops: Operations, source: str, event_id: str) -> EventDetail:
    if len(source) > MAX_SOURCE or len(event_id) > MAX_EVENT_ID:
        raise NotFound(f"no event {source} {event_id}")
    detail = await asyncio.to_thread(ops.event, source, event_id)
    if detail is None:
        raise NotFound(f"no event {source} {event_id}")
    return detail


async def replay_event(ops: Operations, source: str, event_id: str, *, by: str) -> dict[str, Any]:
    """Replay one event as its state allows: an ignored one as it arrived, a dead one through
    its dead letter; one already processed (or whose body is gone) is :class:`NothingToDo`
    and nothing is queued."""
    detail = await event(ops, source, event_id)
    kind = detail.replayable
    if kind == "ignored":
        done = await asyncio.to_thread(
            lambda: list(ops.replay_ignored([(source, event_id)], by=by))
        )
        if done:
            return {"replayed": "ignored", "source": source, "event_id": event_id}
    elif kind == "dead" and detail.dead_letter is not None:
        dl_id = int(detail.dead_letter["id"])
        done_ids = await asyncio.to_thread(lambda: list(ops.replay_dead([dl_id], by=by)))
        if done_ids:
            return {
                "replayed": "dead",
                "source": source,
                "event_id": event_id,
                "dead_letter_id": dl_id,
            }
    status = detail.row["status"]
    if status == "ignored" and detail.body is None:
        why = "its body is no longer kept"
    elif status == "processed":
        why = "it was applied already: nothing to do"
    else:
        why = "nothing to replay"
    raise NothingToDo(f"event {source} {event_id} is {status}: {why}")


async def dead_letters(ops: Operations, q: ListQuery) -> Page:
    return await asyncio.to_thread(ops.dead_letters, q.flt, limit=q.limit, before=q.before)


async def dead_letter(ops: Operations, dead_letter_id: int) -> dict[str, Any]:
    row = await asyncio.to_thread(ops.dead_letter, dead_letter_id)
    if row is None:
        raise NotFound(f"no dead letter {dead_letter_id}")
    return row


async def existing_dead_letters(ops: Operations, ids: list[int]) -> list[int]:
    """``ids`` if every one is a dead letter; else :class:`NotFound` naming the others."""
    found = await asyncio.to_thread(ops.existing_dead_letters, ids)
    missing = sorted(set(ids) - set(found))
    if missing:
        raise NotFound(f"no dead letter {', '.join(map(str, missing))}")
    return found


async def matching_dead_letters(
    ops: Operations, action: str, flt: Filter, upto: int | None = None
) -> list[int]:
    """The ids a bulk action on "every dead letter the filter matches" takes: a replay leaves
    out those whose replay is already queued (as ``hookline dlq replay --all`` does), and
    ``upto`` (the newest id shown when the operator confirmed) leaves out what died since."""
    flt = replace(flt, status=None)
    # waiting_replay=False leaves out the dead letters queued again since they died
    every_one = action == "purge"
    ids = await asyncio.to_thread(ops.dead_letter_ids, flt, waiting_replay=every_one)
    return ids if upto is None else [i for i in ids if i <= upto]


async def rejections(ops: Operations, query: Mapping[str, str]) -> list[Rejection]:
    """Newest first, by source and reason; the reason is filtered here (Redis keeps the last
    1,000 of each source, all read when a reason is asked for)."""
    check_known(query, (*REJECTION_FILTERS, "limit"))
    source = query.get("source") or None
    reason = query.get("reason") or None
    limit = parse_limit(query.get("limit"))
    if source is not None and len(source) > MAX_SOURCE:
        raise BadInput(f"source: {source[:20]!r}... is longer than {MAX_SOURCE} characters")
    wanted = MAX_LIMIT if reason else limit
    found = await asyncio.to_thread(ops.rejections, source, wanted)
    if reason:
        found = [r for r in found if r.reason == reason]
    return found[:limit]


def parse_span(query: Mapping[str, str]) -> str:
    """The charts' ``span`` (``hour``, the default, or ``day``)."""
    from hookline.ops import ACTIVITY_SPANS

    span = query.get("span") or "hour"
    if span not in ACTIVITY_SPANS:
        raise BadInput(f"span: {span[:20]!r} is not hour or day")
    return span
