"""What the operator commands print for a person (``--json`` prints the values as stored).

Everything that came from outside (ids, types, reasons, headers, bodies) is printed literally:
never read as rich markup.
"""

from __future__ import annotations

import datetime as dt
import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, TypeVar

from rich.console import Console
from rich.markup import escape
from rich.progress import Progress
from rich.table import Table

from hookline.ops import FIGURES, body_for_humans
from shared.eventlog import EventDetail
from shared.times import for_people
from shared.traffic import Rejection

#: piped or redirected output gets wide lines rather than tables folded to 80 columns
console = Console(width=None if sys.stdout.isatty() else 200)
T = TypeVar("T")


def when(value: dt.datetime | None, never: str = "-") -> str:
    return for_people(value, never)


def _table(*columns: str) -> Table:
    table = Table()
    for column in columns:
        table.add_column(column, overflow="fold")
    return table


def _row(table: Table, *values: Any) -> None:
    table.add_row(*(escape(str(v)) for v in values))


def status(data: dict[str, Any]) -> None:
    """The console overview's figures, each with what it counts."""
    table = Table(show_header=False, box=None)
    table.add_row("queue", escape(str(data["queue"])), "")
    for key, label, meaning in FIGURES:
        table.add_row(label, escape(str(data[key])), f"[dim]{escape(meaning)}[/dim]")
    if "shards" in data:
        table.add_row(
            "redis memory",
            redis_memory(data),
            f"[dim]used, of maxmemory, by the fullest shard's Redis (shard"
            f" {data['redis_memory_shard']})[/dim]",
        )
        for shard in data["shards"]:
            table.add_row(f"shard {shard['shard']}", *_shard(shard))
    else:
        table.add_row("redis memory", redis_memory(data), "[dim]used, of maxmemory[/dim]")
    console.print(table)


def _shard(shard: dict[str, Any]) -> tuple[str, str]:
    if not shard["reachable"]:
        return "[bold red]unreachable[/bold red]", "[dim]its Redis does not answer[/dim]"
    return (
        f"{shard['queued']} queued",
        f"[dim]{shard['running']} running, {shard['waiting_to_retry']} waiting to retry,"
        f" {shard['workers_alive']} workers, {escape(redis_memory(shard))}[/dim]",
    )


def redis_memory(data: dict[str, Any]) -> str:
    """``1.5 MiB of 100.0 MiB maxmemory (2%)``, ``1.5 MiB (no maxmemory)``, or ``unknown``."""
    used, most = data["redis_memory_used_bytes"], data["redis_memory_max_bytes"]
    if used is None:
        return "unknown (INFO refused)"
    if not most:
        return f"{size(used)} (no maxmemory)"
    return f"{size(used)} of {size(most)} maxmemory ({used / most:.0%})"


def size(n: float) -> str:
    """Bytes for a person: 512 B, 1.5 KiB, 12.0 MiB, 2.0 GiB."""
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def dead_letters(rows: Sequence[dict[str, Any]]) -> None:
    if not rows:
        console.print("no dead letters")
        return
    table = _table("id", "source", "event id", "type", "attempts", "died", "replayed", "reason")
    for r in rows:
        _row(
            table,
            r["id"],
            r["source"],
            r["event_id"],
            r["event_type"] or "-",
            r["attempts"],
            when(r["failed_at"]),
            _replayed_short(r),
            r["reason"],
        )
    console.print(table)


def dead_letter(row: dict[str, Any]) -> None:
    """For a person: yes/no, "never", "-"; ``--json`` has the values as stored."""
    title = escape(f"{row['id']}: {row['source']} / {row['event_id']}")
    console.print(f"[bold]dead letter[/bold] {title}")
    fields = (
        ("type", row["event_type"] or "-"),
        ("reason", row["reason"]),
        ("permanent", "yes" if row["permanent"] else "no (out of attempts)"),
        ("attempts", row["attempts"]),
        ("received", when(row["received_at"])),
        ("failed", when(row["failed_at"])),
        ("replayed", _replayed(row)),
        ("from", row["remote"] or "-"),
    )
    for label, value in fields:
        console.print(f"  {label}: {value}", markup=False)
    _headers(row["headers"])
    console.print("[bold]attempts[/bold]")
    for err in row["errors"]:
        kind = "permanent" if err.get("permanent") else "transient"
        at = for_people(err.get("at"))
        console.print(f"  #{err['attempt']} {at} ({kind}): {err['error']}", markup=False)
    _body(row["body"])


def _replayed(row: dict[str, Any]) -> str:
    if not row["replayed_at"]:
        return "never"
    times = row["replays"] or 1
    shown = f"{when(row['replayed_at'])} ({times} time{'s' if times != 1 else ''})"
    return f"{shown}, applied {when(row['applied_at'])}" if row["applied_at"] else shown


def _replayed_short(row: dict[str, Any]) -> str:
    shown = when(row["replayed_at"], "never")
    return f"{shown} (applied)" if row["applied_at"] else shown


def _headers(headers: Iterable[Sequence[str]] | None) -> None:
    console.print("[bold]headers[/bold]")
    if headers is None:
        console.print("  (no longer kept)")
        return
    for name, value in headers:
        console.print(f"  {name}: {value}", markup=False)


def _body(body: bytes | None) -> None:
    console.print("[bold]body[/bold]")
    shown = body_for_humans(body)
    if not shown:
        console.print("  (no longer kept: [archive] retention_days)")
    elif "body" in shown:
        console.print(shown["body"], markup=False)
    else:
        console.print(f"(base64) {shown['body_base64']}", markup=False)


def events(rows: Sequence[dict[str, Any]], next_before: int | None) -> None:
    if not rows:
        console.print("no events")
        return
    table = _table("id", "source", "event id", "type", "status", "attempts", "received", "done")
    for r in rows:
        _row(
            table,
            r["id"],
            r["source"],
            r["event_id"],
            r["event_type"] or "-",
            r["status"],
            r["attempts"],
            when(r["received_at"]),
            when(r["processed_at"]),
        )
    console.print(table)
    if next_before is not None:
        console.print(f"more: add --before {next_before}", markup=False)


def event(detail: EventDetail) -> None:
    row = detail.row
    console.print(
        f"[bold]event[/bold] {escape(row['source'])} / {escape(row['event_id'])}"
        f"  [bold]{escape(row['status'])}[/bold]"
    )
    fields = (
        ("type", row["event_type"] or "-"),
        ("attempts", row["attempts"]),
        ("from", row["remote"] or "-"),
        ("dead letter", _dead_letter_of(detail)),
    )
    for label, value in fields:
        console.print(f"  {label}: {value}", markup=False)
    console.print("[bold]timeline[/bold]")
    for step in detail.timeline:
        extra = f": {step['detail']}" if step.get("detail") else ""
        console.print(f"  {when(step['at'])}  {step['what']}{extra}", markup=False)
    _headers(detail.headers)
    _body(detail.body)


def _dead_letter_of(detail: EventDetail) -> str:
    dl_id = detail.dead_letter_id
    if dl_id is None:
        return "-"
    if detail.dead_letter is None:
        return f"{dl_id} (purged)"
    if detail.dead_letter["applied_at"] is not None:
        return f"{dl_id} (applied by a replay: `hookline dlq list --replayed`)"
    return str(dl_id)


def rejections(found: Sequence[Rejection]) -> None:
    if not found:
        console.print("no rejections")
        return
    table = _table("at", "source", "answer", "reason", "from", "size", "header names")
    for r in found:
        at = dt.datetime.fromtimestamp(r.at, dt.UTC)
        size = "-" if r.size is None else r.size
        _row(
            table, when(at), r.source, r.status, r.reason, r.remote, size, ", ".join(r.header_names)
        )
    console.print(table)


def with_progress(label: str, total: int, items: Iterator[T]) -> Iterator[T]:
    """``items`` with a progress bar of ``total`` steps."""
    with Progress(console=console, transient=False) as progress:
        task = progress.add_task(label, total=total)
        for item in items:
            progress.advance(task)
            yield item
