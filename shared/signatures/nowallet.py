"""ClaPay / Nowallet: ``Nowallet-Signature: key=K,signature=S[,signature=S...]``.

``S`` is the hex HMAC-SHA256, under the webhook secret, of ``hex(HMAC-SHA256(unique_key, K))``
followed by the raw body. One ``signature`` entry per active secret while rotating.
"""

from __future__ import annotations

import uuid

from shared.errors import InvalidSignature
from shared.signatures.base import (
    Headers,
    Scheme,
    SchemeConfig,
    decode_hex,
    header_bytes,
    hmac_digest,
    option_str,
    secret_bytes,
    single_header,
)

HEADER = "Nowallet-Signature"
MAX_SIGNATURES = 16


class NowalletScheme(Scheme):
    """Nowallet's "secret de signature" strategy; option ``unique_key`` is the webhook's
    unique key (``nowallet_uk_...``), the secrets are its webhook secrets."""

    name = "nowallet"
    option_keys = frozenset({"unique_key"})
    default_event_id = "json:transaction_id+json:status"
    default_event_type = "json:status"
    sensitive_headers = frozenset({HEADER})

    def __init__(self, config: SchemeConfig) -> None:
        super().__init__(config)
        self._unique_key = secret_bytes(option_str(config, "unique_key"))

    def verify(self, headers: Headers, body: bytes, now: float) -> None:
        key, received = _parse(single_header(headers, HEADER))
        payload = self._payload(header_bytes(key), body)
        self.require_match(lambda s: hmac_digest(secret_bytes(s), payload), received)

    def sign(self, body: bytes, now: float, event_id: str | None = None) -> dict[str, str]:
        key = str(uuid.uuid4())  # K is a per-delivery nonce, unrelated to the event id
        payload = self._payload(key.encode("ascii"), body)
        digest = hmac_digest(secret_bytes(self.config.secrets[0]), payload)
        return {HEADER: f"key={key},signature={digest.hex()}"}

    def _payload(self, key: bytes, body: bytes) -> bytes:
        return hmac_digest(self._unique_key, key).hex().encode("ascii") + body


def _parse(value: str) -> tuple[str, list[bytes]]:
    """Exactly one non-empty ``key``, 1 to ``MAX_SIGNATURES`` hex ``signature`` entries."""
    items = value.split(",")
    if len(items) > MAX_SIGNATURES + 1:
        raise InvalidSignature("too many items in Nowallet-Signature")
    keys: list[str] = []
    signatures: list[bytes] = []
    for item in items:
        name, sep, val = item.strip().partition("=")
        if not sep:
            raise InvalidSignature("malformed Nowallet-Signature")
        if name == "key":
            keys.append(val)
        elif name == "signature":
            signatures.append(decode_hex(val))
    if len(keys) != 1 or not keys[0] or not signatures:
        raise InvalidSignature("Nowallet-Signature needs one key and a signature")
    return keys[0], signatures
