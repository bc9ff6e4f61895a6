"""No signature at all: the request is admitted by its source address alone."""

from __future__ import annotations

from shared.signatures.base import Headers, Scheme


class IpAllowlistScheme(Scheme):
    """Providers that sign nothing; the ingress checks the peer against ``allowed_ips``."""

    name = "ip-allowlist"
    needs_secret = False
    needs_allowed_ips = True
    default_event_id = "sha256"

    def verify(self, headers: Headers, body: bytes, now: float) -> None:
        # nothing to check here: the address check happens in the ingress, before any scheme
        return None

    def sign(self, body: bytes, now: float, event_id: str | None = None) -> dict[str, str]:
        return {}
