"""Reading the raw body: bounded in size and in time.

aiohttp has no timeout of its own around reading a request body, so a client that sends its
headers and then trickles bytes would hold a connection (and a coroutine) forever. The limit
is checked against ``Content-Length`` before reading anything, and again while reading for
chunked bodies, so nothing past the limit is ever read.
"""

from __future__ import annotations

import asyncio

from aiohttp import StreamReader, web

from shared.config import IngestSettings
from shared.errors import BodyTooLarge, RequestRejected


class BodyTimeout(RequestRejected):
    """The client did not send its body in time."""

    status = 408
    code = "body_timeout"
    close_connection = True


class ShuttingDown(RequestRejected):
    """The process is stopping while the body is still arriving (aiohttp reads nothing more
    once it stops): answered at once, nothing acknowledged, the provider retries."""

    status = 503
    code = "unavailable"
    close_connection = True
    retry_after = 5


class BadLength(RequestRejected):
    """``Content-Length`` is not a number."""

    status = 400
    code = "bad_content_length"


_CHUNK = 64 * 1024


class Reading:
    """The bodies being read right now, so a stopping process can answer them at once."""

    def __init__(self) -> None:
        self._streams: set[StreamReader] = set()

    async def read(self, request: web.Request, limits: IngestSettings) -> bytes:
        self._streams.add(request.content)
        try:
            return await read_body(request, limits)
        finally:
            self._streams.discard(request.content)

    def stop(self) -> None:
        """Every body still being read fails with :class:`ShuttingDown`."""
        for stream in list(self._streams):
            stream.set_exception(ShuttingDown("stopping"))


# A rejection's text is never shown: the answer and the log line carry its code only. Hence
# "no mutate" on the lines that raise one (their only mutants change that text).
async def read_body(request: web.Request, limits: IngestSettings) -> bytes:
    limit = limits.max_body_bytes
    declared = request.headers.get("Content-Length")
    if declared is not None:
        if not declared.isdigit():
            raise BadLength("bad content length")  # pragma: no mutate (text unseen)
        if int(declared) > limit:
            raise BodyTooLarge("body too large")  # pragma: no mutate (text unseen)
        if request.content.is_eof():
            # all of it arrived with the headers (the usual small webhook): nothing to wait for
            return await _read_bounded(request, limit)
    try:
        async with asyncio.timeout(limits.read_timeout_seconds):
            return await _read_bounded(request, limit)
    except TimeoutError as err:
        raise BodyTimeout("body not received in time") from err  # pragma: no mutate (text unseen)


async def _read_bounded(request: web.Request, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await request.content.read(min(_CHUNK, limit + 1 - size))
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge("body too large")  # pragma: no mutate (text unseen)
        chunks.append(chunk)
