"""Body HMAC schemes: one header carries an HMAC of the raw body, optionally behind a prefix.

:class:`BodyHmacScheme` holds the logic shared by the fixed-format providers (GitHub, Shopify,
HelloAsso); the configurable ``hmac`` scheme reads the same four settings from the source.
"""

from __future__ import annotations

import base64
from typing import ClassVar

from shared.errors import ConfigError, InvalidSignature
from shared.signatures.base import (
    Headers,
    Scheme,
    SchemeConfig,
    decode_b64,
    decode_hex,
    hmac_digest,
    option_str,
    secret_bytes,
    single_header,
)

ALGORITHMS = ("sha256", "sha512")
ENCODINGS = ("hex", "base64")


class BodyHmacScheme(Scheme):
    """HMAC of the raw body, sent in ``header`` as ``prefix`` + hex or base64 digest."""

    header: str
    algorithm: str = "sha256"
    encoding: str = "hex"
    prefix: str = ""

    def sensitive(self) -> frozenset[str]:
        return super().sensitive() | {self.header.lower()}

    def verify(self, headers: Headers, body: bytes, now: float) -> None:
        value = single_header(headers, self.header)
        # the prefix is a public label, not a secret: an ordinary comparison is fine
        if value[: len(self.prefix)].lower() != self.prefix.lower():
            raise InvalidSignature(f"signature lacks the prefix {self.prefix!r}")
        encoded = value[len(self.prefix) :]
        received = decode_hex(encoded) if self.encoding == "hex" else decode_b64(encoded)
        self.require_match(lambda secret: self._digest(secret, body), [received])

    def sign(self, body: bytes, now: float, event_id: str | None = None) -> dict[str, str]:
        digest = self._digest(self.config.secrets[0], body)
        if self.encoding == "hex":
            encoded = digest.hex()
        else:
            encoded = base64.b64encode(digest).decode("ascii")
        return {self.header: self.prefix + encoded}

    def _digest(self, secret: str, body: bytes) -> bytes:
        return hmac_digest(secret_bytes(secret), body, self.algorithm)


class HmacScheme(BodyHmacScheme):
    """Configurable body HMAC for providers without a dedicated scheme.

    Options: ``header`` (default ``X-Signature``), ``algorithm`` (``sha256`` | ``sha512``),
    ``encoding`` (``hex`` | ``base64``) and ``prefix`` (e.g. ``sha256=``, default none).
    """

    name = "hmac"
    option_keys: ClassVar[frozenset[str]] = frozenset({"header", "algorithm", "encoding", "prefix"})

    def __init__(self, config: SchemeConfig) -> None:
        super().__init__(config)
        self.header = option_str(config, "header", "X-Signature")
        self.algorithm = _choice(config, "algorithm", ALGORITHMS)
        self.encoding = _choice(config, "encoding", ENCODINGS)
        prefix = config.options.get("prefix", "")
        if not isinstance(prefix, str):
            raise ConfigError(f"source {config.source!r}: 'prefix' must be a string")
        self.prefix = prefix


def _choice(config: SchemeConfig, key: str, allowed: tuple[str, ...]) -> str:
    """Option ``key``, one of ``allowed`` (the first is the default)."""
    value = option_str(config, key, allowed[0])
    if value not in allowed:
        raise ConfigError(f"source {config.source!r}: {key!r} must be one of {', '.join(allowed)}")
    return value
