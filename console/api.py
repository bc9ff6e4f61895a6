"""The console's JSON API, for scripts: the same queries and actions as the pages, under
``/api/``, with ``Authorization: Bearer <token>``. Errors are ``{"error": code, "message":
text}`` with the status the README lists."""

from __future__ import annotations

import asyncio
import json
from functools import partial
from typing import Any

from aiohttp import web

from console import queries
from console.context import JOBS, ops
from console.pages import download
from console.queries import (
    DEAD_LETTER_FILTERS,
    EVENT_FILTERS,
    BadInput,
    NotFound,
    list_query,
    parse_filter,
    path_id,
)
from hookline.ops import dead_letter_json, event_json
from shared.times import json_default

#: ids one bulk request may name; more go by filter (``"all": true``)
MAX_IDS = 10_000


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/api/status", status)
    r.add_get("/api/activity", activity)
    r.add_get("/api/events", events)
    r.add_get("/api/events/{source}/{event_id}", event)
    r.add_get("/api/events/{source}/{event_id}/body", event_body)
    r.add_post("/api/events/{source}/{event_id}/replay", event_replay)
    r.add_get("/api/dead-letters", dead_letters)
    r.add_get("/api/dead-letters/{id}", dead_letter)
    r.add_get("/api/dead-letters/{id}/body", dead_letter_body)
    r.add_post("/api/dead-letters/replay", partial(bulk, "replay"))
    r.add_post("/api/dead-letters/purge", partial(bulk, "purge"))
    r.add_get("/api/jobs/{id}", job)
    r.add_get("/api/rejections", rejections)


def answer(data: Any, status: int = 200) -> web.Response:
    return web.json_response(
        data, status=status, dumps=partial(json.dumps, default=json_default, ensure_ascii=False)
    )


async def status(request: web.Request) -> web.Response:
    return answer(await asyncio.to_thread(ops(request).status, details=True))


async def activity(request: web.Request) -> web.Response:
    queries.check_known(request.query, ("span",))
    span = queries.parse_span(request.query)
    return answer(await asyncio.to_thread(ops(request).activity, span))


async def events(request: web.Request) -> web.Response:
    q = list_query(request.query, EVENT_FILTERS)
    page = await queries.events(ops(request), q)
    return answer({"events": page.rows, "next_before": page.next_before})


async def event(request: web.Request) -> web.Response:
    detail = await queries.event(
        ops(request), request.match_info["source"], request.match_info["event_id"]
    )
    return answer(event_json(detail))


async def event_body(request: web.Request) -> web.Response:
    source, event_id = request.match_info["source"], request.match_info["event_id"]
    detail = await queries.event(ops(request), source, event_id)
    if detail.body is None:
        raise NotFound(f"the body of event {source} {event_id} is no longer kept")
    return download(detail.body, f"{source}-{event_id}")


async def event_replay(request: web.Request) -> web.Response:
    done = await queries.replay_event(
        ops(request), request.match_info["source"], request.match_info["event_id"], by="api"
    )
    return answer(done, status=202)


async def dead_letters(request: web.Request) -> web.Response:
    q = list_query(request.query, DEAD_LETTER_FILTERS)
    page = await queries.dead_letters(ops(request), q)
    return answer({"dead_letters": page.rows, "next_before": page.next_before})


async def dead_letter(request: web.Request) -> web.Response:
    row = await queries.dead_letter(ops(request), path_id(request.match_info["id"]))
    return answer(dead_letter_json(row))


async def dead_letter_body(request: web.Request) -> web.Response:
    row = await queries.dead_letter(ops(request), path_id(request.match_info["id"]))
    return download(bytes(row["body"]), f"dead-letter-{row['id']}-{row['source']}")


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        data = await request.json()
    except ValueError:
        raise BadInput("the body must be a JSON object") from None
    if not isinstance(data, dict):
        raise BadInput("the body must be a JSON object")
    return data


def _ids(value: Any) -> list[int]:
    if not isinstance(value, list) or not value:
        raise BadInput("ids: a non-empty list of dead letter ids")
    if len(value) > MAX_IDS:
        raise BadInput(f'ids: at most {MAX_IDS}; use "all": true with filters for more')
    ids: list[int] = []
    for item in value:
        if isinstance(item, bool) or not isinstance(item, int) or not 1 <= item <= queries.MAX_ID:
            raise BadInput(f"ids: {item!r} is not a dead letter id")
        if item not in ids:
            ids.append(item)
    return ids


async def bulk(action: str, request: web.Request) -> web.Response:
    """``{"ids": [...]}``, or ``{"all": true}`` with filters (source, type, since, until,
    event_id): 202 and the job, whose progress ``/api/jobs/ID`` shows. An id that is not a
    dead letter is 404 and nothing is done."""
    data = await _json_body(request)
    allowed = {"ids", "all", *DEAD_LETTER_FILTERS}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise BadInput(f"unknown field {unknown[0]!r}")
    every = data.get("all", False)
    if not isinstance(every, bool):
        raise BadInput("all: true or false")
    if every == ("ids" in data):
        raise BadInput('give "ids", or "all": true with filters (not both)')
    if every:
        raw = {k: data.get(k) for k in DEAD_LETTER_FILTERS}
        if any(v is not None and not isinstance(v, str) for v in raw.values()):
            raise BadInput("filters are strings")
        flt = parse_filter({k: v for k, v in raw.items() if v is not None}, DEAD_LETTER_FILTERS)
        ids = await queries.matching_dead_letters(ops(request), action, flt)
        given = ", ".join(f"{k} {v}" for k, v in raw.items() if v)
        description = f"every dead letter matching {given}" if given else "every dead letter"
    else:
        ids = await queries.existing_dead_letters(ops(request), _ids(data["ids"]))
        description = f"dead letters {', '.join(map(str, ids[:20]))}" + (
            f" and {len(ids) - 20} more" if len(ids) > 20 else ""
        )
    started = request.app[JOBS].start(action, ids, description, by="api")
    return answer({"job": started.to_json(), "url": f"/api/jobs/{started.id}"}, status=202)


async def job(request: web.Request) -> web.Response:
    found = request.app[JOBS].get(path_id(request.match_info["id"]))
    if found is None:
        raise NotFound(f"no job {request.match_info['id']}")
    outcome = await asyncio.to_thread(found.outcome, ops(request))
    return answer(found.to_json(outcome))


async def rejections(request: web.Request) -> web.Response:
    found = await queries.rejections(ops(request), request.query)
    return answer([r.to_json() for r in found])
