"""``hookline console``: the operators' web console and its JSON API, an aiohttp application
of its own (its own process and port, never the ingress's).

Pages are rendered on the server (Jinja2, autoescaped); a small script refreshes the overview
and a bulk action's progress. Every page needs a logged-in session and every API call
``Authorization: Bearer <token>`` (:mod:`console.auth`); every form that changes something
carries the session's CSRF token. Every answer carries a Content-Security-Policy that forbids
inline scripts, and the other headers in :data:`SECURITY_HEADERS`. The synchronous
:class:`~hookline.ops.Operations` calls run in threads, over one database engine and one Redis
client opened for the process in ``cleanup_ctx``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from urllib.parse import quote

from aiohttp import web
from aiohttp.log import access_logger
from redis.exceptions import RedisError
from sqlalchemy import Engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from console import api, pages, templating
from console.auth import SESSION_COOKIE, Sessions, Throttle, same_secret
from console.context import JOBS, OPS, SESSION, SESSIONS, SETTINGS, THROTTLE, remote
from console.jobs import Jobs
from console.queries import BadInput, NotFound, NothingToDo
from hookline.ops import Operations
from shared.config import Settings
from shared.db import make_engine
from shared.errors import ConfigError

log = logging.getLogger("hookline.console")

#: on every answer: no inline script can run, nothing is framed, nothing is sniffed
CSP = (
    "default-src 'self'; script-src 'self'; object-src 'none'; frame-ancestors 'none'; "
    "base-uri 'none'; form-action 'self'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
#: a form with a page of selected dead letters (1,000 ids) fits well within this
CLIENT_MAX_SIZE = 256 * 1024
#: a console query that runs longer than this is cancelled by PostgreSQL (a forgotten filter
#: must not keep a connection busy); every console query is a plain SELECT or a small delete
STATEMENT_TIMEOUT_MS = 15_000


def create_app(
    settings: Settings,
    *,
    ops: Operations | None = None,
    throttle: Throttle | None = None,
) -> web.Application:
    """Build the console. ``ops`` may be passed in (tests); otherwise its engine and Redis
    client are opened from the settings when the app starts and closed with it."""
    if not settings.console.token:
        raise ConfigError(
            'the console needs a token: [console] token = "${HOOKLINE_CONSOLE_TOKEN}"'
        )
    app = web.Application(middlewares=[_errors, _authenticate], client_max_size=CLIENT_MAX_SIZE)
    app[SETTINGS] = settings
    app[SESSIONS] = Sessions()
    app[THROTTLE] = throttle or Throttle()
    templating.setup(app)
    app.on_response_prepare.append(_security_headers)
    app.cleanup_ctx.append(_resources(settings, ops))
    pages.add_routes(app)
    api.add_routes(app)
    return app


def _engine(database_url: str) -> Engine:
    if make_url(database_url).get_backend_name() == "postgresql":
        return make_engine(
            database_url,
            pool_size=4,
            max_overflow=4,
            connect_args={"options": f"-c statement_timeout={STATEMENT_TIMEOUT_MS}"},
        )
    return make_engine(database_url)


def _resources(
    settings: Settings, given: Operations | None
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        ops = given or Operations(settings, engine=_engine(settings.database_url))
        ops.shards  # noqa: B018  # opened (and checked) now: a cluster missing slots stops it
        app[OPS] = ops
        app[JOBS] = Jobs(ops)
        yield
        await app[JOBS].close()
        if given is None:
            ops.close()

    return ctx


# -- answers --------------------------------------------------------------------------------


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if request.path.startswith("/static/"):
        response.headers.setdefault("Cache-Control", "no-cache")
    else:
        # what operators see is not kept by the browser or anything between
        response.headers["Cache-Control"] = "no-store"


def is_api(request: web.Request) -> bool:
    return request.path == "/api" or request.path.startswith("/api/")


def error(request: web.Request, status: int, code: str, message: str) -> web.StreamResponse:
    """The one shape of every refusal: JSON for the API, a page otherwise."""
    if is_api(request):
        return web.json_response({"error": code, "message": message}, status=status)
    return pages.render(
        request, "error.html", {"status": status, "message": message}, status=status
    )


_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found"}


@web.middleware
async def _errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except BadInput as err:
        return error(request, 400, "bad_request", str(err))
    except NotFound as err:
        return error(request, 404, "not_found", str(err))
    except NothingToDo as err:
        return error(request, 409, "nothing_to_do", str(err))
    except web.HTTPException as err:
        if err.status < 400:
            raise
        message = err.text if err.text and not err.text.startswith(f"{err.status}:") else err.reason
        response = error(request, err.status, _CODES.get(err.status, "error"), message)
        for name in ("WWW-Authenticate", "Allow"):
            if name in err.headers:
                response.headers[name] = err.headers[name]
        return response
    except RedisError as err:
        log.warning("console: Redis: %s", type(err).__name__)
        return error(request, 503, "unavailable", f"cannot reach Redis: {type(err).__name__}")
    except SQLAlchemyError as err:
        first = str(getattr(err, "orig", err)).strip().splitlines()[:1]
        log.warning("console: database: %s", first[0] if first else type(err).__name__)
        return error(request, 503, "unavailable", "database error: see the console's log")
    except Exception:
        log.exception("console: %s %s failed", request.method, request.path)
        return error(request, 500, "internal", "the console failed: see its log")


# -- who may come in -------------------------------------------------------------------------

PUBLIC_PREFIXES = ("/static/",)
PUBLIC_PATHS = ("/login",)


@web.middleware
async def _authenticate(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    if is_api(request):
        await _bearer(request)
        return await handler(request)
    if request.path in PUBLIC_PATHS or request.path.startswith(PUBLIC_PREFIXES):
        return await handler(request)
    session = request.app[SESSIONS].get(request.cookies.get(SESSION_COOKIE))
    if session is None:
        if request.method in ("GET", "HEAD"):
            target = "/login" if request.path == "/" else f"/login?next={quote(request.path_qs)}"
            raise web.HTTPSeeOther(target)
        raise web.HTTPForbidden(text="log in first: your session has ended")
    request[SESSION] = session
    if request.method not in ("GET", "HEAD"):
        await _check_csrf(request, session.csrf)
    return await handler(request)


async def _bearer(request: web.Request) -> None:
    """``Authorization: Bearer <token>``, or 401 (a wrong token after its delay)."""
    header = request.headers.get("Authorization")
    if header is None:
        raise web.HTTPUnauthorized(
            text="send Authorization: Bearer <token>",
            headers={"WWW-Authenticate": 'Bearer realm="hookline console"'},
        )
    scheme, _, given = header.partition(" ")
    value = given.strip() if scheme.lower() == "bearer" else None
    settings = request.app[SETTINGS]
    assert settings.console.token
    if not await request.app[THROTTLE].attempt(remote(request), value, settings.console.token):
        raise web.HTTPUnauthorized(
            text="wrong token",
            headers={"WWW-Authenticate": 'Bearer realm="hookline console", error="invalid_token"'},
        )


async def _check_csrf(request: web.Request, expected: str) -> None:
    """A state-changing page request must come from one of the console's own forms: its
    session's CSRF token in the ``csrf`` field and, where the browser says where the request
    comes from, the console itself. (With ``Referrer-Policy: no-referrer`` browsers send
    ``Origin: null`` on form posts; ``Sec-Fetch-Site`` still tells.)"""
    origin = request.headers.get("Origin")
    site = request.headers.get("Sec-Fetch-Site")
    foreign_origin = origin not in (None, "null", f"{request.scheme}://{request.host}")
    if foreign_origin or site not in (None, "same-origin", "none"):
        log.warning(
            "console: %s %s from another site (origin %.100s, %s) refused",
            request.method,
            request.path,
            origin,
            site,
        )
        raise web.HTTPForbidden(text="this request did not come from the console's own pages")
    form = await request.post()
    if not same_secret(form.get("csrf"), expected):
        log.warning(
            "console: %s %s without a valid CSRF token from %s",
            request.method,
            request.path,
            remote(request),
        )
        raise web.HTTPForbidden(
            text="this form has expired or did not come from the console: reload the page"
            " and try again"
        )


def run(settings: Settings, host: str, port: int, *, access_log: bool = True) -> None:
    """``hookline console`` (``access_log=False``: ``hookline dev``'s, which would otherwise
    log the overview's refresh every five seconds, and whose banner gives the console's URL:
    it is not said twice)."""
    if access_log:
        log.info("console: http://%s:%d/ (log in with the [console] token)", host, port)
    web.run_app(
        create_app(settings),
        host=host,
        port=port,
        access_log=access_logger if access_log else None,
        access_log_format='%a "%r" %s %b %Tf',  # never a header: no cookie, no token
        print=None,
    )
