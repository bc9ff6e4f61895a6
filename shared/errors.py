"""One rooted error tree for hookline.

Request errors carry the HTTP status and the machine-readable code the ingress answers with, so
the mapping lives here once. Configuration errors stay outside the tree on purpose: nothing that
catches :class:`HooklineError` may swallow a configuration mistake.
"""

from __future__ import annotations

from typing import ClassVar


class ConfigError(Exception):
    """The configuration is invalid; the message names the offending key or source."""


class HooklineError(Exception):
    """Root of every error hookline raises on purpose."""


class RequestRejected(HooklineError):
    """The ingress refuses a request; ``status`` and ``code`` are what the client sees."""

    status: ClassVar[int] = 400
    code: ClassVar[str] = "bad_request"
    #: the rest of the request was not read, so the connection cannot be reused
    close_connection: ClassVar[bool] = False
    #: seconds to tell the client to wait before trying again (``Retry-After``), if any
    retry_after: ClassVar[int | None] = None


class SignatureError(RequestRejected):
    """The request is not proven authentic."""

    status = 401
    code = "invalid_signature"


class MissingSignature(SignatureError):
    """A header the scheme needs is absent or empty."""

    code = "missing_signature"


class InvalidSignature(SignatureError):
    """The signature is malformed, ambiguous or does not match any configured secret."""

    code = "invalid_signature"


class StaleTimestamp(SignatureError):
    """The signed timestamp is outside the tolerance, in the past or the future."""

    code = "stale_timestamp"


class IpNotAllowed(RequestRejected):
    """The source address is not in the source's allow-list."""

    status = 403
    code = "ip_not_allowed"


class UnknownSource(RequestRejected):
    """No source of that name is configured."""

    status = 404
    code = "unknown_source"


class BodyTooLarge(RequestRejected):
    """The body is larger than ``max_body_bytes``."""

    status = 413
    code = "body_too_large"
    close_connection = True


class EventIdNotFound(RequestRejected):
    """An authentic request whose event id is not where the source says."""

    status = 400
    code = "event_id_not_found"


class EventError(HooklineError):
    """Processing an event failed in the worker."""


class PermanentError(EventError):
    """Retrying cannot help (bad payload, value the database rejects): dead-letter at once."""


class PayloadError(PermanentError):
    """The body cannot be parsed into an event (bad JSON, nesting too deep, missing fields)."""
