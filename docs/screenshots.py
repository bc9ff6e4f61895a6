"""The README's screenshots of the console, taken from the real thing: a throwaway SQLite
database and an embedded Redis filled with demo events through the real pipeline (the
ingress's enqueue script, hookline's worker, the built-in payment handlers and a demo handler
that fails), ``hookline console`` started on them, and headless Chromium (Debian's, as the
browser tests use it) logging in and visiting each page.

    .venv/bin/python docs/screenshots.py [--out docs]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime as dt
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import redis  # noqa: E402
import redis.asyncio as aioredis  # noqa: E402
from rq import Queue, Worker  # noqa: E402

from hookline.dev import redis_server_binary  # noqa: E402
from shared.config import Settings, settings_from_mapping  # noqa: E402
from shared.migrate import upgrade  # noqa: E402
from shared.rqcompat import JobSerializer  # noqa: E402
from shared.traffic import (  # noqa: E402
    COARSE_SECONDS,
    COARSE_TTL_SECONDS,
    DEPTH_FIELD,
    STATS_TTL_SECONDS,
    Rejection,
    Traffic,
    coarse_key,
    stats_key,
)
from tests import browser  # noqa: E402
from tests.helpers import SOURCES  # noqa: E402
from tests.processes import (  # noqa: E402
    env_for,
    free_port,
    hookline,
    http_ok,
    start_in_group,
    stop_groups,
    wait_until,
)
from tests.test_worker import deliver, run_worker  # noqa: E402
from workers import runtime  # noqa: E402

TOKEN = "demo-console-token-for-screenshots"  # noqa: S105 - the throwaway demo's

#: a handler module of the demo's: the shop's paid orders fail while the warehouse is away
DEMO_HOOKS = """
from hookline import on


@on("shop", "orders/paid")
def paid(event, session):
    if event.data.get("warehouse") == "down":
        raise RuntimeError("warehouse API unavailable: 503 Service Unavailable")
"""


def config(redis_url: str, database_url: str) -> dict[str, Any]:
    return {
        "redis_url": redis_url,
        "database_url": database_url,
        "worker": {"handlers": ["console_demo_hooks"], "max_attempts": 3, "backoff_seconds": [0]},
        "console": {"token": TOKEN},
        "sources": {
            "moncash": SOURCES["moncash"],
            "nowallet": SOURCES["nowallet"],
            "github": SOURCES["github"],
            "shop": {
                "scheme": "hmac",
                "secrets": ["shop-demo-secret"],
                "event_id": "json:id",
                "event_type": "json:topic",
            },
        },
    }


def toml(settings: dict[str, Any]) -> str:
    lines = [
        f'redis_url = "{settings["redis_url"]}"',
        f'database_url = "{settings["database_url"]}"',
    ]
    lines += ["[worker]", 'handlers = ["console_demo_hooks"]', "max_attempts = 3"]
    lines += ["backoff_seconds = [0]", "[console]", 'token = "${HOOKLINE_CONSOLE_TOKEN}"']
    for name, source in settings["sources"].items():
        lines.append(f"[sources.{name}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in source.items()]
    return "\n".join(lines) + "\n"


def seed(client: redis.Redis, settings: Settings, redis_url: str) -> None:
    """Events through the real pipeline: payments processed, GitHub's ignored (no handler),
    the shop's failing ones dead-lettered, an amount that is not a number dead at once."""
    for i in range(12):
        deliver(client, settings, "moncash", n=100 + i, amount=500 * (i + 1))
    deliver(client, settings, "moncash", n=200, amount="lots")
    for i in range(6):
        deliver(client, settings, "nowallet", n=300 + i, status=["SUCCESSFUL", "PENDING"][i % 2])
    for i in range(4):
        deliver(client, settings, "github", n=400 + i)
    for i in range(7):
        order = {
            "id": f"shop_{9120 + i}",
            "topic": "orders/paid",
            "order": {"number": 9120 + i, "total": "49.90", "currency": "EUR"},
            "warehouse": "down" if i % 2 else "up",
        }
        deliver(client, settings, "shop", body=json.dumps(order, indent=1).encode())
    run_worker(client, settings)
    spread_over_the_last_hour(settings)
    # three events waiting for a worker, and the ingress's last hour
    for i in range(3):
        deliver(client, settings, "moncash", n=500 + i)
    traffic = Traffic()
    now = time.time()
    rng = random.Random(18)
    for minute in range(60 * 24):  # a day of traffic, busier in the last hours
        at = now - 60 * minute
        busy = 1 + 3 * (minute < 240) + 2 * (minute % 180 < 40)
        for source, accepted, duplicates in (("moncash", 3, 1), ("nowallet", 2, 1), ("shop", 1, 0)):
            for _ in range(rng.randint(0, accepted * busy)):
                traffic.count(source, "accepted", at)
            for _ in range(rng.randint(0, duplicates)):
                traffic.count(source, "duplicate", at)
        if minute % 7 == 3:
            traffic.count("moncash", "rejected:invalid_signature", at)
        # the queue's depth as the ingress samples it: a backlog 20 minutes ago, drained since
        depth = max(0, 40 - abs(minute - 20) * 4) + rng.randint(0, 3)
        with client.pipeline() as pipe:
            pipe.hset(stats_key(int(at // 60)), DEPTH_FIELD, depth)
            pipe.expire(stats_key(int(at // 60)), STATS_TTL_SECONDS)
            pipe.hset(coarse_key(int(at // COARSE_SECONDS)), DEPTH_FIELD, depth)
            pipe.expire(coarse_key(int(at // COARSE_SECONDS)), COARSE_TTL_SECONDS)
            pipe.execute()
    signature = {"moncash": "X-MCC-Signature", "github": "X-Hub-Signature-256"}
    refused = [
        ("moncash", 401, "invalid_signature", "198.51.100.23", 812),
        ("moncash", 401, "stale_timestamp", "198.51.100.23", 790),
        ("github", 401, "missing_signature", "203.0.113.80", 2210),
        ("_unknown", 404, "unknown_source", "192.0.2.14", 12),
        ("shop", 413, "body_too_large", "203.0.113.7", None),
    ]
    for i, (source, status, reason, remote, size) in enumerate(refused):
        names = ("Host", "Content-Type", "User-Agent", signature.get(source, "X-Signature"))
        traffic.reject(Rejection(now - 60 * i, source, status, reason, remote, size, names))

    async def flush() -> None:
        client_async = aioredis.Redis.from_url(redis_url)
        await traffic.flush(client_async)
        await client_async.aclose()

    asyncio.run(flush())


def spread_over_the_last_hour(settings: Settings) -> None:
    """The demo's events were all applied a moment ago: spread their times over the last hour
    (received 2 to 90 seconds before applied), so the charts have something to draw."""
    from sqlalchemy import select, update

    from shared.db import dead_letters, make_engine, webhook_events

    rng = random.Random(7)
    now = time.time()
    engine = make_engine(settings.database_url)
    with engine.begin() as conn:
        for (row_id,) in conn.execute(select(webhook_events.c.id)).all():
            done = now - rng.uniform(0, 3500)
            conn.execute(
                update(webhook_events)
                .where(webhook_events.c.id == row_id)
                .values(
                    processed_at=dt.datetime.fromtimestamp(done, dt.UTC),
                    received_at=dt.datetime.fromtimestamp(done - rng.uniform(2, 90), dt.UTC),
                )
            )
        for (row_id,) in conn.execute(select(dead_letters.c.id)).all():
            failed = dt.datetime.fromtimestamp(now - rng.uniform(0, 3500), dt.UTC)
            conn.execute(
                update(dead_letters).where(dead_letters.c.id == row_id).values(failed_at=failed)
            )
    engine.dispose()


def shoot(driver: Any, path: Path, height: int | None = None) -> None:
    """The page as laid out in a 1280-pixel-wide window, down to its end (or ``height``)."""
    size = driver.execute_script(
        "return [document.documentElement.clientWidth,"
        " Math.ceil(document.querySelector('main').getBoundingClientRect().bottom) + 8]"
    )
    clip = {"x": 0, "y": 0, "width": size[0], "height": height or size[1], "scale": 1}
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip}
    )
    path.write_bytes(base64.b64decode(shot["data"]))
    print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")


def take(base: str, out: Path, work: Path) -> None:
    from selenium.webdriver.common.by import By

    with browser.chromium(work, 1280, 900) as driver:
        driver.get(base + "/login")
        shoot(driver, out / "console-login.png", 480)
        driver.find_element(By.ID, "token").send_keys(TOKEN)
        driver.find_element(By.ID, "login").click()
        wait_until(lambda: driver.find_elements(By.ID, "counts"), 10, "the overview")
        shoot(driver, out / "console-overview.png")
        driver.get(base + "/?span=day")
        wait_until(lambda: driver.find_elements(By.ID, "chart-workers"), 10, "the day's charts")
        shoot(driver, out / "console-overview-day.png")
        driver.get(base + "/events")
        shoot(driver, out / "console-events.png")
        driver.get(base + "/events/shop/shop_9121")
        shoot(driver, out / "console-event.png")
        driver.get(base + "/dead-letters")
        shoot(driver, out / "console-dead-letters.png")
        driver.get(base + "/dead-letters?source=shop")
        for box in driver.find_elements(By.CSS_SELECTOR, "input.pick"):
            box.click()
        driver.find_element(By.ID, "replay-selected").click()
        wait_until(lambda: driver.find_elements(By.ID, "confirm"), 10, "the confirmation")
        shoot(driver, out / "console-confirm.png", 420)
        driver.find_element(By.ID, "confirm").click()
        # queued again: the page then follows the events until the workers ran them
        wait_until(lambda: driver.find_element(By.ID, "state").text != "running", 10, "the job")
        shoot(driver, out / "console-job.png", 480)
        driver.get(base + "/rejections")
        shoot(driver, out / "console-rejections.png")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    args = parser.parse_args()
    reason = browser.missing()
    if reason:
        raise SystemExit(f"screenshots: {reason}")
    work = Path(tempfile.mkdtemp(prefix="hookline-screenshots-"))
    (work / "console_demo_hooks.py").write_text(DEMO_HOOKS)
    sys.path.insert(0, str(work))
    redis_port, port = free_port(), free_port()
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    database_url = f"sqlite:///{work / 'demo.db'}"
    procs = [
        start_in_group(
            [redis_server_binary(), "--port", str(redis_port), "--bind", "127.0.0.1",
             "--save", "", "--dir", str(work)],
            env_for(),
            work / "redis.log",
        )
    ]  # fmt: skip
    try:
        client = redis.Redis.from_url(redis_url)
        wait_until(client.ping, 10, "redis")
        upgrade(database_url)
        raw = config(redis_url, database_url)
        settings = settings_from_mapping(raw)
        runtime.configure(settings)
        seed(client, settings, redis_url)
        queue = Queue(settings.queue, connection=client, serializer=JobSerializer)
        worker = Worker([queue], connection=client, serializer=JobSerializer, name="worker-1")
        worker.register_birth()
        worker.set_state("idle")
        (work / "hookline.toml").write_text(toml(raw))
        procs.append(
            start_in_group(
                hookline("console", "--config", str(work / "hookline.toml"), "--port", str(port)),
                env_for(HOOKLINE_CONSOLE_TOKEN=TOKEN),
                work / "console.log",
                cwd=work,
            )
        )
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: http_ok(base + "/login"), 30, "the console")
        args.out.mkdir(parents=True, exist_ok=True)
        take(base, args.out, work)
    finally:
        stop_groups(procs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
