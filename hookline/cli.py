"""The ``hookline`` command line; README.md's "Commands" section documents every command and
option (``tests/test_readme.py`` holds the two together).

Every failure is one line on stderr, ``hookline: <cause>``, and one of the exit statuses below.
"""

from __future__ import annotations

import errno
import json
import logging
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from functools import wraps
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError

from hookline.exits import (
    EXIT_INTERRUPTED,
    EXIT_NOT_FOUND,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    CommandFailed,
)
from shared.config import Settings, load_settings
from shared.errors import ConfigError
from shared.eventlog import FilterError

if TYPE_CHECKING:
    from hookline.ops import Operations

F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str, status: int) -> NoReturn:
    """One line on stderr, then exit with ``status`` (a JSON object once a command logs in
    JSON: then every line on stderr is one)."""
    if _log_format == "json":
        logging.getLogger("hookline").error("%s", message)
    else:
        click.echo(f"hookline: {message}", err=True)
    sys.exit(status)


def not_found(what: str, ids: Iterable[int]) -> NoReturn:
    """``hookline: no <what> 7, 9`` and exit status 3 (``EXIT_NOT_FOUND``)."""
    fail(f"no {what} {', '.join(map(str, sorted(ids)))}", EXIT_NOT_FOUND)


config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    metavar="FILE",
    help="Configuration file (default: $HOOKLINE_CONFIG, else ./hookline.toml).",
)

older_than_option = click.option(
    "--older-than",
    "older_than",
    type=click.FloatRange(min=0),
    default=None,
    metavar="DAYS",
    help="Only dead letters that died more than DAYS ago.",
)

json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print JSON, with the values as stored."
)


def source_option(what: str) -> Callable[[F], F]:
    return click.option("--source", default=None, metavar="SOURCE", help=f"Only {what}.")


def type_option(what: str) -> Callable[[F], F]:
    return click.option("--type", "event_type", default=None, metavar="TYPE", help=f"Only {what}.")


def listen_port_option(default: int) -> Callable[[F], F]:
    return click.option(
        "--port",
        default=default,
        show_default=True,
        type=click.IntRange(0, 65535),
        metavar="PORT",
        help="Port to listen on.",
    )


limit_option = click.option(
    "--limit",
    default=50,
    show_default=True,
    type=click.IntRange(1, 1000),
    metavar="N",
    help="Show at most N.",
)

since_option = click.option(
    "--since",
    default=None,
    metavar="ISO|DAYS",
    help="Only events received since this time (ISO 8601) or this many days ago.",
)


#: the database URL of the settings the command loaded, to name a SQLite file it cannot open
_database_url: str | None = None


def _database_error(err: SQLAlchemyError) -> str:
    first = str(getattr(err, "orig", err)).strip().splitlines()[0]
    url = _database_url
    if url is not None and url.startswith("sqlite"):
        from sqlalchemy.engine import make_url

        database = make_url(url).database or ":memory:"
        if "unable to open database file" in first:
            return f"{first}: {database} (does its folder exist?)"
        if "no such table" in first:
            return f"{first} in {database}: run `hookline db upgrade`"
    return first


def one_line_errors(func: F) -> F:
    """What goes wrong below a command is one line on stderr and an exit status: a
    ``ConfigError`` is 2, a ``CommandFailed`` its own, Redis or the database unreachable 1."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ConfigError as err:
            fail(f"configuration error: {err}", EXIT_USAGE)
        except FilterError as err:
            fail(str(err), EXIT_USAGE)
        except CommandFailed as err:
            fail(str(err), err.status)
        except RedisError as err:
            fail(f"cannot reach Redis: {err}", EXIT_UNREACHABLE)
        except OSError as err:
            if err.errno == errno.EADDRINUSE:  # serve --port, worker --metrics-port
                fail(f"{err.strerror or err}: pass another port", EXIT_USAGE)
            fail(str(err), EXIT_UNREACHABLE)  # a file that cannot be read or written...
        except SQLAlchemyError as err:
            fail(f"database error: {_database_error(err)}", EXIT_UNREACHABLE)

    return wrapper  # type: ignore[return-value]


def _settings(config_path: str | None, *, required: bool = True) -> Settings:
    global _database_url
    settings = load_settings(config_path, required=required)
    _database_url = settings.database_url
    return settings


def _check_eviction(settings: Settings) -> None:
    """A Redis that may evict what was acknowledged stops the command (exit 2); one that may
    evict claims only, or will not say, is a warning."""
    from shared import redisconn

    warning = redisconn.check_eviction(settings.redis_url)
    if warning:
        click.echo(f"hookline: warning: {warning}", err=True)


#: ``[logging] format`` of the running command, once its logging is set up
_log_format = "text"


def _logging(settings: Settings, level: int = logging.INFO) -> None:
    """stderr in ``[logging] format`` for a long-running command (serve, worker, console)."""
    global _log_format
    from shared import logs

    logs.configure(settings.logging.format, level)
    _log_format = settings.logging.format


def _check_traces(settings: Settings) -> None:
    """With traces on, every exporter ``OTEL_TRACES_EXPORTER`` names is installed (checked
    before ``serve --processes`` forks: each process sets up its own)."""
    from shared import telemetry

    telemetry.check(settings)


def _echo_json(data: Any) -> None:
    """Values as stored; times in ISO 8601."""
    from shared.times import json_default

    click.echo(json.dumps(data, indent=2, default=json_default))


@click.group()
@click.version_option(package_name="hookline")
def main() -> None:
    """hookline: verify, queue and apply webhooks exactly once."""


@main.command()
@config_option
@click.option(
    "--host",
    default="0.0.0.0",  # every interface: providers reach the ingress from outside
    show_default=True,
    metavar="HOST",
    help="Address to listen on.",
)
@listen_port_option(8080)
@click.option(
    "--processes",
    default="1",
    show_default=True,
    metavar="N|auto",
    help="Ingress processes on the one port (auto: one per core), under gunicorn's arbiter.",
)
@one_line_errors
def serve(config_path: str | None, host: str, port: int, processes: str) -> None:
    """Run the ingress (aiohttp)."""
    from shared import redisconn

    try:
        from ingest.processes import resolve

        count = resolve(processes)
    except ValueError as err:
        raise click.BadParameter("auto or a number of 1 or more", param_hint="--processes") from err
    settings = _settings(config_path)
    redisconn.check_at_start(settings.redis_url)  # a service no sentinel knows: exit 2
    _check_eviction(settings)
    _check_traces(settings)
    _logging(settings)
    if count == 1:
        from ingest.app import run

        run(settings, host, port)
    else:
        from ingest import processes as many

        many.run(settings, host, port, count)


@main.command()
@config_option
@click.option("--burst", is_flag=True, help="Drain the queues (and due retries), then exit.")
@click.option(
    "--queues",
    "queues",
    multiple=True,
    metavar="QUEUE",
    help="A queue to take from; repeat it for several (default: the configured `queue`).",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(1, 65535),
    default=None,
    metavar="PORT",
    help="Serve Prometheus metrics on this port.",
)
@click.option(
    "--shards",
    "shard_list",
    default=None,
    metavar="N[,N...]",
    help="The shards to serve (see redis_shards; default: all), one worker process each.",
)
@click.option("--log-level", type=click.Choice(["info", "dev"]), default="info", hidden=True)
@one_line_errors
def worker(
    config_path: str | None,
    burst: bool,
    queues: tuple[str, ...],
    metrics_port: int | None,
    shard_list: str | None,
    log_level: str,
) -> None:
    """Run a worker process (one per shard served, when the keys are sharded)."""
    from shared import keys, shards
    from workers.worker import run

    settings = _settings(config_path)
    layout = shards.layout_for(settings)
    served = _served_shards(shard_list, layout)
    if layout.tagged and keys.this_shard() is None:
        # the processes of the shards, each with the shard's RQ_KEY_PREFIX
        from hookline import shardworkers
        from shared import redisconn

        redisconn.check_at_start(settings.redis_url)
        _check_eviction(settings)
        _logging(settings)
        args = ["--log-level", log_level, *(a for q in queues for a in ("--queues", q))]
        if config_path:
            args += ["--config", config_path]
        if burst:
            args.append("--burst")
        ready = _redis_ready(settings, served) if metrics_port else None
        sys.exit(
            shardworkers.run(served, args, burst=burst, metrics_port=metrics_port, ready=ready)
        )
    if keys.this_shard() is None:  # a shard's process: the parent checked, once for all
        _check_eviction(settings)
    _check_traces(settings)
    _logging(settings)
    if metrics_port:
        from workers import metrics, runtime

        rt = runtime.configure(settings)
        metrics.serve(metrics_port, rt.metrics.registry, _redis_ready(settings))
    if log_level == "dev":
        # one line per event (hookline's own), not RQ's several lines per job
        logging.getLogger("rq").setLevel(logging.WARNING)
    run(settings, queues, burst=burst, rq_log_level="WARNING" if log_level == "dev" else "INFO")


def _served_shards(text: str | None, layout: Any) -> list[Any]:
    """``--shards``: numbers of the deployment's shards, each once (default: all)."""
    if text is None:
        return list(layout.shards)
    try:
        wanted = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        wanted = []
    if not wanted or any(not 0 <= n < len(layout.shards) for n in wanted):
        raise click.BadParameter(
            f"shard numbers 0 to {len(layout.shards) - 1}, separated by commas"
            f" (redis_shards is {len(layout.shards)})",
            param_hint="--shards",
        )
    return [layout.shards[n] for n in wanted]


def _redis_ready(settings: Settings, served: Iterable[Any] = ()) -> Callable[[], bool]:
    """Whether Redis answers a PING within 2 s (a worker's ``/readyz``); with ``served``
    shards, whether one of theirs does (a shard whose primary is down waits alone)."""
    from shared import redisconn

    clients = [
        redisconn.connect(settings.redis_url, slot, socket_timeout=2, socket_connect_timeout=2)
        for slot in dict.fromkeys(s.slot for s in served) or [None]
    ]

    def ready() -> bool:
        for client in clients:
            try:
                if client.ping():
                    return True
            except (RedisError, OSError):
                continue
        return False

    return ready


@main.command()
@config_option
@json_option
@one_line_errors
def status(config_path: str | None, as_json: bool) -> None:
    """Queue depth, jobs running, events waiting to retry, dead letters, workers alive."""
    from hookline import printing

    with _ops(config_path) as ops:
        data = ops.status()
    if as_json:
        _echo_json(data)
    else:
        printing.status(data)


@contextmanager
def _ops(config_path: str | None) -> Iterator[Operations]:
    from hookline.ops import Operations

    with Operations(_settings(config_path)) as ops:
        yield ops


def _interrupted(done: int, total: int, what: str) -> NoReturn:
    click.echo(f"interrupted: {what} {done} of {total}; run again to send the rest")
    sys.exit(EXIT_INTERRUPTED)


# -- dead letters ---------------------------------------------------------------------------


@main.group()
def dlq() -> None:
    """Inspect, replay and purge dead letters."""


@dlq.command("list")
@config_option
@source_option("dead letters from this source")
@type_option("dead letters of this event type")
@limit_option
@older_than_option
@click.option(
    "--replayed",
    is_flag=True,
    help="Only those replayed: applied by their replay (kept for the record) or dead again.",
)
@json_option
@one_line_errors
def dlq_list(
    config_path: str | None,
    source: str | None,
    event_type: str | None,
    limit: int,
    older_than: float | None,
    replayed: bool,
    as_json: bool,
) -> None:
    """Dead letters still to deal with, newest first (--replayed: those replayed)."""
    from hookline import printing
    from workers.deadletters import older_than as older

    flt = replace(
        older(older_than), source=source, type=event_type, replayed=True if replayed else None
    )
    with _ops(config_path) as ops:
        rows = ops.dead_letters(flt, limit=limit).rows
    if as_json:
        _echo_json(rows)
    else:
        printing.dead_letters(rows)


@dlq.command("show")
@config_option
@click.argument("dead_letter_id", type=int, metavar="ID")
@json_option
@one_line_errors
def dlq_show(config_path: str | None, dead_letter_id: int, as_json: bool) -> None:
    """One dead letter: headers, body, every attempt's error."""
    from hookline import printing
    from hookline.ops import dead_letter_json

    with _ops(config_path) as ops:
        row = ops.dead_letter(dead_letter_id)
    if row is None:
        not_found("dead letter", [dead_letter_id])
    if as_json:
        _echo_json(dead_letter_json(row))
    else:
        printing.dead_letter(row)


def _ids_or_all(ids: tuple[int, ...], all_: bool) -> list[int] | None:
    if bool(ids) == all_:
        raise click.UsageError("give dead letter ids or --all (not both)")
    return None if all_ else list(ids)


def _given(ops: Operations, ids: list[int], source: str | None) -> tuple[list[int], list[int]]:
    """The given ids that are dead letters (of ``source``), and those that are not."""
    from shared.eventlog import Filter

    found = ops.existing_dead_letters(ids)
    if source:
        of_source = set(ops.dead_letter_ids(Filter(source=source)))
        found = [i for i in found if i in of_source]
    return found, sorted(set(ids) - set(found))


@dlq.command("replay")
@config_option
@click.argument("ids", nargs=-1, type=int, metavar="[ID]...")
@click.option("--all", "all_", is_flag=True, help="Every dead letter not already replayed.")
@source_option("dead letters from this source")
@one_line_errors
def dlq_replay(
    config_path: str | None, ids: tuple[int, ...], all_: bool, source: str | None
) -> None:
    """Send dead letters back through the workers (Ctrl-C stops cleanly between two)."""
    from hookline import printing
    from shared.eventlog import Filter

    given = _ids_or_all(ids, all_)
    with _ops(config_path) as ops:
        if given is None:
            todo = ops.dead_letter_ids(Filter(source=source), waiting_replay=False)
            missing: list[int] = []
        else:
            todo, missing = _given(ops, given, source)
        done = 0
        try:
            for _ in printing.with_progress(
                "replaying", len(todo), ops.replay_dead(todo, by="cli")
            ):
                done += 1
        except KeyboardInterrupt:
            _interrupted(done, len(todo), "replayed")
    click.echo(
        f"queued {done} dead letter(s) again: the workers run them now;"
        " `hookline dlq list --replayed` shows which were processed, `hookline dlq list` which"
        " died again"
    )
    if missing:
        not_found("dead letter", missing)


@dlq.command("purge")
@config_option
@click.argument("ids", nargs=-1, type=int, metavar="[ID]...")
@click.option("--all", "all_", is_flag=True, help="Every dead letter (with the filters below).")
@older_than_option
@source_option("dead letters from this source")
@click.option(
    "--replayed",
    is_flag=True,
    help="With --all: those replayed instead (applied by their replay, or dead again).",
)
@one_line_errors
def dlq_purge(
    config_path: str | None,
    ids: tuple[int, ...],
    all_: bool,
    older_than: float | None,
    source: str | None,
    replayed: bool,
) -> None:
    """Delete dead letters (--older-than alone means --all --older-than)."""
    from workers.deadletters import older_than as older

    if not ids and not all_ and older_than is not None:
        all_ = True
    given = _ids_or_all(ids, all_)
    with _ops(config_path) as ops:
        if given is None:
            flt = replace(older(older_than), source=source, replayed=True if replayed else None)
            todo = ops.dead_letter_ids(flt)
            missing: list[int] = []
        else:
            todo, missing = _given(ops, given, source)
            if older_than is not None:
                old = set(ops.dead_letter_ids(older(older_than)))
                todo = [i for i in todo if i in old]
        n = ops.purge_dead(todo)
    click.echo(f"purged {n} dead letter(s)")
    if missing:
        not_found("dead letter", missing)


# -- the event log --------------------------------------------------------------------------


@main.group()
def events() -> None:
    """The event log: every event the workers finished, its body, its timeline."""


@events.command("list")
@config_option
@source_option("events from this source")
@type_option("events of this type")
@click.option(
    "--status",
    type=click.Choice(["processed", "ignored", "dead"]),
    default=None,
    metavar="processed|ignored|dead",
    help="Only events with this outcome.",
)
@since_option
@limit_option
@click.option(
    "--before",
    type=click.IntRange(min=1),
    default=None,
    metavar="ID",
    help="Only events listed before row ID (the next page).",
)
@json_option
@one_line_errors
def events_list(
    config_path: str | None,
    source: str | None,
    event_type: str | None,
    status: str | None,
    since: str | None,
    limit: int,
    before: int | None,
    as_json: bool,
) -> None:
    """Events, newest first."""
    from hookline import printing
    from shared.eventlog import Filter

    flt = Filter.parse({"source": source, "type": event_type, "status": status, "since": since})
    with _ops(config_path) as ops:
        page = ops.events(flt, limit=limit, before=before)
    if as_json:
        _echo_json({"events": page.rows, "next_before": page.next_before})
    else:
        printing.events(page.rows, page.next_before)


@events.command("show")
@config_option
@click.argument("source", metavar="SOURCE")
@click.argument("event_id", metavar="EVENT_ID")
@json_option
@one_line_errors
def events_show(config_path: str | None, source: str, event_id: str, as_json: bool) -> None:
    """One event: its timeline (received, each attempt's error, its outcome), headers, body."""
    from hookline import printing
    from hookline.ops import event_json

    with _ops(config_path) as ops:
        detail = ops.event(source, event_id)
    if detail is None:
        fail(f"no event {source} {event_id}", EXIT_NOT_FOUND)
    if as_json:
        _echo_json(event_json(detail))
    else:
        printing.event(detail)


@events.command("replay")
@config_option
@click.argument("source_arg", required=False, metavar="[SOURCE]")
@click.argument("event_id", required=False, metavar="[EVENT_ID]")
@click.option(
    "--status",
    type=click.Choice(["ignored"]),
    default=None,
    metavar="ignored",
    help="Every event ignored (no handler when it arrived) that the filters match.",
)
@source_option("events from this source")
@type_option("events of this type")
@since_option
@one_line_errors
def events_replay(
    config_path: str | None,
    source_arg: str | None,
    event_id: str | None,
    status: str | None,
    source: str | None,
    event_type: str | None,
    since: str | None,
) -> None:
    """Run events ignored for want of a handler again, each applied once (Ctrl-C stops
    cleanly between two; running it again changes nothing more)."""
    from hookline import printing
    from shared.eventlog import Filter

    if bool(source_arg) == bool(status) or bool(source_arg) != bool(event_id):
        raise click.UsageError("give SOURCE EVENT_ID, or --status ignored with filters")
    with _ops(config_path) as ops:
        if source_arg and event_id:
            todo = _replayable_event(ops, source_arg, event_id)
            if todo is None:
                return
        else:
            flt = Filter.parse({"source": source, "type": event_type, "since": since})
            todo = ops.ignored_to_replay(flt)
        done = 0
        try:
            for _ in printing.with_progress(
                "replaying", len(todo), ops.replay_ignored(todo, by="cli")
            ):
                done += 1
        except KeyboardInterrupt:
            _interrupted(done, len(todo), "replayed")
    click.echo(
        f"queued {done} event(s) again: the workers run them now; `hookline events show SOURCE"
        " EVENT_ID` shows how each ends"
    )


def _replayable_event(ops: Operations, source: str, event_id: str) -> list[tuple[str, str]] | None:
    """The one event to replay as ignored; a dead one goes through its dead letter; one
    already applied is said so (exit 0: there is nothing to do)."""
    detail = ops.event(source, event_id)
    if detail is None:
        fail(f"no event {source} {event_id}", EXIT_NOT_FOUND)
    kind = detail.replayable
    if kind == "ignored":
        return [(source, event_id)]
    if kind == "dead" and detail.dead_letter is not None:
        list(ops.replay_dead([detail.dead_letter["id"]], by="cli"))
        click.echo(
            f"queued dead letter {detail.dead_letter['id']} again: the workers run it now;"
            f" `hookline events show {source} {event_id}` shows how it ends"
        )
        return None
    why = "its body is no longer kept" if detail.row["status"] == "ignored" else "nothing to do"
    click.echo(f"event {source} {event_id} is {detail.row['status']}: {why}")
    return None


@main.command()
@config_option
@source_option("requests for this source (_unknown: sources not configured)")
@limit_option
@json_option
@one_line_errors
def rejections(config_path: str | None, source: str | None, limit: int, as_json: bool) -> None:
    """Requests the ingress refused, newest first: answer, reason, address, size, header
    names (never a header value or a body byte)."""
    from hookline import printing

    with _ops(config_path) as ops:
        found = ops.rejections(source, limit)
    if as_json:
        _echo_json([r.to_json() for r in found])
    else:
        printing.rejections(found)


@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@config_option
@one_line_errors
def db_upgrade(config_path: str | None) -> None:
    """Create or migrate the schema (Alembic)."""
    from shared.migrate import upgrade

    settings = _settings(config_path, required=False)
    upgrade(settings.database_url)
    click.echo("database schema is up to date")


@db.command("prune")
@config_option
@click.option(
    "--older-than",
    "older_than",
    type=click.FloatRange(min=0),
    default=None,
    metavar="DAYS",
    help="Delete the bodies of events received more than DAYS ago (default: [archive] "
    "retention_days).",
)
@one_line_errors
def db_prune(config_path: str | None, older_than: float | None) -> None:
    """Delete old event bodies, in small chunks (the events' rows stay)."""
    with _ops(config_path) as ops:
        days = ops.settings.archive.retention_days if older_than is None else older_than
        n = ops.prune(days)
    click.echo(f"pruned {n} event bodies older than {days:g} day(s)")


@main.command()
@config_option
@click.argument("source")
@click.option(
    "--body",
    "body_path",
    default=None,
    metavar="FILE|-",
    help="File with the body, or - for stdin (default: an example for the source's scheme).",
)
@click.option(
    "--url",
    default=None,
    metavar="URL",
    help="Ingress base URL or full webhook URL (default: http://127.0.0.1:8080).",
)
@one_line_errors
def send(config_path: str | None, source: str, body_path: str | None, url: str | None) -> None:
    """Sign a body with SOURCE's scheme and first secret, POST it, print the answer."""
    from hookline.send import send as do_send

    code = do_send(_settings(config_path), source, body_path, url)
    sys.exit(code)


@main.command()
@config_option
@click.option(
    "--host",
    default="127.0.0.1",  # for operators only: never on the providers' interface by default
    show_default=True,
    metavar="HOST",
    help="Address to listen on.",
)
@listen_port_option(8081)
# hookline dev's: no access log (the overview refreshes itself every five seconds)
@click.option("--quiet", is_flag=True, hidden=True)
@one_line_errors
def console(config_path: str | None, host: str, port: int, quiet: bool) -> None:
    """The operators' web console (its own process and port, never the ingress's)."""
    settings = _settings(config_path)
    if not settings.console.token:
        fail(
            'the console needs a token: [console] token = "${HOOKLINE_CONSOLE_TOKEN}", or'
            " HOOKLINE_CONSOLE_TOKEN in the environment",
            EXIT_USAGE,
        )
    from console.app import run

    _check_eviction(settings)
    _logging(settings)
    run(settings, host, port, access_log=not quiet)


@main.command()
@config_option
@click.option(
    "--port",
    default=8080,
    show_default=True,
    type=click.IntRange(1, 65535),
    metavar="PORT",
    help="Port for the ingress (on 127.0.0.1).",
)
@click.option(
    "--reload/--no-reload",
    default=True,
    help="Restart the worker when a handler module or the configuration changes (on by"
    " default; the ingress and the console too for the configuration).",
)
@one_line_errors
def dev(config_path: str | None, port: int, reload: bool) -> None:
    """Everything in one process tree on this machine: an embedded Redis, SQLite, the ingress
    on 127.0.0.1:PORT, a worker, and the console on the port after (its login URL printed).

    Without a configuration it writes a demo hookline.toml here (three sources with fresh
    secrets, a console token), shown once. Its data (Redis's append-only file and log, the
    SQLite database) goes to .hookline/ beside the configuration. Ctrl-C stops all of it."""
    from hookline.dev import run_dev

    sys.exit(run_dev(config_path, port, reload=reload))


if __name__ == "__main__":  # pragma: no cover - `python -m hookline.cli`, as dev runs its children
    main()
