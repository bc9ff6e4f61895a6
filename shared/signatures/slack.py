"""Slack: ``X-Slack-Signature: v0=<hex HMAC-SHA256 of "v0:{timestamp}:" + body>``.

When an Events API request URL is set, Slack first sends a signed
``{"type": "url_verification", "token": ..., "challenge": ...}`` with no ``event_id`` and
expects the challenge back; :meth:`SlackScheme.handshake` answers it.
"""

from __future__ import annotations

from shared.errors import InvalidSignature
from shared.signatures.base import (
    Headers,
    Scheme,
    decode_hex,
    hmac_digest,
    json_object,
    secret_bytes,
    single_header,
)

SIGNATURE = "X-Slack-Signature"
TIMESTAMP = "X-Slack-Request-Timestamp"
#: Slack's challenges are a few dozen characters; anything longer is not echoed
MAX_CHALLENGE = 1000


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

    def handshake(self, body: bytes) -> dict[str, str] | None:
        """``{"challenge": ...}`` for a ``url_verification`` whose challenge is a non-empty
        string of at most ``MAX_CHALLENGE`` characters; anything else is an ordinary event."""
        doc = json_object(body)
        if doc is None or doc.get("type") != "url_verification":
            return None
        challenge = doc.get("challenge")
        if not isinstance(challenge, str) or not 0 < len(challenge) <= MAX_CHALLENGE:
            return None
        return {"challenge": challenge}


def _digest(secret: str, stamp: str, body: bytes) -> bytes:
    # check_timestamp has proven the stamp ASCII digits before it is signed
    return hmac_digest(secret_bytes(secret), b"v0:" + stamp.encode("ascii") + b":" + body)
