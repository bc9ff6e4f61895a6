"""A stand-in for an OpenTelemetry collector, for ``bench/run.py``'s traces phase: accepts OTLP
over HTTP (``POST /v1/traces``), answers 200 at once and counts what it received
(``GET /count``: requests and bytes), so the ingress pays for encoding and sending its spans as
it would in production, and the bench can check that spans were sent.

    python bench/otlp_sink.py --port PORT
"""

from __future__ import annotations

import argparse

from aiohttp import web

COUNTS = web.AppKey("counts", dict)


async def traces(request: web.Request) -> web.Response:
    body = await request.read()
    counts = request.app[COUNTS]
    counts["requests"] += 1
    counts["bytes"] += len(body)
    return web.Response(body=b"", content_type="application/x-protobuf")


async def count(request: web.Request) -> web.Response:
    return web.json_response(request.app[COUNTS])


async def healthz(_request: web.Request) -> web.Response:
    return web.Response(text="ok")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[COUNTS] = {"requests": 0, "bytes": 0}
    app.router.add_post("/v1/traces", traces)
    app.router.add_get("/count", count)
    app.router.add_get("/healthz", healthz)
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
