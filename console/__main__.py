"""``python -m console [--host HOST] [--port PORT] [--quiet]``: the console as ``hookline dev``
runs it. The configuration comes from ``$HOOKLINE_CONFIG`` as for ``hookline console``; when
it has no ``[console] token``, the token ``hookline dev`` generated for this run comes in
``$HOOKLINE_CONSOLE_TOKEN`` (so a user's own configuration is never written to)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import replace

from console.app import run
from shared.config import MIN_TOKEN_LENGTH, ConsoleSettings, load_settings
from shared.errors import ConfigError

TOKEN_VARIABLE = "HOOKLINE_CONSOLE_TOKEN"  # noqa: S105 - a variable name, not a secret


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m console", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--quiet", action="store_true", help="no access log")
    args = parser.parse_args(argv)
    try:
        settings = load_settings(None)
    except ConfigError as err:
        print(f"hookline console: configuration error: {err}", file=sys.stderr)
        return 2
    if not settings.console.token:
        token = os.environ.get(TOKEN_VARIABLE, "")
        if len(token.strip()) < MIN_TOKEN_LENGTH:
            print(f"hookline console: no [console] token and no {TOKEN_VARIABLE}", file=sys.stderr)
            return 2
        settings = replace(settings, console=ConsoleSettings(token=token))
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    run(settings, args.host, args.port, access_log=not args.quiet)
    return 0


if __name__ == "__main__":
    sys.exit(main())
