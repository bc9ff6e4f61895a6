"""The ``hookline`` command line (see CONTRACT.md). Exit 0 on success, 2 on a usage or
configuration error with one line naming the cause."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import click

from shared.config import Settings, load_settings
from shared.errors import ConfigError

F = TypeVar("F", bound=Callable[..., Any])

config_option = click.option(
    "--config", "config_path", type=click.Path(dir_okay=False), default=None,
    help="Configuration file (default: $HOOKLINE_CONFIG, else ./hookline.toml).",
)


def config_errors_exit_2(func: F) -> F:
    """A ``ConfigError`` anywhere below is one line on stderr and exit status 2."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ConfigError as err:
            click.echo(f"hookline: configuration error: {err}", err=True)
            sys.exit(2)

    return wrapper  # type: ignore[return-value]


def settings_for(config_path: str | None, *, required: bool = True) -> Settings:
    return load_settings(config_path, required=required)


def _logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@click.group()
@click.version_option(package_name="hookline")
def main() -> None:
    """hookline: verify, queue and apply webhooks exactly once."""


@main.command()
@config_option
@click.option("--host", default="0.0.0.0", show_default=True)
@click.option("--port", default=8080, show_default=True, type=int)
@config_errors_exit_2
def serve(config_path: str | None, host: str, port: int) -> None:
    """Run the ingress (aiohttp)."""
    from ingest.app import run

    settings = settings_for(config_path)
    _logging()
    run(settings, host, port)




if __name__ == "__main__":  # pragma: no cover
    main()
