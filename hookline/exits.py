"""What the command line and the code below it (``hookline.dev``, ``hookline.ops``) share:
the exit statuses and the exception that ends a command with one of them. A module of its own
so that code below the command line never imports the command line itself."""

from __future__ import annotations

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
