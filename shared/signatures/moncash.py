"""MonCashConnect: ``X-MCC-Signature`` is the hex HMAC-SHA256 of ``"{X-MCC-Timestamp}." + body``.

The provider guide never bounds the timestamp; we do (both directions), otherwise a captured
request could be replayed forever.
"""

from __future__ import annotations

from shared.signatures.base import (
    Headers,
    Scheme,
    decode_hex,
    hmac_digest,
    secret_bytes,
    single_header,
)

SIGNATURE = "X-MCC-Signature"
TIMESTAMP = "X-MCC-Timestamp"


class MoncashScheme(Scheme):
    """MonCashConnect webhooks signed with the project's ``whsec_`` webhook secret."""

    name = "moncash"
    default_event_id = "json:id"
    default_event_type = "json:event"
    sensitive_headers = frozenset({SIGNATURE})

    def verify(self, headers: Headers, body: bytes, now: float) -> None:
        stamp = single_header(headers, TIMESTAMP)
        received = decode_hex(single_header(headers, SIGNATURE))
        self.check_timestamp(stamp, now)
        self.require_match(lambda secret: _digest(secret, stamp, body), [received])

    def sign(self, body: bytes, now: float, event_id: str | None = None) -> dict[str, str]:
        stamp = str(int(now))
        return {TIMESTAMP: stamp, SIGNATURE: _digest(self.config.secrets[0], stamp, body).hex()}


def _digest(secret: str, stamp: str, body: bytes) -> bytes:
    # the literal header text is signed; check_timestamp has proven it ASCII digits
    return hmac_digest(secret_bytes(secret), stamp.encode("ascii") + b"." + body)
