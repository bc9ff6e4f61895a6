"""Standard Webhooks (and Svix, its origin): ``webhook-id``, ``webhook-timestamp`` and
``webhook-signature: v1,<base64> [v1,<base64> ...]`` over ``"{id}.{timestamp}." + body``.

The secret is ``whsec_<base64 key>``; the HMAC key is the decoded bytes, not the text. The
base64 may lack its ``=`` padding: the reference libraries pad it before decoding, and so do we.
"""

from __future__ import annotations

import base64
import binascii
import uuid

from shared.errors import ConfigError, InvalidSignature
from shared.signatures.base import (
    Headers,
    Scheme,
    SchemeConfig,
    any_matches,
    decode_b64,
    header_bytes,
    hmac_digest,
    single_header,
)

#: several entries appear while rotating; far more than that is an attack, not a rollover
MAX_ENTRIES = 16
_NAMES = ("id", "timestamp", "signature")


class StandardWebhooksScheme(Scheme):
    """Standard Webhooks / Svix senders; ``svix-*`` headers are read when no ``webhook-*``."""

    name = "standard-webhooks"
    default_event_id = "header:webhook-id|header:svix-id"
    default_event_type = "json:type"
    sensitive_headers = frozenset({"webhook-signature", "svix-signature"})

    def __init__(self, config: SchemeConfig) -> None:
        super().__init__(config)
        self._keys = [_decode_secret(config.source, secret) for secret in config.secrets]

    def verify(self, headers: Headers, body: bytes, now: float) -> None:
        prefix = _header_prefix(headers)
        msg_id = single_header(headers, prefix + "id")
        stamp = single_header(headers, prefix + "timestamp")
        received = _parse(single_header(headers, prefix + "signature"))
        self.check_timestamp(stamp, now)
        message = _message(header_bytes(msg_id), stamp, body)
        if not any_matches([hmac_digest(key, message) for key in self._keys], received):
            raise InvalidSignature("no signature matches")

    def sign(self, body: bytes, now: float, event_id: str | None = None) -> dict[str, str]:
        msg_id = event_id or f"msg_{uuid.uuid4().hex}"
        stamp = str(int(now))
        digest = hmac_digest(self._keys[0], _message(msg_id.encode("utf-8"), stamp, body))
        signature = "v1," + base64.b64encode(digest).decode("ascii")
        return {"webhook-id": msg_id, "webhook-timestamp": stamp, "webhook-signature": signature}


def _decode_secret(source: str, secret: str) -> bytes:
    """``whsec_<base64>`` or bare base64, padded or not → key bytes; anything else is a
    configuration error."""
    encoded = secret.removeprefix("whsec_")
    encoded += "=" * (-len(encoded) % 4)  # the padding some dashboards and copies drop
    try:
        key = base64.b64decode(encoded.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        key = b""
    if not key:
        # never echo the secret itself into an error message
        raise ConfigError(f"source {source!r}: 'secrets' must be whsec_<base64> keys")
    return key


def _header_prefix(headers: Headers) -> str:
    """``webhook-`` if the sender uses any of those headers, else the older ``svix-``."""
    if any(headers.getall("webhook-" + name, []) for name in _NAMES):
        return "webhook-"
    return "svix-"


def _parse(value: str) -> list[bytes]:
    """The decoded ``v1`` signatures; other versions (``v1a``...) are skipped."""
    entries = value.split()
    if len(entries) > MAX_ENTRIES:
        raise InvalidSignature("too many signatures")
    received: list[bytes] = []
    for entry in entries:
        version, sep, encoded = entry.partition(",")
        if version == "v1" and sep:
            received.append(decode_b64(encoded))
    if not received:
        raise InvalidSignature("no v1 signature")
    return received


def _message(msg_id: bytes, stamp: str, body: bytes) -> bytes:
    # check_timestamp has proven the stamp ASCII digits before it is signed
    return msg_id + b"." + stamp.encode("ascii") + b"." + body
