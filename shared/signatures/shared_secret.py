"""Shared secret: the provider sends the secret itself in a configured header.

This is ClaPay/Nowallet's "secret partagé" strategy and many small providers' only option. It
proves the sender knows the secret but not that the body is intact.
"""

from __future__ import annotations

import hashlib

from shared.signatures.base import (
    Headers,
    Scheme,
    SchemeConfig,
    header_bytes,
    option_str,
    secret_bytes,
    single_header,
)


class SharedSecretScheme(Scheme):
    """The header named by option ``header`` must equal one of the secrets."""

    name = "shared-secret"
    option_keys = frozenset({"header"})
    default_event_id = "sha256"

    def __init__(self, config: SchemeConfig) -> None:
        super().__init__(config)
        self.header = option_str(config, "header")

    def sensitive(self) -> frozenset[str]:
        return super().sensitive() | {self.header.lower()}

    def verify(self, headers: Headers, body: bytes, now: float) -> None:
        received = header_bytes(single_header(headers, self.header))
        # compare fixed-length digests so the timing does not even reveal the secret's length
        self.require_match(
            lambda s: hashlib.sha256(secret_bytes(s)).digest(), [hashlib.sha256(received).digest()]
        )

    def sign(self, body: bytes, now: float, event_id: str | None = None) -> dict[str, str]:
        return {self.header: self.config.secrets[0]}
