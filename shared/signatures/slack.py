"""Slack: ``X-Slack-Signature: v0=<hex HMAC-SHA256 of "v0:{timestamp}:" + body>``."""

from __future__ import annotations

from shared.errors import InvalidSignature
from shared.signatures.base import (
    Headers,
    Scheme,
    decode_hex,
    hmac_digest,
    secret_bytes,
    single_header,
)

SIGNATURE = "X-Slack-Signature"
TIMESTAMP = "X-Slack-Request-Timestamp"


class SlackScheme(Scheme):
    """Slack requests (Events API, slash commands, interactivity) under the signing secret."""

    name = "slack"
    default_event_id = "json:event_id"
    default_event_type = "json:event.type"
    sensitive_headers = frozenset({SIGNATURE})

    def verify(self, headers: Headers, body: bytes, now: float) -> None:
        stamp = single_header(headers, TIMESTAMP)
        version, sep, encoded = single_header(headers, SIGNATURE).partition("=")
        if version != "v0" or not sep:
            raise InvalidSignature("signature is not v0=<hex>")
        received = decode_hex(encoded)
        self.check_timestamp(stamp, now)
        self.require_match(lambda secret: _digest(secret, stamp, body), [received])

    def sign(self, body: bytes, now: float, event_id: str | None = None) -> dict[str, str]:
        stamp = str(int(now))
        digest = _digest(self.config.secrets[0], stamp, body)
        return {TIMESTAMP: stamp, SIGNATURE: "v0=" + digest.hex()}


def _digest(secret: str, stamp: str, body: bytes) -> bytes:
    # check_timestamp has proven the stamp ASCII digits before it is signed
    return hmac_digest(secret_bytes(secret), b"v0:" + stamp.encode("ascii") + b":" + body)
