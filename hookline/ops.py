"""What the operator commands do: ``status`` and ``dlq list|show|replay|purge``."""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from redis import Redis
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress
from rich.table import Table
from rq import Queue, Worker
from sqlalchemy import Engine, select

from hookline.cli import EXIT_INTERRUPTED
from shared.config import Settings
from shared.db import dead_letters, make_engine
from shared.enqueue import JobSpec
from workers import deadletters

console = Console()


@contextmanager
def _redis(settings: Settings) -> Iterator[Redis]:
    client = Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=3)
    try:
        yield client
    finally:
        client.close()


@contextmanager
def _engine(settings: Settings) -> Iterator[Engine]:
    engine = make_engine(settings.database_url)
    try:
        yield engine
    finally:
        engine.dispose()


def gather_status(settings: Settings) -> dict[str, Any]:
    with _redis(settings) as redis, _engine(settings) as engine:
        queue = Queue(settings.queue, connection=redis)
        workers = Worker.all(queue=queue)
        # raw counts: RQ's registry.count would run a cleanup as a side effect
        return {
            "queue": settings.queue,
            "queued": redis.llen(queue.key),
            "running": redis.zcard(queue.started_job_registry.key),
            "waiting_to_retry": redis.zcard(queue.scheduled_job_registry.key),
            "failed_jobs": redis.zcard(queue.failed_job_registry.key),
            "dead_letters": deadletters.count(engine),
            "workers_alive": len(workers),
            "workers": [{"name": w.name, "state": w.get_state()} for w in workers],
        }


def print_status(data: dict[str, Any]) -> None:
    table = Table(show_header=False, box=None)
    for label, key in (
        ("queue", "queue"),
        ("queued", "queued"),
        ("running", "running"),
        ("waiting to retry", "waiting_to_retry"),
        ("dead letters", "dead_letters"),
        ("workers alive", "workers_alive"),
    ):
        table.add_row(label, str(data[key]))
    console.print(table)


def dlq_list_rows(
    settings: Settings, source: str | None, limit: int, older_than: float | None = None
) -> list[dict[str, Any]]:
    with _engine(settings) as engine:
        return deadletters.list_rows(engine, source=source, limit=limit, older_than_days=older_than)


def _when(value: dt.datetime | None, never: str = "-") -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else never


def print_dlq_list(rows: Sequence[dict[str, Any]]) -> None:
    if not rows:
        console.print("no dead letters")
        return
    table = Table("id", "source", "event id", "type", "attempts", "died", "replayed", "reason")
    for r in rows:
        table.add_row(
            *(
                escape(str(v))
                for v in (
                    r["id"],
                    r["source"],
                    r["event_id"],
                    r["event_type"] or "-",
                    r["attempts"],
                    _when(r["failed_at"]),
                    _when(r["replayed_at"], "never"),
                    r["reason"],
                )
            )
        )
    console.print(table)


def dlq_get(settings: Settings, dead_letter_id: int) -> dict[str, Any] | None:
    with _engine(settings) as engine:
        row = deadletters.get_row(engine, dead_letter_id)
    if row is None:
        return None
    body: bytes = row.pop("body")
    try:
        row["body"] = body.decode("utf-8")
    except UnicodeDecodeError:
        row["body_base64"] = base64.b64encode(body).decode()
    return row


def print_dlq_row(row: dict[str, Any]) -> None:
    """For a person: yes/no, "never", "-"; ``--json`` has the values as stored."""
    title = escape(f"{row['id']}: {row['source']} / {row['event_id']}")
    console.print(f"[bold]dead letter[/bold] {title}")
    fields = (
        ("type", row["event_type"] or "-"),
        ("reason", row["reason"]),
        ("permanent", "yes" if row["permanent"] else "no (out of attempts)"),
        ("attempts", row["attempts"]),
        ("received", _when(row["received_at"])),
        ("failed", _when(row["failed_at"])),
        ("replayed", _replayed(row)),
        ("from", row["remote"] or "-"),
    )
    for label, value in fields:
        console.print(f"  {label}: {value}", markup=False)
    console.print("[bold]headers[/bold]")
    for name, value in row["headers"]:
        console.print(f"  {name}: {value}", markup=False)
    console.print("[bold]attempts[/bold]")
    for err in row["errors"]:
        kind = "permanent" if err.get("permanent") else "transient"
        console.print(f"  #{err['attempt']} {err['at']} ({kind}): {err['error']}", markup=False)
    console.print("[bold]body[/bold]")
    console.print(row.get("body", f"(base64) {row.get('body_base64')}"), markup=False)


def _replayed(row: dict[str, Any]) -> str:
    if not row["replayed_at"]:
        return "never"
    times = row["replays"] or 1
    return f"{_when(row['replayed_at'])} ({times} time{'s' if times != 1 else ''})"


def _existing(engine: Engine, ids: Sequence[int], source: str | None) -> set[int]:
    query = select(dead_letters.c.id).where(dead_letters.c.id.in_(ids))
    if source:
        query = query.where(dead_letters.c.source == source)
    with engine.connect() as conn:
        return set(conn.execute(query).scalars())


def dlq_replay(settings: Settings, ids: Sequence[int] | None, source: str | None) -> list[int]:
    """Queue the given dead letters (or every one not already replayed) again; returns the
    given ids that do not exist (or are not from ``source``)."""
    done = 0
    todo: list[int] = []
    missing: list[int] = []
    try:
        with _engine(settings) as engine, _redis(settings) as redis:
            todo = deadletters.replay_ids(engine, ids, source)
            if ids is not None:
                missing = sorted(set(ids) - set(todo))
            spec = JobSpec.from_settings(settings)
            if todo:
                with Progress(console=console, transient=False) as progress:
                    task = progress.add_task("replaying", total=len(todo))
                    for _ in deadletters.replay(engine, redis, spec, todo):
                        done += 1
                        progress.advance(task)
    except KeyboardInterrupt:
        console.print(f"interrupted: replayed {done} of {len(todo)}; run again to send the rest")
        raise SystemExit(EXIT_INTERRUPTED) from None
    console.print(f"replayed {done} dead letter(s)")
    return missing


def dlq_purge(
    settings: Settings, ids: Sequence[int] | None, older_than: float | None, source: str | None
) -> tuple[int, list[int]]:
    """Delete the given dead letters (or all, with the filters); returns how many were deleted
    and the given ids that do not exist (or are not from ``source``)."""
    with _engine(settings) as engine:
        missing: list[int] = []
        if ids is not None:
            found = _existing(engine, ids, source)
            missing = sorted(set(ids) - found)
            ids = sorted(found)
            if not ids:
                return 0, missing
        n = deadletters.purge(engine, ids, older_than_days=older_than, source=source)
        return n, missing
