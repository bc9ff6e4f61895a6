"""The operators' web console as operators and scripts use it: its pages and its JSON API
served by the real application (aiohttp's test server on a real port), over a real Redis and
SQLite / PostgreSQL, with events produced by the ingress's own enqueue script and hookline's
worker. Every security measure is tested by what a user or an attacker would see."""

from __future__ import annotations

import asyncio
import html as html_module
import json
import logging
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient
from multidict import CIMultiDict
from rq import Queue, Worker
from sqlalchemy import Engine, event, select
from yarl import URL

from console.app import CSP, create_app
from console.auth import SESSION_COOKIE, Throttle
from hookline.ops import Operations
from shared.config import Settings, load_settings
from shared.db import dead_letters, make_engine, webhook_events
from shared.enqueue import JobSpec, claim
from shared.envelope import Envelope, redact_headers
from shared.eventlog import Filter
from shared.locators import locate
from shared.rqcompat import JobSerializer
from shared.traffic import Rejection, Traffic
from tests.helpers import SECRET_VALUES, SOURCES, signed
from tests.processes import env_for, hookline
from tests.test_worker import deliver, run_worker
from workers import runtime

#: the console token of these tests; the suite fails on any log line holding it (conftest)
TOKEN = "console-test-token-7f3a9c1e55"
SECRET_VALUES.append(TOKEN)
BEARER = {"Authorization": f"Bearer {TOKEN}"}

HOSTILE_SCRIPT = "<script>window.__xss = 1</script>"
HOSTILE_IMG = '"><img src=x onerror="window.__xss = 2">'


def config_text(redis_url: str, database_url: str, console: str = "") -> str:
    return f"""
redis_url = "{redis_url}"
database_url = "{database_url}"

[worker]
handlers = ["tests.handlers_for_tests"]
max_attempts = 2
backoff_seconds = [0]

{console}

[sources.moncash]
scheme = "moncash"
secrets = {json.dumps(SOURCES["moncash"]["secrets"])}

[sources.flaky]
scheme = "hmac"
secrets = ["f"]
event_id = "json:id"
event_type = "json:type"

[sources.poison]
scheme = "hmac"
secrets = ["p"]
event_id = "json:id"
event_type = "json:type"

[sources.late]
scheme = "hmac"
secrets = ["l"]
event_id = "json:id"
event_type = "json:type"
"""


CONSOLE_VAR = '"${HOOKLINE_CONSOLE_TOKEN}"'
CONSOLE_SECTION = f"[console]\ntoken = {CONSOLE_VAR}"


@pytest.fixture
def env(
    tmp_path: Path, redis_url: str, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> dict[str, Any]:
    monkeypatch.setenv("HOOKLINE_TEST_STATE", str(tmp_path))
    config = tmp_path / "hookline.toml"
    config.write_text(config_text(redis_url, database_url, CONSOLE_SECTION))
    settings = load_settings(config, environ={"HOOKLINE_CONSOLE_TOKEN": TOKEN})
    runtime.configure(settings)
    return {"config": config, "settings": settings, "state": tmp_path}


@pytest.fixture
def settings(env: dict[str, Any]) -> Settings:
    s: Settings = env["settings"]
    return s


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    engine = make_engine(settings.database_url)
    yield engine
    engine.dispose()


#: wrong tokens are slowed down in these tests too, by less
FAST_THROTTLE = {"base": 0.01, "ceiling": 0.02}


@pytest.fixture
async def client(aiohttp_client: Any, settings: Settings) -> TestClient:
    app = create_app(settings, throttle=Throttle(**FAST_THROTTLE))
    c: TestClient = await aiohttp_client(app)
    return c


def body(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc).encode()


def deliver_with_headers(
    client: redis.Redis, settings: Settings, source: str, payload: bytes, extra: dict[str, str]
) -> str:
    """An authentic delivery that also carries ``extra`` headers (as a provider might)."""
    payload, headers, _ = signed(settings, source, body=payload)
    headers.update(extra)
    src = settings.sources[source]
    event_id = locate(src.event_id, CIMultiDict(headers), payload)
    assert event_id is not None
    envelope = Envelope(
        source=source,
        event_id=event_id,
        received_at=time.time(),
        headers=redact_headers(headers.items(), src.scheme.sensitive()),
        body=payload,
    )
    claim(client, envelope, JobSpec.from_settings(settings))
    return event_id


def make_dead(
    redis_client: redis.Redis, settings: Settings, state: Path, *event_ids: str
) -> list[int]:
    """Dead letters from the "flaky" source (each fails every attempt); their ids."""
    for event_id in event_ids:
        (state / f"fail_{event_id}").write_text("99")
        deliver(redis_client, settings, "flaky", body=body({"id": event_id, "type": "order"}))
    run_worker(redis_client, settings)
    ops = Operations(settings, redis=redis_client)
    try:
        found = {r["event_id"]: r["id"] for r in ops.dead_letters(Filter(), limit=1000).rows}
    finally:
        ops.close()
    return [found[e] for e in event_ids]


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, "no CSRF field on the page"
    return match.group(1)


async def login(client: TestClient, token: str = TOKEN, then: str = "/") -> Any:
    page = await client.get("/login")
    nonce = re.search(r'name="nonce" value="([^"]+)"', await page.text())
    assert nonce
    return await client.post(
        "/login",
        data={"token": token, "nonce": nonce.group(1), "next": then},
        allow_redirects=False,
    )


async def logged_in(client: TestClient) -> str:
    """Log in; the session's CSRF token."""
    response = await login(client)
    assert response.status == 303, await response.text()
    page = await client.get("/events")
    assert page.status == 200
    return csrf_of(await page.text())


async def wait_job(client: TestClient, job_id: int, timeout: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answer = await client.get(f"/api/jobs/{job_id}", headers=BEARER)
        job: dict[str, Any] = await answer.json()
        if job["state"] != "running":
            return job
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} still running after {timeout} s")


def dead_rows(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [
            dict(r._mapping) for r in conn.execute(select(dead_letters).order_by(dead_letters.c.id))
        ]


def event_status(engine: Engine, source: str, event_id: str) -> str | None:
    with engine.connect() as conn:
        return conn.execute(
            select(webhook_events.c.status).where(
                webhook_events.c.source == source, webhook_events.c.event_id == event_id
            )
        ).scalar()


def queued(redis_client: redis.Redis, settings: Settings) -> int:
    return int(Queue(settings.queue, connection=redis_client, serializer=JobSerializer).count)


# -- starting it -------------------------------------------------------------------------------


def test_hookline_console_refuses_to_start_without_a_token(tmp_path: Path, redis_url: str) -> None:
    # Given a configuration without [console], and one whose token's variable is not set
    bare = tmp_path / "bare.toml"
    bare.write_text(config_text(redis_url, f"sqlite:///{tmp_path / 'h.db'}"))
    unset = tmp_path / "unset.toml"
    unset.write_text(config_text(redis_url, f"sqlite:///{tmp_path / 'h.db'}", CONSOLE_SECTION))
    for config, expected in (
        (
            bare,
            'hookline: the console needs a token: [console] token = "${HOOKLINE_CONSOLE_TOKEN}",'
            " or HOOKLINE_CONSOLE_TOKEN in the environment",
        ),
        (
            unset,
            "hookline: configuration error: console.token: environment variable"
            " HOOKLINE_CONSOLE_TOKEN is not set",
        ),
    ):
        # When an operator runs `hookline console`
        done = subprocess.run(
            hookline("console", "--config", str(config), "--port", "0"),
            env=env_for(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        # Then it stops at once: exit status 2, one line
        assert done.returncode == 2, done.stdout + done.stderr
        assert done.stderr.splitlines() == [expected]
    # And a token shorter than 16 characters is refused without being echoed
    short = tmp_path / "short.toml"
    short.write_text(config_text(redis_url, "sqlite://", '[console]\ntoken = "tiny-secret"'))
    done = subprocess.run(
        hookline("console", "--config", str(short)),
        env=env_for(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2 and len(done.stderr.splitlines()) == 1
    assert "tiny-secret" not in done.stderr + done.stdout


# -- authentication ----------------------------------------------------------------------------

PAGES = [
    "/",
    "/events",
    "/events/flaky/e-1",
    "/events/flaky/e-1/body",
    "/dead-letters",
    "/dead-letters/1",
    "/dead-letters/1/body",
    "/jobs/1",
    "/rejections",
    "/nowhere",
]
API_GETS = [
    "/api/status",
    "/api/events",
    "/api/events/flaky/e-1",
    "/api/events/flaky/e-1/body",
    "/api/dead-letters",
    "/api/dead-letters/1",
    "/api/dead-letters/1/body",
    "/api/jobs/1",
    "/api/rejections",
    "/api/nowhere",
]
API_POSTS = [
    "/api/events/flaky/e-1/replay",
    "/api/dead-letters/replay",
    "/api/dead-letters/purge",
]
PAGE_POSTS = [
    "/events/flaky/e-1/replay",
    "/dead-letters/confirm",
    "/dead-letters/run",
    "/logout",
]


async def test_every_page_and_api_call_needs_the_token(
    client: TestClient, redis_client: redis.Redis, settings: Settings, env: dict[str, Any]
) -> None:
    # Given a dead letter, and nobody logged in
    [dl_id] = make_dead(redis_client, settings, env["state"], "e-1")
    assert dl_id == 1
    # Then every page sends to the login form, coming back to where it was asked
    for path in PAGES:
        answer = await client.get(path, allow_redirects=False)
        assert answer.status == 303, path
        assert answer.headers["Location"].startswith("/login"), path
    answer = await client.get("/events?source=flaky", allow_redirects=False)
    assert URL(answer.headers["Location"]).query["next"] == "/events?source=flaky"
    # And a made-up session cookie is no session
    client.session.cookie_jar.update_cookies({SESSION_COOKIE: "made-up"})
    assert (await client.get("/", allow_redirects=False)).status == 303
    # And every form post is refused, changing nothing
    for path in PAGE_POSTS:
        answer = await client.post(path, data={"do": "purge-matching", "csrf": "x"})
        assert answer.status == 403, path
    # And every API call without the token, or with another one, is 401 in JSON
    for headers in ({}, {"Authorization": "Bearer not-the-token-at-all"}, {"Authorization": TOKEN}):
        for path in API_GETS:
            answer = await client.get(path, headers=headers)
            assert answer.status == 401, (path, headers)
            assert (await answer.json())["error"] == "unauthorized"
            assert answer.headers["WWW-Authenticate"].startswith("Bearer")
        for path in API_POSTS:
            answer = await client.post(path, json={"all": True}, headers=headers)
            assert answer.status == 401, (path, headers)
    # Nothing changed
    assert len(dead_rows(make_engine(settings.database_url))) == 1
    # And only the login page and the static files are served without a session
    assert (await client.get("/login")).status == 200
    assert (await client.get("/static/console.js")).status == 200


async def test_login_gives_a_random_httponly_strict_session_and_logout_ends_it(
    client: TestClient,
) -> None:
    # When an operator logs in with the token, from a link that would lead elsewhere
    answer = await login(client, then="//evil.example/")
    # Then the answer sets a session cookie: random, HttpOnly, SameSite=Strict, never the token
    # and leads to the console's own overview
    assert answer.status == 303 and answer.headers["Location"] == "/"
    cookies = answer.headers.getall("Set-Cookie")
    [session] = [c for c in cookies if c.startswith(SESSION_COOKIE + "=")]
    assert "HttpOnly" in session and "SameSite=Strict" in session and "Path=/" in session
    value = session.split(";", 1)[0].split("=", 1)[1]
    assert len(value) >= 40 and value != TOKEN and TOKEN not in " ".join(cookies)
    # And the pages are open to it, and none shows the token
    for path in ("/", "/events", "/dead-letters", "/rejections"):
        page = await client.get(path)
        assert page.status == 200, path
        assert TOKEN not in await page.text()
    # And the login form, asked again, goes to the overview
    again = await client.get("/login", allow_redirects=False)
    assert again.status == 303 and again.headers["Location"] == "/"
    # When the operator logs out (with the page's CSRF token)
    page = await client.get("/events")
    out = await client.post("/logout", data={"csrf": csrf_of(await page.text())})
    # Then the session is gone
    assert out.status == 200 and "Log in" in await out.text()
    assert (await client.get("/events", allow_redirects=False)).status == 303


async def test_a_wrong_token_is_refused_and_never_shown_back(client: TestClient) -> None:
    # When someone types a wrong token in the login form
    answer = await login(client, "wrong-token-<b>typed</b>")
    # Then the form comes back, 401, saying so, without what was typed, and with no session
    assert answer.status == 401
    text = await answer.text()
    assert "wrong token" in text and "typed" not in text
    assert not [c for c in answer.headers.getall("Set-Cookie", []) if SESSION_COOKIE in c]
    assert (await client.get("/", allow_redirects=False)).status == 303
    # And a login post without the form's nonce is refused even with the right token
    forged = await client.post(
        "/login", data={"token": TOKEN, "nonce": "guessed"}, allow_redirects=False
    )
    assert forged.status == 403
    assert (await client.get("/", allow_redirects=False)).status == 303


def test_the_delay_doubles_with_each_wrong_token_and_is_bounded() -> None:
    throttle = Throttle()
    assert [throttle.delay(n) for n in range(0, 8)] == [0, 0.5, 1, 2, 4, 8, 10, 10]
    assert throttle.delay(10_000) == 10


async def test_wrong_tokens_are_slowed_down_per_address_on_the_form_and_the_api(
    aiohttp_client: Any, settings: Settings
) -> None:
    # Given the console with a delay of 0.1 s doubling up to 0.4 s
    client: TestClient = await aiohttp_client(
        create_app(settings, throttle=Throttle(base=0.1, ceiling=0.4))
    )
    wrong = {"Authorization": "Bearer wrong-token-000000000"}
    # When one address sends wrong tokens to the API, then to the login form
    took = []
    for _ in range(3):
        start = time.monotonic()
        assert (await client.get("/api/status", headers=wrong)).status == 401
        took.append(time.monotonic() - start)
    start = time.monotonic()
    assert (await login(client, "wrong-token-again")).status == 401
    took.append(time.monotonic() - start)
    # Then each answer waits longer than the one before, up to the ceiling
    for got, least in zip(took, (0.1, 0.2, 0.4, 0.4), strict=True):
        assert got >= least * 0.95, took
    assert took[3] < 1.5
    # And wrong tokens sent at once are answered one after the other
    start = time.monotonic()
    answers = await asyncio.gather(*(client.get("/api/status", headers=wrong) for _ in range(3)))
    assert [a.status for a in answers] == [401] * 3
    assert time.monotonic() - start >= 3 * 0.4 * 0.95
    # And the right token is let in, which resets the count
    assert (await client.get("/api/status", headers=BEARER)).status == 200
    start = time.monotonic()
    assert (await client.get("/api/status", headers=wrong)).status == 401
    assert 0.1 * 0.95 <= time.monotonic() - start < 0.4


async def test_the_token_never_reaches_a_log_line_or_a_page(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    # When an operator logs in wrongly, then rightly, and a script calls the API both ways
    await login(client, TOKEN + "x")
    await login(client)
    pages = [await (await client.get(p)).text() for p in ("/", "/events", "/dead-letters")]
    await client.get("/api/status", headers={"Authorization": f"Bearer {TOKEN}x"})
    api = await (await client.get("/api/status", headers=BEARER)).text()
    # Then no log line and no page holds the token (nor the wrong one, which contains it)
    assert caplog.records, "expected log lines (the wrong tokens are logged by address)"
    for record in caplog.records:
        assert TOKEN not in record.getMessage()
    assert any("wrong token from" in r.getMessage() for r in caplog.records)
    for text in [*pages, api]:
        assert TOKEN not in text


# -- CSRF ----------------------------------------------------------------------------------------


async def test_a_form_post_without_the_sessions_csrf_token_is_refused_and_changes_nothing(
    client: TestClient,
    aiohttp_client: Any,
    settings: Settings,
    env: dict[str, Any],
    redis_client: redis.Redis,
    engine: Engine,
) -> None:
    # Given a dead letter and an operator logged in
    [dl_id] = make_dead(redis_client, settings, env["state"], "c-1")
    csrf = await logged_in(client)
    # And another session's CSRF token (another browser, logged in too)
    other: TestClient = await aiohttp_client(create_app(settings))
    other_csrf = await logged_in(other)
    purge = {"do": "purge-selected", "id": str(dl_id)}
    for form, headers in (
        (purge, {}),  # no token
        ({**purge, "csrf": "0" * 43}, {}),  # a wrong one
        ({**purge, "csrf": other_csrf}, {}),  # another session's
        ({**purge, "csrf": csrf}, {"Origin": "http://evil.example"}),  # from another site
        ({**purge, "csrf": csrf}, {"Sec-Fetch-Site": "cross-site"}),
    ):
        # When the purge is posted that way, to the confirmation and to the action itself
        for path in ("/dead-letters/run", "/dead-letters/confirm"):
            answer = await client.post(path, data=form, headers=headers, allow_redirects=False)
            # Then it is refused, saying why
            assert answer.status == 403, (path, form, headers)
            assert "did not come from the console" in await answer.text()
    # And the dead letter is still there, unreplayed
    [row] = dead_rows(engine)
    assert row["id"] == dl_id and row["replays"] == 0
    # And so are the replay of an event and the logout
    answer = await client.post("/events/flaky/c-1/replay", data={"csrf": "nope"})
    assert answer.status == 403 and queued(redis_client, settings) == 0
    assert (await client.post("/logout", data={})).status == 403
    assert (await client.get("/dead-letters")).status == 200  # still logged in
    # When it is posted with the right token, it goes through
    answer = await client.post(
        "/dead-letters/run", data={**purge, "csrf": csrf}, allow_redirects=False
    )
    assert answer.status == 303
    await wait_job(client, int(answer.headers["Location"].rsplit("/", 1)[1]))
    assert dead_rows(engine) == []


# -- what is shown, and how -------------------------------------------------------------------


async def test_hostile_bodies_and_headers_are_shown_as_text(
    client: TestClient, redis_client: redis.Redis, settings: Settings, env: dict[str, Any]
) -> None:
    # Given an ignored event whose type, body and headers hold markup, and a dead one too
    hostile = body({"id": "x-1", "type": HOSTILE_SCRIPT, "note": HOSTILE_IMG})
    deliver_with_headers(
        redis_client, settings, "late", hostile, {"X-Note": HOSTILE_IMG, "X-Script": HOSTILE_SCRIPT}
    )
    (env["state"] / "fail_x-2").write_text("99")
    deliver(redis_client, settings, "flaky", body=body({"id": "x-2", "type": HOSTILE_IMG}))
    run_worker(redis_client, settings)
    await logged_in(client)
    # When the operator opens the lists and the events
    for path in (
        "/events",
        "/events/late/x-1",
        "/dead-letters",
        "/dead-letters/1",
        "/events?type=" + HOSTILE_SCRIPT,
    ):
        page = await client.get(path)
        assert page.status == 200, path
        html = await page.text()
        # Then the markup is there as text only: escaped, never as a tag or an attribute
        assert "<script>window" not in html and "<img" not in html, path
    html = await (await client.get("/events/late/x-1")).text()
    assert "&lt;script&gt;window.__xss = 1&lt;/script&gt;" in html
    assert "&#34;&gt;&lt;img src=x onerror=&#34;window.__xss = 2&#34;&gt;" in html
    # And the only script any page loads is the console's own file
    assert re.findall(r"<script[^>]*>", html) == ['<script src="/static/console.js" defer>']


async def test_every_answer_carries_the_security_headers(
    client: TestClient, redis_client: redis.Redis, settings: Settings
) -> None:
    deliver(redis_client, settings, "late", body=body({"id": "h-1", "type": "t"}))
    run_worker(redis_client, settings)
    anonymous = [await client.get(p, allow_redirects=False) for p in ("/login", "/", "/nowhere")]
    await logged_in(client)
    answers = [
        *anonymous,
        await client.get("/"),
        await client.get("/events/late/h-1"),
        await client.get("/events/late/nothing"),
        await client.get("/static/console.css"),
        await client.get("/api/status", headers=BEARER),
        await client.get("/api/status"),
        await client.get("/api/events?since=soon", headers=BEARER),
    ]
    for answer in answers:
        h = answer.headers
        assert h["Content-Security-Policy"] == CSP, answer.url
        assert "script-src 'self'" in h["Content-Security-Policy"]
        assert h["X-Content-Type-Options"] == "nosniff"
        assert h["Referrer-Policy"] == "no-referrer"
        assert h["X-Frame-Options"] == "DENY"
    assert answers[4].headers["Cache-Control"] == "no-store"


async def test_a_body_downloads_as_raw_bytes_that_no_browser_renders(
    client: TestClient, redis_client: redis.Redis, settings: Settings, env: dict[str, Any]
) -> None:
    # Given an ignored event whose body holds an HTML page
    page = b"<html><body><script>alert(1)</script></body></html>"
    await logged_in(client)
    raw = body({"id": "d-1", "type": "t", "html": page.decode()})
    deliver(redis_client, settings, "late", body=raw)
    run_worker(redis_client, settings)
    for path in ("/events/late/d-1/body", "/api/events/late/d-1/body"):
        # When the body is downloaded (page or API)
        answer = await client.get(path, headers=BEARER)
        # Then it is the raw bytes, as an attachment of a type that is never rendered
        assert answer.status == 200, path
        assert await answer.read() == raw
        assert answer.headers["Content-Type"] == "application/octet-stream"
        assert answer.headers["Content-Disposition"] == 'attachment; filename="late-d-1.json"'
        assert answer.headers["X-Content-Type-Options"] == "nosniff"
        assert "sandbox" in answer.headers["Content-Security-Policy"]


async def test_a_large_body_is_cut_on_the_page_and_whole_in_the_download(
    client: TestClient, redis_client: redis.Redis, settings: Settings
) -> None:
    big = body({"id": "big-1", "type": "t", "items": ["x" * 100] * 1000})
    deliver(redis_client, settings, "late", body=big)
    run_worker(redis_client, settings)
    await logged_in(client)
    html = await (await client.get("/events/late/big-1")).text()
    assert "Only the first 64 KB are shown" in html
    shown = re.search(r'<pre class="body" id="body">(.*?)</pre>', html, re.S)
    assert shown and len(html_module.unescape(shown.group(1))) == 64 * 1024
    assert '{\n  "id": "big-1"' in html_module.unescape(shown.group(1))  # pretty-printed
    download = await client.get("/events/late/big-1/body")
    assert await download.read() == big


# -- events ----------------------------------------------------------------------------------


@pytest.fixture
def statements(engine: Engine) -> Iterator[list[str]]:
    """Every SQL statement the console sends through ``engine``."""
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_args: Any) -> None:
        # SQLite's dialect writes every LIMIT as "LIMIT ? OFFSET ?", with an offset of 0
        if statement.rstrip().endswith("OFFSET ?") and list(parameters)[-1] == 0:
            statement = statement.rstrip()[: -len("OFFSET ?")]
        seen.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    yield seen
    event.remove(engine, "before_cursor_execute", record)


async def test_events_filter_and_page_by_id_without_offset_or_count(
    aiohttp_client: Any,
    settings: Settings,
    engine: Engine,
    redis_client: redis.Redis,
    env: dict[str, Any],
    statements: list[str],
) -> None:
    # Given seven processed events, two ignored ones and a dead one
    for i in range(7):
        deliver(redis_client, settings, "moncash", n=i)
    for i in range(2):
        deliver(redis_client, settings, "late", body=body({"id": f"l-{i}", "type": "new.thing"}))
    (env["state"] / "fail_f-1").write_text("99")
    deliver(redis_client, settings, "flaky", body=body({"id": "f-1", "type": "order"}))
    run_worker(redis_client, settings)
    ops = Operations(settings, engine=engine, redis=redis_client)
    client: TestClient = await aiohttp_client(create_app(settings, ops=ops))
    statements.clear()
    # When a script pages through every event, three at a time
    seen: list[int] = []
    before: int | None = None
    while True:
        answer = await client.get(
            "/api/events",
            params={"limit": 3, **({"before": before} if before else {})},
            headers=BEARER,
        )
        page = await answer.json()
        seen += [e["id"] for e in page["events"]]
        before = page["next_before"]
        if before is None:
            break
    # Then it sees each once, newest first
    assert len(seen) == 10 and seen == sorted(seen, reverse=True)

    # And the filters narrow the list
    async def ids(**params: str) -> list[tuple[str, str]]:
        answer = await client.get("/api/events", params=params, headers=BEARER)
        assert answer.status == 200, await answer.text()
        return [(e["source"], e["status"]) for e in (await answer.json())["events"]]

    assert await ids(status="dead") == [("flaky", "dead")]
    assert await ids(source="late") == [("late", "ignored")] * 2
    assert await ids(type="new.thing", status="ignored") == [("late", "ignored")] * 2
    assert await ids(event_id="l-1") == [("late", "ignored")]
    assert await ids(since="1") == await ids()  # received within the last day
    assert await ids(until="2000-01-01") == []
    # And the page shows the same, with a link to the next page that keeps the filter
    await logged_in(client)
    html = await (await client.get("/events?source=moncash&limit=5")).text()
    assert html.count('class="event-link"') == 5
    older = re.search(r'href="/events\?([^"]+)" id="older"', html)
    assert older and "source=moncash" in older.group(1) and "before=" in older.group(1)
    nxt = await client.get("/events?" + older.group(1).replace("&amp;", "&"))
    assert (await nxt.text()).count('class="event-link"') == 2
    # And no statement was anything but a plain SELECT: no OFFSET, no COUNT, no lock
    reads = [s for s in statements if "webhook_events" in s]
    assert reads
    for sql in reads:
        text = " ".join(sql.split()).upper()
        assert text.startswith("SELECT"), sql
        assert "OFFSET" not in text and "COUNT(" not in text and "FOR UPDATE" not in text, sql


async def test_an_events_timeline_headers_and_body_are_shown(
    client: TestClient, redis_client: redis.Redis, settings: Settings, env: dict[str, Any]
) -> None:
    # Given an event that failed once, then was processed
    (env["state"] / "fail_t-1").write_text("1")
    deliver(redis_client, settings, "flaky", body=body({"id": "t-1", "type": "order"}))
    run_worker(redis_client, settings)
    run_worker(redis_client, settings)
    deliver(redis_client, settings, "moncash", n=1)
    run_worker(redis_client, settings)
    await logged_in(client)
    html = await (await client.get("/events/flaky/t-1")).text()
    # Then its page shows each step, its body pretty-printed, and no replay button
    steps = re.findall(r"<strong>(.*?)</strong>", html)
    assert steps == ["received", "attempt 1 failed", "processed (attempt 2)"]
    # with its times as the CLI prints them, UTC with its zone
    times = re.findall(r"<time>([^<]*)</time>", html)
    assert len(times) == 3
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", t) for t in times), times
    assert "transient failure, 0 more to come" in html
    assert "&#34;id&#34;: &#34;t-1&#34;" in html
    assert 'id="replay"' not in html and "nothing to replay" in html
    # And a payment provider's signature header is shown redacted
    [moncash] = (await (await client.get("/api/events?source=moncash", headers=BEARER)).json())[
        "events"
    ]
    html = await (await client.get(f"/events/moncash/{moncash['event_id']}")).text()
    assert "<th>X-MCC-Signature</th><td>[redacted]</td>" in html


# -- bad input ------------------------------------------------------------------------------


async def test_bad_input_gets_a_clear_answer_and_changes_nothing(
    client: TestClient,
    redis_client: redis.Redis,
    settings: Settings,
    env: dict[str, Any],
    engine: Engine,
) -> None:
    [dl_id] = make_dead(redis_client, settings, env["state"], "b-1")
    deliver(redis_client, settings, "moncash", n=1)
    run_worker(redis_client, settings)
    await logged_in(client)
    bad_filters = {
        "since=yesterday": "since: 'yesterday' is neither an ISO 8601 time nor days",
        "until=-3": "until: '-3' is not a number of days",
        "status=lost": "status: 'lost' is not one of processed, ignored, dead",
        "before=abc": "before: 'abc' is not a row id",
        "before=99999999999999999999999": "is not a row id",
        "limit=0": "limit: '0' is not a number from 1 to 1000",
        "colour=red": "unknown parameter 'colour'",
    }
    for query, message in bad_filters.items():
        # When a filter cannot be understood (page or API)
        page = await client.get(f"/events?{query}")
        api = await client.get(f"/api/events?{query}", headers=BEARER)
        # Then the answer is 400, naming it
        assert page.status == 400 and api.status == 400, query
        assert message in (await page.text()).replace("&#39;", "'"), query
        assert (await api.json()) == {"error": "bad_request", "message": api_message(message)}
    assert (await client.get("/dead-letters?since=later")).status == 400
    assert (await client.get("/api/dead-letters?status=dead", headers=BEARER)).status == 400
    assert (await client.get("/api/rejections?limit=x", headers=BEARER)).status == 400
    # And what does not exist is 404, page and API alike
    for path in (
        "/events/flaky/nope",
        "/events/nope/b-1",
        "/events/flaky/nope/body",
        "/dead-letters/999",
        "/dead-letters/abc",
        "/dead-letters/99999999999999999999999",
        "/dead-letters/999/body",
        "/jobs/999",
    ):
        for prefix in ("", "/api"):
            answer = await client.get(prefix + path, headers=BEARER)
            assert answer.status == 404, prefix + path
    answer = await client.get("/api/dead-letters/999", headers=BEARER)
    assert await answer.json() == {"error": "not_found", "message": "no dead letter 999"}
    # And a bulk action naming an id that does not exist does nothing at all
    for action in ("replay", "purge"):
        answer = await client.post(
            f"/api/dead-letters/{action}", json={"ids": [dl_id, 999]}, headers=BEARER
        )
        assert answer.status == 404
        assert (await answer.json())["message"] == "no dead letter 999"
    for payload in ({}, {"ids": []}, {"ids": ["1"]}, {"ids": [1], "all": True}, [1], {"x": 1}):
        answer = await client.post("/api/dead-letters/purge", json=payload, headers=BEARER)
        assert answer.status == 400, payload
    answer = await client.post("/api/dead-letters/purge", data=b"not json", headers=BEARER)
    assert answer.status == 400
    form = {"csrf": csrf_of(await (await client.get("/dead-letters")).text())}
    answer = await client.post("/dead-letters/confirm", data={**form, "do": "purge-selected"})
    assert answer.status == 400 and "select at least one" in await answer.text()
    answer = await client.post(
        "/dead-letters/run", data={**form, "do": "purge-selected", "id": "999"}
    )
    assert answer.status == 404
    [row] = dead_rows(engine)
    assert row["id"] == dl_id and row["replays"] == 0
    assert queued(redis_client, settings) == 0
    # And replaying an event already processed says so and queues nothing
    [processed] = (await (await client.get("/api/events?source=moncash", headers=BEARER)).json())[
        "events"
    ]
    path = f"/events/moncash/{processed['event_id']}/replay"
    answer = await client.post("/api" + path, headers=BEARER)
    assert answer.status == 409
    assert (await answer.json())["message"].endswith(
        "is processed: it was applied already: nothing to do"
    )
    answer = await client.post(path, data=form)
    assert answer.status == 409 and "it was applied already" in await answer.text()
    assert queued(redis_client, settings) == 0


def api_message(message: str) -> str:
    """The full message as the API gives it, for the short forms above."""
    if message == "is not a row id":
        return "before: '99999999999999999999999' is not a row id"
    return message


# -- dead letters: replay and purge -----------------------------------------------------------


async def test_an_operator_replays_a_dead_letter_found_by_filter(
    client: TestClient,
    redis_client: redis.Redis,
    settings: Settings,
    env: dict[str, Any],
    engine: Engine,
) -> None:
    # Given two dead letters of two sources
    state: Path = env["state"]
    [dl_id] = make_dead(redis_client, settings, state, "r-1")
    (state / "poison").write_text("")
    deliver(redis_client, settings, "poison", body=body({"id": "p-1", "type": "t"}))
    run_worker(redis_client, settings)
    csrf = await logged_in(client)
    # When the operator filters the dead letters by source
    html = await (await client.get("/dead-letters?source=flaky")).text()
    assert f'name="id" value="{dl_id}"' in html and "p-1" not in html
    # and asks to replay the selected one
    form = {"csrf": csrf, "source": "flaky", "do": "replay-selected", "id": str(dl_id)}
    confirm = await client.post("/dead-letters/confirm", data=form)
    # Then a confirmation is asked first, and nothing is queued yet
    text = await confirm.text()
    assert confirm.status == 200 and "Replay 1 dead letter?" in text
    assert queued(redis_client, settings) == 0
    # When the operator confirms
    answer = await client.post(
        "/dead-letters/run",
        data={"csrf": csrf_of(text), "do": "replay-selected", "id": str(dl_id)},
        allow_redirects=False,
    )
    # Then the replay runs as a job whose page shows its progress until done
    assert answer.status == 303 and answer.headers["Location"].startswith("/jobs/")
    job = await wait_job(client, int(answer.headers["Location"].rsplit("/", 1)[1]))
    assert (job["state"], job["done"], job["applied"], job["total"]) == ("done", 1, 1, 1)
    page = await (await client.get(answer.headers["Location"])).text()
    assert "1 of 1 handled: 1 queued again" in page
    assert '0 processed, 0 <a href="/dead-letters">dead again</a>, 1 still waiting' in page
    assert "data-refresh" in page
    assert queued(redis_client, settings) == 1
    # When the handler is fixed and a worker runs
    (state / "fail_r-1").unlink()
    run_worker(redis_client, settings)
    # Then the event is processed, once, and its dead letter is no longer among those to deal
    # with; the other stays
    assert event_status(engine, "flaky", "r-1") == "processed"
    still_dead = [r["event_id"] for r in dead_rows(engine) if r["applied_at"] is None]
    assert still_dead == ["p-1"]
    html = await (await client.get("/dead-letters")).text()
    assert f'name="id" value="{dl_id}"' not in html
    # And the event's page keeps its whole story: both failed tries, its death, the replay the
    # console asked for, and the third try that applied it
    html = await (await client.get("/events/flaky/r-1")).text()
    assert '<span class="badge processed" id="status">processed</span>' in html
    assert re.findall(r"<strong>(.*?)</strong>", html) == [
        "received",
        "attempt 1 failed",
        "attempt 2 failed",
        f"dead-lettered as dead letter {dl_id}",
        f"replay of the dead letter {dl_id} queued, asked by console",
        "processed (attempt 3)",
    ]
    assert "<dt>attempts</dt><dd>3</dd>" in html
    assert f'id="dead-letter-link">#{dl_id}</a>' in html and 'id="dead-letter-applied"' in html
    # and so does the API, and the dead letter is found among the replayed ones
    shown = await (await client.get("/api/events/flaky/r-1", headers=BEARER)).json()
    assert (shown["attempts"], shown["dead_letter_id"]) == (3, dl_id)
    assert shown["timeline"][4]["by"] == "console"
    replayed = await (await client.get("/dead-letters?replayed=yes")).text()
    assert f'name="id" value="{dl_id}"' in replayed and ">applied</span>" in replayed


async def test_purge_every_dead_letter_the_filter_matches_after_confirmation(
    client: TestClient,
    redis_client: redis.Redis,
    settings: Settings,
    env: dict[str, Any],
    engine: Engine,
) -> None:
    # Given three dead letters of "flaky" and one of "poison"
    state: Path = env["state"]
    make_dead(redis_client, settings, state, "m-1", "m-2", "m-3")
    (state / "poison").write_text("")
    deliver(redis_client, settings, "poison", body=body({"id": "p-1", "type": "t"}))
    run_worker(redis_client, settings)
    csrf = await logged_in(client)
    # When the operator asks to purge every one matching source=flaky
    confirm = await client.post(
        "/dead-letters/confirm",
        data={"csrf": csrf, "source": "flaky", "type": "", "do": "purge-matching"},
    )
    text = await confirm.text()
    # Then the confirmation says how many and what
    assert "Purge 3 dead letters?" in text
    assert "Every dead letter matching source flaky." in text
    assert len(dead_rows(engine)) == 4
    # And one more that dies after the confirmation is not part of it
    make_dead(redis_client, settings, state, "m-4")
    hidden = dict(re.findall(r'<input type="hidden" name="([a-z_]+)" value="([^"]*)">', text))
    answer = await client.post("/dead-letters/run", data=hidden, allow_redirects=False)
    assert answer.status == 303
    job = await wait_job(client, int(answer.headers["Location"].rsplit("/", 1)[1]))
    assert (job["state"], job["applied"]) == ("done", 3)
    assert sorted(r["event_id"] for r in dead_rows(engine)) == ["m-4", "p-1"]
    # And their events stay dead in the event log
    assert event_status(engine, "flaky", "m-1") == "dead"


async def test_scripts_replay_and_purge_dead_letters_through_the_api(
    client: TestClient,
    redis_client: redis.Redis,
    settings: Settings,
    env: dict[str, Any],
    engine: Engine,
) -> None:
    state: Path = env["state"]
    ids = make_dead(redis_client, settings, state, "a-1", "a-2", "a-3")
    # When a script lists them by filter and looks at one
    listed = await (
        await client.get("/api/dead-letters?source=flaky&limit=2", headers=BEARER)
    ).json()
    assert [d["id"] for d in listed["dead_letters"]] == ids[:0:-1]
    assert listed["next_before"] == ids[1]
    one = await (await client.get(f"/api/dead-letters/{ids[0]}", headers=BEARER)).json()
    assert one["event_id"] == "a-1" and json.loads(one["body"])["id"] == "a-1"
    assert one["errors"][0]["error"].startswith("RuntimeError")
    # And replays two by id
    answer = await client.post("/api/dead-letters/replay", json={"ids": ids[:2]}, headers=BEARER)
    assert answer.status == 202
    started = await answer.json()
    assert started["url"] == f"/api/jobs/{started['job']['id']}"
    job = await wait_job(client, started["job"]["id"])
    assert (job["state"], job["applied"], job["total"]) == ("done", 2, 2)
    assert queued(redis_client, settings) == 2
    # And then replays "all" again: only the one not already queued goes
    answer = await client.post("/api/dead-letters/replay", json={"all": True}, headers=BEARER)
    job = await wait_job(client, (await answer.json())["job"]["id"])
    assert (job["applied"], job["total"]) == (1, 1)
    # And purges every one of the source
    answer = await client.post(
        "/api/dead-letters/purge", json={"all": True, "source": "flaky"}, headers=BEARER
    )
    job = await wait_job(client, (await answer.json())["job"]["id"])
    assert (job["state"], job["applied"]) == ("done", 3)
    assert dead_rows(engine) == []


async def test_events_are_replayed_as_their_state_allows(
    client: TestClient,
    redis_client: redis.Redis,
    settings: Settings,
    env: dict[str, Any],
    engine: Engine,
) -> None:
    # Given an ignored event (no handler for "late") and a dead one
    deliver(redis_client, settings, "late", body=body({"id": "i-1", "type": "t"}))
    [dl_id] = make_dead(redis_client, settings, env["state"], "d-1")
    # When a script replays the ignored one
    answer = await client.post("/api/events/late/i-1/replay", headers=BEARER)
    # Then it is queued again as it arrived
    assert answer.status == 202
    assert await answer.json() == {"replayed": "ignored", "source": "late", "event_id": "i-1"}
    assert queued(redis_client, settings) == 1
    shown = await (await client.get("/api/events/late/i-1", headers=BEARER)).json()
    assert shown["timeline"][-1]["what"] == "replay of the event queued, asked by api"
    # When an operator replays the dead one from its page
    csrf = await logged_in(client)
    html = await (await client.get("/events/flaky/d-1")).text()
    assert 'id="replay"' in html and "Replay its dead letter" in html
    answer = await client.post("/events/flaky/d-1/replay", data={"csrf": csrf})
    # Then its dead letter is queued, and the page says so
    assert answer.status == 200
    assert f"dead letter {dl_id} queued again" in await answer.text()
    assert queued(redis_client, settings) == 2
    assert dead_rows(engine)[0]["replays"] == 1


# -- overview, rejections -----------------------------------------------------------------------


async def test_the_overview_shows_queues_workers_and_the_last_hour(
    client: TestClient, redis_client: redis.Redis, redis_url: str, settings: Settings
) -> None:
    # Given two queued events, a worker alive, and the ingress's counts of the last hour
    deliver(redis_client, settings, "moncash", n=1)
    deliver(redis_client, settings, "moncash", n=2)
    queue = Queue(settings.queue, connection=redis_client, serializer=JobSerializer)
    worker = Worker([queue], connection=redis_client, serializer=JobSerializer, name="w-console")
    worker.register_birth()
    traffic = Traffic()
    for _ in range(3):
        traffic.count("moncash", "accepted")
    traffic.count("moncash", "duplicate")
    traffic.reject(Rejection(time.time(), "moncash", 401, "invalid_signature", "10.0.0.9", 2, ()))
    async_redis = aioredis.Redis.from_url(redis_url)
    await traffic.flush(async_redis)
    await async_redis.aclose()
    try:
        await logged_in(client)
        # When the operator opens the overview
        html = await (await client.get("/")).text()
        # Then it shows the counts, the worker, the traffic by source, and refreshes itself
        assert '<span class="n" id="queued">2</span>' in html
        assert '<span class="n" id="workers-alive">1</span>' in html
        assert "w-console" in html
        row = re.search(r"<td>moncash</td>(.*?)</tr>", html, re.S)
        assert row and re.findall(r'<td class="num">(\d+)</td>', row.group(1)) == ["3", "1"]
        assert "invalid_signature 1" in row.group(1)
        assert 'data-refresh="5"' in html
        # And the API says the same
        status = await (await client.get("/api/status", headers=BEARER)).json()
        assert status["queued"] == 2 and status["workers_alive"] == 1
        assert status["last_hour"]["moncash"] == {
            "accepted": 3,
            "duplicates": 1,
            "rejected": {"invalid_signature": 1},
        }
        assert status["workers"][0]["name"] == "w-console"
    finally:
        worker.register_death()


async def test_rejections_by_source_and_reason_newest_first(
    client: TestClient, redis_client: redis.Redis, redis_url: str
) -> None:
    traffic = Traffic()
    now = time.time()
    traffic.reject(Rejection(now - 3, "moncash", 401, "invalid_signature", "10.0.0.1", 5, ("X-A",)))
    traffic.reject(Rejection(now - 2, "moncash", 401, "stale_timestamp", "10.0.0.2", 5, ()))
    traffic.reject(Rejection(now - 1, "_unknown", 404, "unknown_source", "10.0.0.3", 0, ()))
    traffic.reject(Rejection(now, "flaky", 403, "ip_not_allowed", HOSTILE_IMG, None, ()))
    async_redis = aioredis.Redis.from_url(redis_url)
    await traffic.flush(async_redis)
    await async_redis.aclose()

    async def reasons(query: str) -> list[str]:
        answer = await client.get(f"/api/rejections?{query}", headers=BEARER)
        return [r["reason"] for r in await answer.json()]

    assert await reasons("") == [
        "ip_not_allowed",
        "unknown_source",
        "stale_timestamp",
        "invalid_signature",
    ]
    assert await reasons("source=moncash") == ["stale_timestamp", "invalid_signature"]
    assert await reasons("source=moncash&reason=invalid_signature") == ["invalid_signature"]
    assert await reasons("reason=unknown_source") == ["unknown_source"]
    assert await reasons("limit=1") == ["ip_not_allowed"]
    await logged_in(client)
    html = await (await client.get("/rejections?source=moncash")).text()
    assert "stale_timestamp" in html and "unknown_source" not in html
    html = await (await client.get("/rejections")).text()
    assert "<img" not in html and "&lt;img src=x" in html


# -- the process -------------------------------------------------------------------------------


class SlowOperations(Operations):
    def events(self, *args: Any, **kwargs: Any) -> Any:
        time.sleep(1.0)
        return super().events(*args, **kwargs)


async def test_a_slow_query_never_holds_up_the_rest_of_the_console(
    aiohttp_client: Any, settings: Settings, redis_client: redis.Redis
) -> None:
    # Given a console whose event query takes a second
    ops = SlowOperations(settings, redis=redis_client)
    client: TestClient = await aiohttp_client(create_app(settings, ops=ops))
    # When a script asks for events and, meanwhile, for the status
    slow = asyncio.ensure_future(client.get("/api/events", headers=BEARER))
    await asyncio.sleep(0.1)
    start = time.monotonic()
    status = await client.get("/api/status", headers=BEARER)
    # Then the status is answered at once: the query runs in a thread, off the event loop
    assert status.status == 200 and time.monotonic() - start < 0.5
    assert (await slow).status == 200
    ops.close()


async def test_a_bulk_replay_says_what_became_of_its_events(
    client: TestClient, redis_client: redis.Redis, settings: Settings, env: dict[str, Any]
) -> None:
    # Given two dead letters, one whose handler is fixed and one that will fail again
    fixed, failing = make_dead(redis_client, settings, env["state"], "o-1", "o-2")
    (env["state"] / "fail_o-1").unlink()
    # When a script replays both
    answer = await client.post(
        "/api/dead-letters/replay", json={"ids": [fixed, failing]}, headers=BEARER
    )
    job = await wait_job(client, (await answer.json())["job"]["id"])
    # Then the job says both were queued again, and that the workers have yet to run them
    assert (job["state"], job["applied"]) == ("done", 2)
    assert job["outcome"] == {"processed": 0, "dead again": 0, "waiting": 2, "gone": 0}
    await logged_in(client)
    page = await (await client.get(f"/jobs/{job['id']}")).text()
    assert "2 of 2 handled: 2 queued again" in page and 'id="state">queued again<' in page
    assert "data-refresh" in page  # it follows them
    # When a worker runs them
    run_worker(redis_client, settings)
    # Then the job says one was processed and one died again at once, on the API and the page
    job = await (await client.get(f"/api/jobs/{job['id']}", headers=BEARER)).json()
    assert job["outcome"] == {"processed": 1, "dead again": 1, "waiting": 0, "gone": 0}
    page = await (await client.get(f"/jobs/{job['id']}")).text()
    assert '1 processed, 1 <a href="/dead-letters">dead again</a>, 0 still waiting' in page
    assert 'id="state">some dead again<' in page and "data-refresh" not in page


async def test_the_overview_and_hookline_status_show_the_same_figures_each_explained(
    client: TestClient,
    redis_client: redis.Redis,
    settings: Settings,
    env: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from click.testing import CliRunner

    from hookline.cli import main

    # Given a dead letter (its RQ job in RQ's failed registry too) and a queued event
    make_dead(redis_client, settings, env["state"], "f-1")
    deliver(redis_client, settings, "moncash", n=1)
    await logged_in(client)
    # When the operator reads the overview and runs `hookline status`
    html = await (await client.get("/")).text()
    monkeypatch.setenv("HOOKLINE_CONSOLE_TOKEN", TOKEN)
    monkeypatch.setenv("COLUMNS", "200")
    shown = CliRunner().invoke(main, ["status", "--config", str(env["config"])])
    assert shown.exit_code == 0, shown.output
    # Then both show the same figures, each with the one line saying what it counts
    tiles = re.findall(
        r'<div class="tile[^"]*" title="([^"]+)">(?:<a href="[^"]+">)?'
        r'<span class="n" id="[a-z-]+">(\d+)</span> ([a-z ]+?)(?:</a>)?\s*'
        r'<small class="meaning">([^<]+)</small>',
        html,
    )
    assert [label for _, _, label, _ in tiles] == [
        "queued",
        "running",
        "waiting to retry",
        "dead letters",
        "workers alive",
    ]
    lines = [" ".join(line.split()) for line in shown.output.splitlines()]
    for title, n, label, meaning in tiles:
        assert title == meaning
        assert f"{label} {n} {html_module.unescape(meaning)}" in lines, shown.output
    assert ("dead letters", "1") in [(label, n) for _, n, label, _ in tiles]
    # And "failed jobs" (RQ's copy of the dead-lettered jobs) is shown by neither
    assert "failed jobs" not in html and "failed jobs" not in shown.output


async def test_the_overview_shows_each_shard_and_adds_them_up(
    aiohttp_client: Any, redis_client: redis.Redis, settings: Settings
) -> None:
    from dataclasses import replace

    from shared import keys
    from tests.test_worker import deliver as deliver_to

    # Given three shards, with events queued in two of them
    sharded = replace(settings, redis_shards=3)
    layout = keys.Layout.of(3, cluster=False)
    ids = [f"o-{n}" for n in range(40)]
    in_0 = [i for i in ids if layout.route("flaky", i).index == 0][:2]
    in_2 = [i for i in ids if layout.route("flaky", i).index == 2][:3]
    for event_id in in_0 + in_2:
        doc = body({"id": event_id, "type": "order"})
        deliver_to(redis_client, sharded, "flaky", body=doc, shard=layout.route("flaky", event_id))
    ops = Operations(sharded, redis=redis_client)
    client: TestClient = await aiohttp_client(
        create_app(sharded, ops=ops, throttle=Throttle(**FAST_THROTTLE))
    )
    await logged_in(client)
    # When the operator opens the overview
    html = await (await client.get("/")).text()
    # Then the total is every shard's, and each shard has its row
    assert '<span class="n" id="queued">5</span>' in html
    table = re.search(r'<table id="shards">(.*?)</table>', html, re.S)
    assert table is not None
    cells = re.findall(r"<tr><td>(\d)</td><td>(\d+)</td>", table.group(1))
    assert cells == [("0", "2"), ("1", "0"), ("2", "3")]
    status = await (await client.get("/api/status", headers=BEARER)).json()
    assert [s["queued"] for s in status["shards"]] == [2, 0, 3]
