"""Stripe: ``Stripe-Signature: t=<unix>,v1=<hex>[,v1=<hex>...]`` over ``"{t}." + body``.

Several ``v1`` entries appear while a secret is being rolled; other schemes (``v0``, the test
mode signature) are ignored as Stripe's own libraries do, and so is a ``v1`` value that is not
hex (stripe-python verifies ``t=...,v1=<good>,v1=bad_signature`` by its good entry).
"""

from __future__ import annotations

import contextlib

from shared.errors import InvalidSignature
from shared.signatures.base import (
    Headers,
    Scheme,
    decode_hex,
    hmac_digest,
    secret_bytes,
    single_header,
)

HEADER = "Stripe-Signature"
#: more entries than any real rollover produces; bounds the work an attacker can ask for
MAX_ITEMS = 32


class StripeScheme(Scheme):
    """Stripe webhooks signed with the endpoint's ``whsec_`` secret (used as plain text)."""

    name = "stripe"
    default_event_id = "json:id"
    default_event_type = "json:type"
    sensitive_headers = frozenset({HEADER})

    def verify(self, headers: Headers, body: bytes, now: float) -> None:
        stamp, received = _parse(single_header(headers, HEADER))
        self.check_timestamp(stamp, now)
        self.require_match(lambda secret: _digest(secret, stamp, body), received)

    def sign(self, body: bytes, now: float, event_id: str | None = None) -> dict[str, str]:
        stamp = str(int(now))
        return {HEADER: f"t={stamp},v1={_digest(self.config.secrets[0], stamp, body).hex()}"}


def _parse(value: str) -> tuple[str, list[bytes]]:
    """Exactly one ``t``, at least one well-formed (hex) ``v1``; an item without ``=`` is
    malformed. A ``v1`` that is not hex is skipped: it could never match anyway."""
    items = value.split(",")
    if len(items) > MAX_ITEMS:
        raise InvalidSignature("too many items in Stripe-Signature")
    stamps: list[str] = []
    signatures: list[bytes] = []
    for item in items:
        key, sep, val = item.strip().partition("=")
        if not sep:
            raise InvalidSignature("malformed Stripe-Signature")
        if key == "t":
            stamps.append(val)
        elif key == "v1":
            with contextlib.suppress(InvalidSignature):
                signatures.append(decode_hex(val))
    if len(stamps) != 1 or not signatures:
        raise InvalidSignature("Stripe-Signature needs one t and at least one hex v1")
    return stamps[0], signatures


def _digest(secret: str, stamp: str, body: bytes) -> bytes:
    # check_timestamp has proven the stamp ASCII digits before it is signed
    return hmac_digest(secret_bytes(secret), stamp.encode("ascii") + b"." + body)
