"""The ceiling for the ingress: an aiohttp app that reads the body and answers 202, nothing else.

Served exactly as ``hookline serve`` serves the ingress (``ingest.app.run``): ``web.run_app``
on a uvloop loop, one process, the same ``lingering_time``, and the access log ON with the same
format through ``logging.basicConfig(level=INFO)`` like hookline's CLI (OFF with
``--no-access-log``, as ``[ingest] access_log = false`` does for hookline), so the only
difference is the work done per request.

    python bench/bare_app.py --port 8081 [--no-access-log]
"""

from __future__ import annotations

import argparse
import logging

import uvloop
from aiohttp import web
from aiohttp.log import access_logger


async def receive(request: web.Request) -> web.Response:
    body = await request.read()
    return web.json_response({"status": "accepted", "bytes": len(body)}, status=202)


async def healthz(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def create_app() -> web.Application:
    app = web.Application(client_max_size=1_048_577)
    app.router.add_post("/webhooks/{source}", receive)
    app.router.add_get("/healthz", healthz)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument(
        "--no-access-log", action="store_true", help="as hookline's [ingest] access_log = false"
    )
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    web.run_app(
        create_app(),
        host=args.host,
        port=args.port,
        access_log=None if args.no_access_log else access_logger,
        access_log_format='%a "%r" %s %b %Tf',
        loop=uvloop.new_event_loop(),
        lingering_time=0.5,
    )


if __name__ == "__main__":
    main()
