"""The base every signature scheme builds on.

A scheme is a small class: ``verify`` raises one of our :class:`~shared.errors.SignatureError`
subclasses or returns, ``sign`` produces the headers a provider would send (so tests and
``hookline send`` sign with real code), and the optional ``handshake`` answers a provider's
endpoint check. Every parsing step goes through the helpers here, which turn malformed input
into our own errors: no stray ``ValueError`` may escape into the ingress.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, TypeVar, overload

from shared.errors import ConfigError, InvalidSignature, MissingSignature, StaleTimestamp

_DIGITS = re.compile(rb"[0-9]{1,12}")
_HEX = re.compile(r"[0-9a-fA-F]+")


_T = TypeVar("_T")


class Headers(Protocol):
    """A case-insensitive multi-mapping such as aiohttp's ``CIMultiDictProxy``."""

    @overload
    def getall(self, key: str) -> list[str]: ...
    @overload
    def getall(self, key: str, default: _T) -> list[str] | _T: ...


@dataclass(frozen=True)
class SchemeConfig:
    """What a scheme is configured with: the source's secrets and scheme-specific options."""

    source: str
    secrets: tuple[str, ...] = ()
    tolerance_seconds: int = 300
    options: Mapping[str, Any] = field(default_factory=dict)


class Scheme(ABC):
    """One provider's way of proving a request authentic."""

    name: ClassVar[str]
    #: configuration keys of ``[sources.X]`` this scheme accepts beyond the common ones
    option_keys: ClassVar[frozenset[str]] = frozenset()
    #: whether at least one entry in ``secrets`` is required
    needs_secret: ClassVar[bool] = True
    #: whether ``allowed_ips`` must be non-empty
    needs_allowed_ips: ClassVar[bool] = False
    #: where the event id is found unless the source overrides ``event_id``
    default_event_id: ClassVar[str] = "sha256"
    #: where the event type is found unless the source overrides ``event_type``
    default_event_type: ClassVar[str | None] = None
    #: header names whose values are secret or signatures: never logged, redacted when stored
    sensitive_headers: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, config: SchemeConfig) -> None:
        self.config = config
        if self.needs_secret and not config.secrets:
            raise ConfigError(f"source {config.source!r}: scheme {self.name!r} needs a secret")
        for secret in config.secrets:
            # a blank secret is a mistake (a value copied as spaces or a newline), never a key;
            # the message never echoes the secret itself
            if not secret.strip():
                raise ConfigError(f"source {config.source!r}: a secret is empty or blank")

    def sensitive(self) -> frozenset[str]:
        """Lower-case names of the headers that must never be logged or stored in clear."""
        return frozenset(h.lower() for h in self.sensitive_headers)

    @abstractmethod
    def verify(self, headers: Headers, body: bytes, now: float) -> None:
        """Return if the request is authentic, else raise a ``SignatureError``."""

    @abstractmethod
    def sign(self, body: bytes, now: float, event_id: str | None = None) -> dict[str, str]:
        """The headers the provider would send for ``body`` at ``now`` with the first secret."""

    def handshake(self, body: bytes) -> dict[str, str] | None:
        """The answer to the provider's setup handshake, or ``None``: not a handshake.

        Some providers prove an endpoint before sending it events (Slack's ``url_verification``
        echoes a challenge). The ingress calls this only after :meth:`verify` has accepted the
        request and before it looks for the event id; a mapping is answered as JSON with
        ``200`` and nothing is queued. ``body`` is authentic but otherwise arbitrary: parse it
        with :func:`json_object` and answer ``None`` for anything unexpected, never raise. The
        default: no handshake.
        """
        return None

    # -- helpers shared by the schemes -------------------------------------------------------

    def require_match(self, digest: Callable[[str], bytes], received: list[bytes]) -> None:
        """Raise unless some received signature is ``digest(secret)`` for some configured
        secret (rotation), compared in constant time over every pair."""
        if not any_matches([digest(secret) for secret in self.config.secrets], received):
            raise InvalidSignature("signature does not match")

    def check_timestamp(self, raw: str, now: float) -> int:
        """Parse unix seconds strictly (ASCII digits only) and check them in both directions."""
        ts = parse_unix_seconds(raw)
        if abs(now - ts) > self.config.tolerance_seconds:
            raise StaleTimestamp("timestamp outside tolerance")
        return ts


def option_str(config: SchemeConfig, key: str, default: str | None = None) -> str:
    """A string option, or a ``ConfigError`` naming the source and the key."""
    value = config.options.get(key, default)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"source {config.source!r}: {key!r} must be a non-empty string")
    return value


def single_header(headers: Headers, name: str) -> str:
    """The one value of header ``name``: missing or empty is ``MissingSignature``, repeated is
    ambiguous and so ``InvalidSignature``."""
    values = headers.getall(name, [])
    if len(values) > 1:
        raise InvalidSignature(f"header {name} repeated")
    if not values or not values[0].strip():
        raise MissingSignature(f"missing header {name}")
    return values[0].strip()


def parse_unix_seconds(raw: str) -> int:
    """Unix seconds: 1 to 12 ASCII digits, nothing else (no sign, space, dot or exponent)."""
    data = raw.encode("ascii", "replace")
    if not _DIGITS.fullmatch(data):
        raise InvalidSignature("malformed timestamp")
    return int(data)


def header_bytes(value: str) -> bytes:
    """The bytes on the wire: aiohttp decodes headers as UTF-8 with ``surrogateescape``."""
    try:
        return value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError as err:  # a lone surrogate aiohttp cannot have produced
        raise InvalidSignature("header is not text") from err


def decode_hex(value: str) -> bytes:
    """Hex in either case, or ``InvalidSignature``."""
    if not _HEX.fullmatch(value) or len(value) % 2:
        raise InvalidSignature("signature is not hex")
    return bytes.fromhex(value)


def decode_b64(value: str) -> bytes:
    """Standard base64 with padding, or ``InvalidSignature``."""
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError) as err:
        raise InvalidSignature("signature is not base64") from err


def json_object(body: bytes) -> dict[str, Any] | None:
    """The body as a JSON object, or ``None`` for anything else (never raises)."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None
    return doc if isinstance(doc, dict) else None


def hmac_digest(key: bytes, message: bytes, algorithm: str = "sha256") -> bytes:
    return hmac.new(key, message, getattr(hashlib, algorithm)).digest()


def any_matches(expected: list[bytes], received: list[bytes]) -> bool:
    """Constant-time: does any received signature equal any expected one?

    Every pair is compared (no early exit) so timing does not reveal which secret matched.
    """
    found = False
    for e in expected:
        for r in received:
            found |= hmac.compare_digest(e, r)
    return found


def secret_bytes(secret: str) -> bytes:
    return secret.encode("utf-8")
