"""The console's pages: overview, events, an event, dead letters (with bulk replay and purge
behind a confirmation), a bulk action's progress, rejections; and logging in and out."""

from __future__ import annotations

import asyncio
import json
import re
import secrets
from pathlib import Path
from typing import Any

import aiohttp_jinja2
from aiohttp import web
from markupsafe import Markup

from console import queries
from console.auth import LOGIN_COOKIE, SESSION_COOKIE, same_secret
from console.charts import Chart, Line, svg
from console.context import JOBS, SESSION, SESSIONS, SETTINGS, THROTTLE, ops, remote, token
from console.queries import (
    DEAD_LETTER_FILTERS,
    EVENT_FILTERS,
    BadInput,
    NotFound,
    NothingToDo,
    list_query,
    parse_filter,
    path_id,
)
from console.templating import segment
from hookline.ops import FIGURES, body_for_humans
from shared.eventlog import STATUSES, Page

STATIC = Path(__file__).parent / "static"
#: the part of a body a page shows; the whole body is a download
BODY_SHOWN = 64 * 1024
#: bodies larger than this are shown as they are, not parsed and pretty-printed
PRETTY_MAX = 1024 * 1024
#: seconds between two refreshes of the overview, and of a bulk action's progress
OVERVIEW_REFRESH = 5
JOB_REFRESH = 1
#: seconds between two refreshes of a replay's page while the workers run its events
OUTCOME_REFRESH = 3
#: dead letters named one by one on a confirmation page
CONFIRM_SHOWN = 20
#: the form's buttons on the dead-letter list: (action, scope)
BULK = {
    "replay-selected": ("replay", "selected"),
    "purge-selected": ("purge", "selected"),
    "replay-matching": ("replay", "matching"),
    "purge-matching": ("purge", "matching"),
}


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/login", login_form)
    r.add_post("/login", login)
    r.add_post("/logout", logout)
    r.add_get("/", overview)
    r.add_get("/events", events)
    r.add_get("/events/{source}/{event_id}", event)
    r.add_get("/events/{source}/{event_id}/body", event_body)
    r.add_post("/events/{source}/{event_id}/replay", event_replay)
    r.add_get("/dead-letters", dead_letters)
    r.add_get("/dead-letters/{id}", dead_letter)
    r.add_get("/dead-letters/{id}/body", dead_letter_body)
    r.add_post("/dead-letters/confirm", confirm)
    r.add_post("/dead-letters/run", run_bulk)
    r.add_get("/jobs/{id}", job)
    r.add_get("/rejections", rejections)
    r.add_static("/static", STATIC, append_version=False)


def render(
    request: web.Request,
    template: str,
    context: dict[str, Any],
    *,
    status: int = 200,
    nav: str = "",
    refresh: int | None = None,
) -> web.Response:
    """A page, with what the layout needs: the session's CSRF token for its forms, the
    one-shot messages, the refresh period."""
    session = request.get(SESSION)
    flash: list[str] = []
    if session is not None:
        flash, session.flash = session.flash, []
    base: dict[str, Any] = {
        "logged_in": session is not None,
        "csrf": session.csrf if session is not None else "",
        "flash": flash,
        "nav": nav,
        "refresh": refresh,
        "error": None,
    }
    return aiohttp_jinja2.render_template(template, request, {**base, **context}, status=status)


# -- logging in and out ----------------------------------------------------------------------


def _local_path(target: str | None) -> str:
    """Where to go after logging in: a path of this console, never another site."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def _login_page(
    request: web.Request, then: str | None, *, status: int = 200, message: str | None = None
) -> web.Response:
    # one nonce per browser while it has a login form open (a second tab, or the browser
    # fetching something else meanwhile, must not make the first form stale)
    nonce = request.cookies.get(LOGIN_COOKIE) or secrets.token_urlsafe(24)
    response = render(
        request,
        "login.html",
        {"nonce": nonce, "next": _local_path(then), "message": message},
        status=status,
    )
    response.set_cookie(
        LOGIN_COOKIE,
        nonce,
        httponly=True,
        samesite="Strict",
        secure=request.secure,
        path="/login",
        max_age=3600,
    )
    return response


async def login_form(request: web.Request) -> web.Response:
    if request.app[SESSIONS].get(request.cookies.get(SESSION_COOKIE)) is not None:
        raise web.HTTPSeeOther(_local_path(request.query.get("next")))
    return _login_page(request, request.query.get("next"))


async def login(request: web.Request) -> web.Response:
    form = await request.post()
    then = str(form.get("next") or "/")
    nonce = request.cookies.get(LOGIN_COOKIE)
    if not nonce or not same_secret(form.get("nonce"), nonce):
        return _login_page(
            request, then, status=403, message="the login form had expired: enter the token again"
        )
    given = form.get("token")
    ok = await request.app[THROTTLE].attempt(
        remote(request), given if isinstance(given, str) else None, token(request)
    )
    if not ok:
        # the token typed is never shown back
        return _login_page(request, then, status=401, message="wrong token")
    session = request.app[SESSIONS].create()
    response = web.HTTPSeeOther(_local_path(then))
    response.set_cookie(
        SESSION_COOKIE,
        session.id,
        httponly=True,
        samesite="Strict",
        secure=request.secure,
        path="/",
    )
    response.del_cookie(LOGIN_COOKIE, path="/login")
    raise response


async def logout(request: web.Request) -> web.Response:
    request.app[SESSIONS].drop(request.cookies.get(SESSION_COOKIE))
    response = web.HTTPSeeOther("/login")
    response.del_cookie(SESSION_COOKIE, path="/")
    raise response


# -- overview ----------------------------------------------------------------------------------


async def overview(request: web.Request) -> web.Response:
    span = queries.parse_span(request.query)
    status, activity = await asyncio.gather(
        asyncio.to_thread(ops(request).status, details=True),
        asyncio.to_thread(ops(request).activity, span),
    )
    context = {
        "status": status,
        "figures": FIGURES,
        "span": span,
        "charts": overview_charts(activity),
    }
    return render(request, "overview.html", context, nav="overview", refresh=OVERVIEW_REFRESH)


def overview_charts(data: dict[str, Any]) -> dict[str, list[tuple[str, Markup]]]:
    """The overview's charts of :meth:`~hookline.ops.Operations.activity`'s answer, by
    section: each source's requests, the workers, the queue."""
    starts, width = data["starts"], data["bucket_seconds"]
    per = "per minute" if width == 60 else f"per {width // 60} minutes"

    def chart(cid: str, title: str, unit: str, *lines: Line) -> tuple[str, Markup]:
        return title, svg(Chart(cid, title, unit, starts, width, lines))

    return {
        "sources": [
            chart(
                f"chart-source-{i}",
                f"{source}: requests {per}",
                per,
                Line("accepted", counts["accepted"]),
                Line("duplicates", counts["duplicate"]),
                Line("rejected", counts["rejected"]),
            )
            for i, (source, counts) in enumerate(data["sources"].items())
        ],
        "workers": [
            chart(
                "chart-workers",
                f"Events applied and dead-lettered {per}",
                per,
                Line("applied", data["applied"]),
                Line("dead-lettered", data["dead_lettered"]),
            ),
            chart(
                "chart-lag",
                "Lag from received to committed, seconds",
                "seconds",
                Line("mean lag", data["lag_mean_seconds"]),
                Line("max lag", data["lag_max_seconds"]),
            ),
            chart(
                "chart-depth",
                "Queue depth (sampled by the ingress)",
                "events",
                Line("queued", data["queue_depth"]),
            ),
        ],
    }


# -- events ------------------------------------------------------------------------------------


def _sources(request: web.Request) -> list[str]:
    return sorted(request.app[SETTINGS].sources)


async def events(request: web.Request) -> web.Response:
    context: dict[str, Any] = {
        "raw": {k: request.query.get(k, "") for k in EVENT_FILTERS},
        "sources": _sources(request),
        "statuses": STATUSES,
        "page": Page([]),
        "limit": queries.DEFAULT_LIMIT,
        "first_page": True,
    }
    try:
        q = list_query(request.query, EVENT_FILTERS)
    except BadInput as err:
        context["error"] = str(err)
        return render(request, "events.html", context, status=400, nav="events")
    context.update(
        page=await queries.events(ops(request), q), limit=q.limit, first_page=q.before is None
    )
    return render(request, "events.html", context, nav="events")


def shown_body(body: bytes | None) -> dict[str, Any]:
    """What a page shows of a body: pretty JSON, text, or base64 when it is not text, cut at
    :data:`BODY_SHOWN`."""
    if body is None:
        return {"kept": False}
    if len(body) > PRETTY_MAX:
        text, binary = body[:BODY_SHOWN].decode("utf-8", "replace"), False
    else:
        human = body_for_humans(body)
        binary = "body" not in human
        text = human.get("body", human.get("body_base64", ""))
    cut = len(text) > BODY_SHOWN or len(body) > PRETTY_MAX
    return {
        "kept": True,
        "size": len(body),
        "text": text[:BODY_SHOWN],
        "binary": binary,
        "cut": cut,
    }


def download(body: bytes, name: str) -> web.Response:
    """The raw bytes as an attachment of a type no browser renders: a hostile body never runs
    in the console's origin."""
    is_json = True
    try:
        json.loads(body)
    except ValueError:
        is_json = False
    filename = re.sub(r"[^A-Za-z0-9._-]", "_", name)[:120] + (".json" if is_json else ".bin")
    response = web.Response(body=body, content_type="application/octet-stream")
    response.headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    response.headers["Content-Security-Policy"] = "default-src 'none'; sandbox"
    return response


async def event(request: web.Request) -> web.Response:
    source, event_id = request.match_info["source"], request.match_info["event_id"]
    detail = await queries.event(ops(request), source, event_id)
    return render(
        request,
        "event.html",
        {"detail": detail, "row": detail.row, "body": shown_body(detail.body), "message": None},
        nav="events",
    )


async def event_body(request: web.Request) -> web.Response:
    source, event_id = request.match_info["source"], request.match_info["event_id"]
    detail = await queries.event(ops(request), source, event_id)
    if detail.body is None:
        raise NotFound(f"the body of event {source} {event_id} is no longer kept")
    return download(detail.body, f"{source}-{event_id}")


async def event_replay(request: web.Request) -> web.Response:
    source, event_id = request.match_info["source"], request.match_info["event_id"]
    try:
        done = await queries.replay_event(ops(request), source, event_id, by="console")
    except NothingToDo as err:
        detail = await queries.event(ops(request), source, event_id)
        return render(
            request,
            "event.html",
            {
                "detail": detail,
                "row": detail.row,
                "body": shown_body(detail.body),
                "message": str(err),
            },
            status=409,
            nav="events",
        )
    session = request[SESSION]
    if done["replayed"] == "dead":
        session.flash.append(
            f"dead letter {done['dead_letter_id']} queued again: a worker will run it"
        )
    else:
        session.flash.append("queued again for the handlers that exist now")
    raise web.HTTPSeeOther(f"/events/{segment(source)}/{segment(event_id)}")


# -- dead letters ------------------------------------------------------------------------------


async def dead_letters(request: web.Request) -> web.Response:
    context: dict[str, Any] = {
        "raw": {k: request.query.get(k, "") for k in DEAD_LETTER_FILTERS},
        "sources": _sources(request),
        "page": Page([]),
        "limit": queries.DEFAULT_LIMIT,
        "first_page": True,
        "jobs": request.app[JOBS].recent(5),
    }
    try:
        q = list_query(request.query, DEAD_LETTER_FILTERS)
    except BadInput as err:
        context["error"] = str(err)
        return render(request, "dead_letters.html", context, status=400, nav="dead")
    context.update(
        page=await queries.dead_letters(ops(request), q),
        limit=q.limit,
        first_page=q.before is None,
    )
    return render(request, "dead_letters.html", context, nav="dead")


async def dead_letter(request: web.Request) -> web.Response:
    row = await queries.dead_letter(ops(request), path_id(request.match_info["id"]))
    return render(
        request, "dead_letter.html", {"row": row, "body": shown_body(row["body"])}, nav="dead"
    )


async def dead_letter_body(request: web.Request) -> web.Response:
    row = await queries.dead_letter(ops(request), path_id(request.match_info["id"]))
    return download(bytes(row["body"]), f"dead-letter-{row['id']}-{row['source']}")


def _form_ids(values: list[str]) -> list[int]:
    ids: list[int] = []
    for value in values:
        parsed = queries.parse_id(value, "id")
        if parsed is not None and parsed not in ids:
            ids.append(parsed)
    return ids


def _describe(flt_raw: dict[str, str]) -> str:
    given = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in flt_raw.items() if v)
    return f"every dead letter matching {given}" if given else "every dead letter"


async def _plan(request: web.Request, form: Any) -> dict[str, Any]:
    """What a bulk form asks for: the action, and the ids it would act on now."""
    raw = {k: str(form.get(k, "")) for k in DEAD_LETTER_FILTERS}
    choice = BULK.get(str(form.get("do", "")))
    if choice is None:
        raise BadInput("do: choose replay or purge, for the selected dead letters or all")
    action, scope = choice
    if scope == "selected":
        ids = _form_ids([str(v) for v in form.getall("id", [])])
        if not ids:
            raise BadInput(
                "select at least one dead letter (or act on every one the filter matches)"
            )
        ids = await queries.existing_dead_letters(ops(request), ids)
        shown = ", ".join(map(str, ids[:CONFIRM_SHOWN]))
        more = f" and {len(ids) - CONFIRM_SHOWN} more" if len(ids) > CONFIRM_SHOWN else ""
        description = f"dead letter{'s' if len(ids) > 1 else ''} {shown}{more}"
        upto = None
    else:
        flt = parse_filter(raw, DEAD_LETTER_FILTERS)
        upto = queries.parse_id(str(form.get("upto", "")), "upto")
        ids = await queries.matching_dead_letters(ops(request), action, flt, upto)
        description = _describe(raw)
        if action == "replay":
            description += " not already queued for replay"
        upto = max(ids) if ids else upto
    return {
        "action": action,
        "scope": scope,
        "do": f"{action}-{scope}",
        "ids": ids,
        "raw": raw,
        "upto": upto,
        "description": description,
    }


async def confirm(request: web.Request) -> web.Response:
    form = await request.post()
    plan = await _plan(request, form)
    return render(request, "confirm.html", {"plan": plan}, nav="dead")


async def run_bulk(request: web.Request) -> web.Response:
    form = await request.post()
    plan = await _plan(request, form)
    if not plan["ids"]:
        raise BadInput("no dead letter matches any more: nothing to do")
    job_ = request.app[JOBS].start(plan["action"], plan["ids"], plan["description"], by="console")
    raise web.HTTPSeeOther(f"/jobs/{job_.id}")


async def job(request: web.Request) -> web.Response:
    found = request.app[JOBS].get(path_id(request.match_info["id"]))
    if found is None:
        raise NotFound(f"no job {request.match_info['id']} (jobs are kept until the console stops)")
    outcome = await asyncio.to_thread(found.outcome, ops(request))
    waiting = bool(outcome and outcome["waiting"])
    return render(
        request,
        "job.html",
        {"job": found, "outcome": outcome},
        nav="dead",
        # while it runs, and then while the workers still hold some of its events
        refresh=JOB_REFRESH if found.running else (OUTCOME_REFRESH if waiting else None),
    )


# -- rejections --------------------------------------------------------------------------------


async def rejections(request: web.Request) -> web.Response:
    context: dict[str, Any] = {
        "raw": {k: request.query.get(k, "") for k in ("source", "reason", "limit")},
        "sources": [*_sources(request), "_unknown"],
        "rows": [],
    }
    try:
        context["rows"] = await queries.rejections(ops(request), request.query)
    except BadInput as err:
        context["error"] = str(err)
        return render(request, "rejections.html", context, status=400, nav="rejections")
    return render(request, "rejections.html", context, nav="rejections")
