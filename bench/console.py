"""The console at scale: seeds a PostgreSQL database of its own with 1,000,000 events (a
realistic mix of sources and types, ~1 % dead with their dead letters, ~5 % ignored, bodies
for the last 7 days as ``[archive] retention_days`` keeps them), starts ``hookline console``
on it, and measures its pages and API calls with filters, one request at a time, from the
login on: p50, p95 (nearest rank, ``tests.processes.percentile``) and max per query.

    .venv/bin/python bench/console.py [--events 1000000] [--requests 200] [--keep] [--reuse]

Needs PostgreSQL on 127.0.0.1:5432 (user postgres, trust) and Redis on 127.0.0.1:6379 (the
console's status reads it; the overview's charts read the ingress's per-minute and 5-minute
counts, written for the last day into database 11 as a busy ingress would, and deleted at the
end). The database is created, and dropped at the end unless ``--keep`` (then ``--reuse``
measures it again without seeding). ``--only TEXT`` measures only the queries whose name holds
TEXT (``--only overview``: the overview with its charts).
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import random
import re
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402

from shared.migrate import upgrade  # noqa: E402
from tests.processes import (  # noqa: E402
    env_for,
    free_port,
    hookline,
    http_ok,
    percentile,
    start_in_group,
    stop_groups,
    wait_until,
)

ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=test"
DB = "hookline_console_bench"
DATABASE_URL = f"postgresql+psycopg://postgres@127.0.0.1:5432/{DB}"
REDIS_URL = "redis://127.0.0.1:6379/11"
TOKEN = "console-bench-token-0123456789"
TARGET_P95_MS = 200.0
DAYS = 30  # the events span the last 30 days
BODY_DAYS = 7  # bodies kept for the last 7 (the default retention)

#: source -> (scheme for the configuration, its event types)
SOURCES: dict[str, tuple[str, list[str]]] = {
    "moncash": (
        "moncash",
        ["payment.completed", "payment.failed", "payment.pending", "payment.refunded"],
    ),
    "nowallet": ("nowallet", ["SUCCESSFUL", "FAILED", "PENDING"]),
    "github": ("github", ["push", "pull_request", "issues", "ping", "release"]),
    "stripe": (
        "stripe",
        ["charge.succeeded", "invoice.paid", "customer.created", "payment_intent.failed"],
    ),
    "shopify": ("shopify", ["orders/create", "orders/paid", "products/update"]),
    "partner": ("hmac", ["order.shipped", "order.cancelled"]),
}
#: share of the traffic per source (the big ones first)
WEIGHTS = [0.35, 0.2, 0.15, 0.15, 0.1, 0.05]


# -- seeding ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Seeded:
    events: int
    dead: int
    ignored: int
    bodies: int
    seconds: float


def _body(source: str, event_id: str, event_type: str, rng: random.Random) -> bytes:
    doc = {
        "id": event_id,
        "type": event_type,
        "created": int(time.time()),
        "data": {
            "reference": f"ORD-{rng.randrange(10**8):08d}",
            "amount": rng.randrange(100, 500_000),
            "currency": rng.choice(["HTG", "USD", "EUR"]),
            "customer": {"email": f"user{rng.randrange(10**6)}@example.com", "country": "HT"},
            "metadata": {"source": source, "note": "x" * rng.randrange(50, 250)},
        },
    }
    return json.dumps(doc).encode()


def _headers(source: str, event_id: str) -> str:
    return json.dumps(
        [
            ["Content-Type", "application/json"],
            ["User-Agent", f"{source}-webhooks/1.0"],
            ["X-Request-Id", event_id],
            ["X-Signature", "[redacted]"],
        ]
    )


def _errors(at: dt.datetime, attempts: int, permanent: bool) -> str:
    return json.dumps(
        [
            {
                "attempt": i,
                "at": (at - dt.timedelta(seconds=10 * (attempts - i))).isoformat(),
                "error": "PayloadError: amount is not a number"
                if permanent
                else "RuntimeError: upstream ledger unavailable (503)",
                "permanent": permanent and i == attempts,
            }
            for i in range(1, attempts + 1)
        ]
    )


def seed(conninfo: str, n: int, rng: random.Random) -> Seeded:
    """``n`` events, ids in arrival order, COPYed in one transaction per table."""
    start = time.monotonic()
    now = dt.datetime.now(dt.UTC)
    first = now - dt.timedelta(days=DAYS)
    step = (now - first) / n
    body_from = now - dt.timedelta(days=BODY_DAYS)
    names = list(SOURCES)
    dead = ignored = bodies = 0
    with psycopg.connect(conninfo) as conn, conn.cursor() as cur:
        cur.execute("SET synchronous_commit = off")
        with cur.copy(
            "COPY webhook_events (id, source, event_id, event_type, status, attempts,"
            " received_at, processed_at, remote, errors) FROM STDIN"
        ) as events:
            rows_bodies: list[tuple[int, str, bytes]] = []
            rows_dead: list[tuple[Any, ...]] = []
            for i in range(1, n + 1):
                source = rng.choices(names, WEIGHTS)[0]
                event_type = rng.choice(SOURCES[source][1])
                event_id = f"evt_{i:09d}_{rng.randrange(16**6):06x}"
                received = first + step * i
                roll = rng.random()
                status = "dead" if roll < 0.01 else "ignored" if roll < 0.06 else "processed"
                attempts = 1 if status != "dead" else rng.choice([1, 8])
                processed = received + dt.timedelta(milliseconds=rng.randrange(2, 900))
                errors = None
                if status == "dead":
                    errors = _errors(processed, attempts, attempts == 1)
                remote = f"203.0.113.{rng.randrange(1, 255)}"
                events.write_row(
                    (i, source, event_id, event_type, status, attempts, received, processed,
                     remote, errors)
                )  # fmt: skip
                if status == "dead":
                    dead += 1
                    body = _body(source, event_id, event_type, rng)
                    rows_dead.append(
                        (source, event_id, event_type,
                         json.loads(errors or "[]")[-1]["error"], int(attempts == 1), attempts,
                         errors, _headers(source, event_id), body, remote, received, processed)
                    )  # fmt: skip
                else:
                    ignored += status == "ignored"
                    if received >= body_from:
                        payload = _body(source, event_id, event_type, rng)
                        rows_bodies.append((i, _headers(source, event_id), payload))
            bodies = len(rows_bodies)
        with cur.copy("COPY event_bodies (event_pk, headers, body) FROM STDIN") as copy:
            for row in rows_bodies:
                copy.write_row(row)
        with cur.copy(
            "COPY dead_letters (source, event_id, event_type, reason, permanent, attempts,"
            " errors, headers, body, remote, received_at, failed_at, replays) FROM STDIN"
        ) as copy:
            for row in rows_dead:
                copy.write_row((*row, 0))
        cur.execute("SELECT setval(pg_get_serial_sequence('webhook_events', 'id'), %s)", (n,))
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
    return Seeded(n, dead, ignored, bodies, time.monotonic() - start)


# -- measuring --------------------------------------------------------------------------------


class Browser:
    """One keep-alive connection, logged in like a browser (the session cookie), or calling
    the API with the token."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.cookie = ""

    def request(
        self,
        method: str,
        path: str,
        body: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        sent = {"Cookie": self.cookie} if self.cookie else {}
        sent.update(headers or {})
        self.conn.request(method, path, body=body, headers=sent)
        resp = self.conn.getresponse()
        data = resp.read()
        return resp.status, resp.getheaders(), data

    @staticmethod
    def cookie_named(headers: list[tuple[str, str]], name: str) -> str:
        for key, value in headers:
            if key.lower() == "set-cookie" and value.startswith(name + "="):
                return value.split(";", 1)[0]
        raise AssertionError(f"no {name} cookie")

    def login(self) -> None:
        status, headers, page = self.request("GET", "/login")
        match = re.search(rb'name="nonce" value="([^"]+)"', page)
        assert status == 200 and match
        self.cookie = self.cookie_named(headers, "hookline_console_login")
        form = urllib.parse.urlencode({"token": TOKEN, "nonce": match.group(1).decode()})
        status, headers, _ = self.request(
            "POST", "/login", form, {"Content-Type": "application/x-www-form-urlencoded"}
        )
        assert status == 303, status
        self.cookie = self.cookie_named(headers, "hookline_console_session")


@dataclass
class Result:
    name: str
    example: str
    timings_ms: list[float]
    rows: int

    def p(self, q: float) -> float:
        value = percentile(self.timings_ms, q)
        assert value is not None
        return value


def measure(client: Browser, name: str, paths: Iterator[str], requests: int, api: bool) -> Result:
    headers = {"Authorization": f"Bearer {TOKEN}"} if api else {}
    timings: list[float] = []
    example = ""
    rows = 0
    for i in range(requests + 10):
        path = next(paths)
        start = time.perf_counter()
        status, _, data = client.request("GET", path, headers=headers)
        took = (time.perf_counter() - start) * 1000
        if status != 200:
            raise SystemExit(f"{name}: GET {path} answered {status}: {data[:300]!r}")
        if i >= 10:  # the first ten warm the connection pool and the caches
            timings.append(took)
        if i == 10:
            example = path
            rows = _rows(data, api)
    return Result(name, example, timings, rows)


def _rows(data: bytes, api: bool) -> int:
    if not api:
        return data.count(b'<tr class="status-') + data.count(b'class="pick"')
    doc = json.loads(data)
    for key in ("events", "dead_letters"):
        if isinstance(doc, dict) and key in doc:
            return len(doc[key])
    return 1


def _cycle(make: Callable[[int], str]) -> Iterator[str]:
    i = 0
    while True:
        yield make(i)
        i += 1


def scenarios(conninfo: str, rng: random.Random) -> list[tuple[str, Callable[[int], str]]]:
    """What operators ask, each with varying values (sources, ids, pages, time windows)."""
    with psycopg.connect(conninfo) as conn:
        recent = conn.execute(
            "SELECT e.source, e.event_id FROM webhook_events e"
            " JOIN event_bodies b ON b.event_pk = e.id ORDER BY e.id DESC LIMIT 5000"
        ).fetchall()
        old = conn.execute(
            "SELECT source, event_id FROM webhook_events WHERE id % 997 = 0 LIMIT 1000"
        ).fetchall()
        dead = [r[0] for r in conn.execute("SELECT id FROM dead_letters").fetchall()]
        top = conn.execute("SELECT max(id) FROM webhook_events").fetchone()
    assert top is not None
    max_id = int(top[0])
    rng.shuffle(recent)
    rng.shuffle(old)
    rng.shuffle(dead)
    names = list(SOURCES)
    now = dt.datetime.now(dt.UTC)

    def day_window(i: int) -> str:
        day = now - dt.timedelta(days=1 + i % (DAYS - 2))
        q = {
            "since": day.isoformat(timespec="seconds"),
            "until": (day + dt.timedelta(days=1)).isoformat(timespec="seconds"),
        }
        return urllib.parse.urlencode(q)

    def event(i: int) -> str:
        source, event_id = (recent if i % 2 else old)[i % 1000]
        return f"{urllib.parse.quote(source, safe='')}/{urllib.parse.quote(event_id, safe='')}"

    def page(prefix: str) -> list[tuple[str, Callable[[int], str]]]:
        return [
            ("events, newest", lambda i: f"{prefix}/events"),
            ("events, by source", lambda i: f"{prefix}/events?source={names[i % 6]}"),
            (
                "events, source + status ignored",
                lambda i: f"{prefix}/events?source={names[i % 6]}&status=ignored",
            ),
            ("events, status dead", lambda i: f"{prefix}/events?status=dead"),
            (
                "events, by type",
                lambda i: f"{prefix}/events?type={SOURCES[names[i % 6]][1][0]}",
            ),
            ("events, one day's window", lambda i: f"{prefix}/events?{day_window(i)}"),
            ("events, received until 20 days ago", lambda i: f"{prefix}/events?until=20"),
            ("events, received since 7 days ago", lambda i: f"{prefix}/events?since=7"),
            (
                "events, source, deep page (before)",
                lambda i: (
                    f"{prefix}/events?source={names[i % 6]}"
                    f"&before={rng.randrange(max_id // 10, max_id)}"
                ),
            ),
            (
                "events, by event id (with source)",
                lambda i: f"{prefix}/events?source={old[i % 1000][0]}&event_id={old[i % 1000][1]}",
            ),
            ("events, by event id alone", lambda i: f"{prefix}/events?event_id={old[i % 1000][1]}"),
            ("an event (timeline, body)", lambda i: f"{prefix}/events/{event(i)}"),
            ("dead letters, newest", lambda i: f"{prefix}/dead-letters"),
            ("dead letters, by source", lambda i: f"{prefix}/dead-letters?source={names[i % 6]}"),
            (
                "dead letters, source + type",
                lambda i: (
                    f"{prefix}/dead-letters?source={names[i % 6]}"
                    f"&type={SOURCES[names[i % 6]][1][0]}"
                ),
            ),
            ("a dead letter", lambda i: f"{prefix}/dead-letters/{dead[i % len(dead)]}"),
        ]

    overview = [
        ("page: overview, charts of the last hour", lambda i: "/"),
        ("page: overview, charts of the last day", lambda i: "/?span=day"),
    ]
    return (
        overview
        + [(f"page: {n}", f) for n, f in page("")]
        + [(f"API: {n}", f) for n, f in page("/api")]
    )


def seed_traffic() -> None:
    """The ingress's counts for the last day, as its flushes write them: every source's
    accepted, duplicates and two rejection reasons in every minute (the last two hours) and
    5-minute bucket, and the queue's depth."""
    import redis

    from shared import traffic

    client = redis.Redis.from_url(REDIS_URL)
    now = time.time()
    rng = random.Random(11)
    kinds = ("accepted", "duplicate", "rejected:invalid_signature", "rejected:stale_timestamp")
    with client.pipeline(transaction=False) as pipe:
        buckets = [(traffic.stats_key(int(now // 60) - m), 60) for m in range(120)] + [
            (traffic.coarse_key(int(now // traffic.COARSE_SECONDS) - b), traffic.COARSE_SECONDS)
            for b in range(288)
        ]
        for key, width in buckets:
            fields: dict[str, int] = {
                f"{s}\t{k}": rng.randrange(width) for s in SOURCES for k in kinds
            }
            fields[traffic.DEPTH_FIELD] = rng.randrange(100)
            pipe.hset(key, mapping=fields)  # type: ignore[arg-type]
            pipe.expire(key, traffic.COARSE_TTL_SECONDS)
        pipe.execute()
    client.close()


def drop_traffic() -> None:
    import redis

    from shared import keys

    client = redis.Redis.from_url(REDIS_URL)
    for pattern in (keys.STATS, keys.STATS_COARSE):
        for key in client.scan_iter(match=pattern + "*", count=1000):
            client.delete(key)
    client.close()


# -- the run ------------------------------------------------------------------------------------


def create_database(keep_existing: bool) -> str:
    with psycopg.connect(ADMIN, autocommit=True) as admin:
        exists = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DB,)).fetchone()
        if exists and keep_existing:
            return f"host=127.0.0.1 port=5432 user=postgres dbname={DB}"
        admin.execute(f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{DB}"')
    return f"host=127.0.0.1 port=5432 user=postgres dbname={DB}"


def drop_database() -> None:
    with psycopg.connect(ADMIN, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)')


def config_toml() -> str:
    lines = [
        "# written by bench/console.py",
        f'redis_url = "{REDIS_URL}"',
        f'database_url = "{DATABASE_URL}"',
        "[console]",
        'token = "${HOOKLINE_CONSOLE_TOKEN}"',
    ]
    for name, (scheme, _types) in SOURCES.items():
        lines += [f"[sources.{name}]", f'scheme = "{scheme}"', 'secrets = ["bench-secret"]']
        if scheme == "nowallet":
            lines.append('unique_key = "bench-unique-key"')
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=200, help="per query, after 10 warm-up")
    parser.add_argument("--keep", action="store_true", help="keep the database at the end")
    parser.add_argument("--reuse", action="store_true", help="measure a kept database again")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--only", default="", help="only the queries whose name holds this")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    conninfo = create_database(args.reuse)
    try:
        if not args.reuse:
            upgrade(DATABASE_URL)
            print(f"seeding {args.events:,} events...", flush=True)
            seeded = seed(conninfo, args.events, rng)
            print(
                f"seeded {seeded.events:,} events ({seeded.dead:,} dead with their dead letters,"
                f" {seeded.ignored:,} ignored, {seeded.bodies:,} bodies) in {seeded.seconds:.0f} s",
                flush=True,
            )
        seed_traffic()
        results = run_console(conninfo, args.requests, rng, args.only)
    finally:
        drop_traffic()
        if not args.keep:
            drop_database()
    print_table(results, args)
    return 0 if all(r.p(95) <= TARGET_P95_MS for r in results) else 1


def run_console(conninfo: str, requests: int, rng: random.Random, only: str = "") -> list[Result]:
    folder = Path(tempfile.mkdtemp(prefix="hookline-console-bench-"))
    config = folder / "hookline.toml"
    config.write_text(config_toml())
    port = free_port()
    proc = start_in_group(
        hookline("console", "--config", str(config), "--port", str(port)),
        env_for(HOOKLINE_CONSOLE_TOKEN=TOKEN),
        folder / "console.log",
    )
    try:
        wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/login"), 30, "the console")
        client = Browser(port)
        client.login()
        results = []
        for name, make in scenarios(conninfo, rng):
            if only not in name:
                continue
            result = measure(client, name, _cycle(make), requests, name.startswith("API"))
            print(
                f"{name:<45} p50 {result.p(50):6.1f}  p95 {result.p(95):6.1f}"
                f"  max {max(result.timings_ms):6.1f} ms",
                flush=True,
            )
            results.append(result)
        return results
    finally:
        stop_groups([proc])


def print_table(results: list[Result], args: argparse.Namespace) -> None:
    print(
        f"\n`.venv/bin/python bench/console.py` ({args.events:,} events, {args.requests} requests"
        " per query, one at a time, logged in; ms)\n"
    )
    print("| query | p50 | p95 | max | p95 ≤ 200 ms |")
    print("|---|---|---|---|---|")
    for r in results:
        ok = "yes" if r.p(95) <= TARGET_P95_MS else "**no**"
        print(f"| {r.name} | {r.p(50):.1f} | {r.p(95):.1f} | {max(r.timings_ms):.1f} | {ok} |")


if __name__ == "__main__":
    sys.exit(main())
