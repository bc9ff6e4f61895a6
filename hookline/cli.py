"""The ``hookline`` command line; README.md's "Commands" section documents every command and
option (``tests/test_readme.py`` holds the two together).

Every failure is one line on stderr, ``hookline: <cause>``, and one of the exit statuses below.
"""

from __future__ import annotations

import errno
import json
import logging
import sys
from collections.abc import Callable, Iterable
from functools import wraps
from typing import Any, NoReturn, TypeVar

import click
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError

from shared.config import Settings, load_settings
from shared.errors import ConfigError

F = TypeVar("F", bound=Callable[..., Any])

#: exit statuses, as the README's "Commands" section lists them
EXIT_OK = 0
EXIT_UNREACHABLE = 1  # a service (Redis, the database, the ingress) cannot be reached
EXIT_USAGE = 2  # a usage or configuration error, a port already in use
EXIT_NOT_FOUND = 3  # an id given on the command line does not exist
EXIT_INTERRUPTED = 130  # `dlq replay` stopped by Ctrl-C, after saying how far it got


class CommandFailed(Exception):
    """Raised below a command: ``hookline: <message>`` on stderr and exit ``status``."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def fail(message: str, status: int) -> NoReturn:
    """One line on stderr, then exit with ``status``."""
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


def _logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


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
@click.option(
    "--port",
    default=8080,
    show_default=True,
    type=click.IntRange(0, 65535),
    metavar="PORT",
    help="Port to listen on.",
)
@one_line_errors
def serve(config_path: str | None, host: str, port: int) -> None:
    """Run the ingress (aiohttp)."""
    from ingest.app import run

    settings = _settings(config_path)
    _logging()
    run(settings, host, port)


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
@click.option("--log-level", type=click.Choice(["info", "dev"]), default="info", hidden=True)
@one_line_errors
def worker(
    config_path: str | None,
    burst: bool,
    queues: tuple[str, ...],
    metrics_port: int | None,
    log_level: str,
) -> None:
    """Run a worker process."""
    from workers.worker import run

    settings = _settings(config_path)
    _logging()
    if metrics_port:
        from prometheus_client import start_http_server

        from workers import runtime

        rt = runtime.configure(settings)
        start_http_server(metrics_port, registry=rt.metrics.registry)
    if log_level == "dev":
        # one line per event (hookline's own), not RQ's several lines per job
        logging.getLogger("rq").setLevel(logging.WARNING)
    run(settings, queues, burst=burst, rq_log_level="WARNING" if log_level == "dev" else "INFO")


@main.command()
@config_option
@json_option
@one_line_errors
def status(config_path: str | None, as_json: bool) -> None:
    """Queue depth, jobs running, events waiting to retry, dead letters, workers alive."""
    from hookline.ops import gather_status, print_status

    data = gather_status(_settings(config_path))
    if as_json:
        _echo_json(data)
    else:
        print_status(data)


@main.group()
def dlq() -> None:
    """Inspect, replay and purge dead letters."""


@dlq.command("list")
@config_option
@source_option("dead letters from this source")
@click.option(
    "--limit",
    default=50,
    show_default=True,
    type=click.IntRange(1, 100000),
    metavar="N",
    help="Show at most N.",
)
@older_than_option
@json_option
@one_line_errors
def dlq_list(
    config_path: str | None, source: str | None, limit: int, older_than: float | None, as_json: bool
) -> None:
    """Dead letters, newest first."""
    from hookline.ops import dlq_list_rows, print_dlq_list

    rows = dlq_list_rows(_settings(config_path), source, limit, older_than)
    if as_json:
        _echo_json(rows)
    else:
        print_dlq_list(rows)


@dlq.command("show")
@config_option
@click.argument("dead_letter_id", type=int, metavar="ID")
@json_option
@one_line_errors
def dlq_show(config_path: str | None, dead_letter_id: int, as_json: bool) -> None:
    """One dead letter: headers, body, every attempt's error."""
    from hookline.ops import dlq_get, print_dlq_row

    row = dlq_get(_settings(config_path), dead_letter_id)
    if row is None:
        not_found("dead letter", [dead_letter_id])
    if as_json:
        _echo_json(row)
    else:
        print_dlq_row(row)


def _ids_or_all(ids: tuple[int, ...], all_: bool) -> list[int] | None:
    if bool(ids) == all_:
        raise click.UsageError("give dead letter ids or --all (not both)")
    return None if all_ else list(ids)


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
    from hookline.ops import dlq_replay as replay

    missing = replay(_settings(config_path), _ids_or_all(ids, all_), source)
    if missing:
        not_found("dead letter", missing)


@dlq.command("purge")
@config_option
@click.argument("ids", nargs=-1, type=int, metavar="[ID]...")
@click.option("--all", "all_", is_flag=True, help="Every dead letter (with the filters below).")
@older_than_option
@source_option("dead letters from this source")
@one_line_errors
def dlq_purge(
    config_path: str | None,
    ids: tuple[int, ...],
    all_: bool,
    older_than: float | None,
    source: str | None,
) -> None:
    """Delete dead letters (--older-than alone means --all --older-than)."""
    from hookline.ops import dlq_purge as purge

    if not ids and not all_ and older_than is not None:
        all_ = True
    n, missing = purge(_settings(config_path), _ids_or_all(ids, all_), older_than, source)
    click.echo(f"purged {n} dead letter(s)")
    if missing:
        not_found("dead letter", missing)


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
    "--port",
    default=8080,
    show_default=True,
    type=click.IntRange(1, 65535),
    metavar="PORT",
    help="Port for the ingress (on 127.0.0.1).",
)
@one_line_errors
def dev(config_path: str | None, port: int) -> None:
    """Everything in one process tree: embedded Redis, SQLite, the ingress and a worker."""
    from hookline.dev import run_dev

    sys.exit(run_dev(config_path, port))


if __name__ == "__main__":  # pragma: no cover - `python -m hookline.cli`, as dev runs its children
    # run the module as imported under its own name: the CommandFailed that hookline.dev and
    # hookline.ops raise must be the class the commands here catch, not a __main__ copy of it
    from hookline.cli import main as imported_main

    imported_main()
