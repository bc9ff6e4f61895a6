"""HelloAsso: ``x-ha-signature`` is the hex HMAC-SHA256 of the body under the signatureKey.

The provider guide compares case-insensitively, so either hex case is accepted. HelloAsso also
publishes its notification addresses; ``allowed_ips`` may be set on the source as an extra check
(the ingress applies it, not this scheme). HelloAsso sends no event id, hence the body hash.
"""

from __future__ import annotations

from shared.signatures.hmac_generic import BodyHmacScheme


class HelloassoScheme(BodyHmacScheme):
    """HelloAsso notifications signed with the URL's signatureKey."""

    name = "helloasso"
    header = "x-ha-signature"
    default_event_id = "sha256"
    default_event_type = "json:eventType"
    sensitive_headers = frozenset({"x-ha-signature"})
