"""The console application's typed state, shared by its pages, its API and its middleware."""

from __future__ import annotations

from aiohttp import web

from console.auth import Session, Sessions, Throttle
from console.jobs import Jobs
from hookline.ops import Operations
from shared.config import Settings

SETTINGS = web.AppKey("settings", Settings)
#: one database engine and one Redis client for the process, opened in ``cleanup_ctx``
OPS = web.AppKey("ops", Operations)
SESSIONS = web.AppKey("sessions", Sessions)
THROTTLE = web.AppKey("throttle", Throttle)
JOBS = web.AppKey("jobs", Jobs)
#: the logged-in session of a page request
SESSION = web.RequestKey("session", Session)


def ops(request: web.Request) -> Operations:
    return request.app[OPS]


def jobs(request: web.Request) -> Jobs:
    return request.app[JOBS]


def token(request: web.Request) -> str:
    value = request.app[SETTINGS].console.token
    assert value, "create_app refuses settings without a token"
    return value


def remote(request: web.Request) -> str:
    """The peer's address: what wrong tokens are counted by (the console is meant to be
    reached directly, on 127.0.0.1 or a private network, not through a proxy)."""
    return request.remote or "unknown"
