"""The ``hookline`` command line (see CONTRACT.md). Exit 0 on success, 2 on a usage or
configuration error with one line naming the cause."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import click
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError

from shared.config import Settings, load_settings
from shared.errors import ConfigError

F = TypeVar("F", bound=Callable[..., Any])

config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Configuration file (default: $HOOKLINE_CONFIG, else ./hookline.toml).",
)

older_than_option = click.option(
    "--older-than",
    "older_than",
    type=click.FloatRange(min=0),
    default=None,
    help="Only dead letters that died more than DAYS ago.",
)


def config_errors_exit_2(func: F) -> F:
    """A ``ConfigError`` anywhere below is one line on stderr and exit status 2; so is a
    service that cannot be reached when the command starts."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ConfigError as err:
            click.echo(f"hookline: configuration error: {err}", err=True)
            sys.exit(2)
        except RedisError as err:
            click.echo(f"hookline: cannot reach Redis: {err}", err=True)
            sys.exit(1)
        except OSError as err:  # a port in use, a file that cannot be written...
            click.echo(f"hookline: {err}", err=True)
            sys.exit(1)
        except SQLAlchemyError as err:
            first = str(getattr(err, "orig", err)).strip().splitlines()[0]
            click.echo(f"hookline: database error: {first}", err=True)
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


def _settings(config_path: str | None, *, required: bool = True) -> Settings:
    return load_settings(config_path, required=required)


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
@click.option("--host", default="0.0.0.0", show_default=True)
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535))
@config_errors_exit_2
def serve(config_path: str | None, host: str, port: int) -> None:
    """Run the ingress (aiohttp)."""
    from ingest.app import run

    settings = _settings(config_path)
    _logging()
    run(settings, host, port)


@main.command()
@config_option
@click.option("--burst", is_flag=True, help="Drain the queues (and due retries), then exit.")
@click.option("--queues", "queues", multiple=True, help="Queue to take from (repeatable).")
@click.option(
    "--metrics-port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Serve Prometheus metrics on this port.",
)
@click.option("--log-level", type=click.Choice(["info", "dev"]), default="info", hidden=True)
@config_errors_exit_2
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
@click.option("--json", "as_json", is_flag=True)
@config_errors_exit_2
def status(config_path: str | None, as_json: bool) -> None:
    """Queue depth, events waiting to retry, dead letters, workers alive."""
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
@click.option("--source", default=None)
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 100000))
@older_than_option
@click.option("--json", "as_json", is_flag=True)
@config_errors_exit_2
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
@click.argument("dead_letter_id", type=int)
@click.option("--json", "as_json", is_flag=True)
@config_errors_exit_2
def dlq_show(config_path: str | None, dead_letter_id: int, as_json: bool) -> None:
    """One dead letter: headers, body, every attempt's error."""
    from hookline.ops import dlq_get, print_dlq_row

    row = dlq_get(_settings(config_path), dead_letter_id)
    if row is None:
        click.echo(f"hookline: no dead letter {dead_letter_id}", err=True)
        sys.exit(1)
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
@click.argument("ids", nargs=-1, type=int)
@click.option("--all", "all_", is_flag=True, help="Every dead letter not already replayed.")
@click.option("--source", default=None)
@config_errors_exit_2
def dlq_replay(
    config_path: str | None, ids: tuple[int, ...], all_: bool, source: str | None
) -> None:
    """Send dead letters back through the workers (Ctrl-C stops cleanly between two)."""
    from hookline.ops import dlq_replay as replay

    replay(_settings(config_path), _ids_or_all(ids, all_), source)


@dlq.command("purge")
@config_option
@click.argument("ids", nargs=-1, type=int)
@click.option("--all", "all_", is_flag=True)
@older_than_option
@click.option("--source", default=None)
@config_errors_exit_2
def dlq_purge(
    config_path: str | None,
    ids: tuple[int, ...],
    all_: bool,
    older_than: float | None,
    source: str | None,
) -> None:
    """Delete dead letters."""
    from hookline.ops import dlq_purge as purge

    if not ids and not all_ and older_than is not None:
        all_ = True
    n = purge(_settings(config_path), _ids_or_all(ids, all_), older_than, source)
    click.echo(f"purged {n} dead letter(s)")


@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@config_option
@config_errors_exit_2
def db_upgrade(config_path: str | None) -> None:
    """Create or migrate the schema."""
    from shared.migrate import upgrade

    settings = _settings(config_path, required=False)
    upgrade(settings.database_url)
    click.echo("database schema is up to date")


@main.command()
@config_option
@click.argument("source")
@click.option("--body", "body_path", default=None, help="File with the body, or - for stdin.")
@click.option("--url", default=None, help="Ingress base URL or full webhook URL.")
@config_errors_exit_2
def send(config_path: str | None, source: str, body_path: str | None, url: str | None) -> None:
    """Sign a body with SOURCE's scheme and first secret, POST it, print the answer."""
    from hookline.send import send as do_send

    code = do_send(_settings(config_path), source, body_path, url)
    sys.exit(code)


@main.command()
@config_option
@click.option("--port", default=8080, show_default=True, type=click.IntRange(1, 65535))
@config_errors_exit_2
def dev(config_path: str | None, port: int) -> None:
    """Everything in one process tree: embedded Redis, SQLite, the ingress and a worker."""
    from hookline.dev import run_dev

    sys.exit(run_dev(config_path, port))


if __name__ == "__main__":  # pragma: no cover
    main()
