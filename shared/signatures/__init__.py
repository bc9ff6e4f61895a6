"""Signature schemes: one module per provider, registered by name in :data:`SCHEMES`.

The registry is a plain dict written out by hand: adding a scheme means importing it here, so
what the configuration may name is visible in one place and nothing registers itself on import.
"""

from __future__ import annotations

from shared.errors import ConfigError
from shared.signatures.base import Scheme, SchemeConfig
from shared.signatures.github import GithubScheme
from shared.signatures.helloasso import HelloassoScheme
from shared.signatures.hmac_generic import HmacScheme
from shared.signatures.ip_allowlist import IpAllowlistScheme
from shared.signatures.moncash import MoncashScheme
from shared.signatures.nowallet import NowalletScheme
from shared.signatures.shared_secret import SharedSecretScheme
from shared.signatures.shopify import ShopifyScheme
from shared.signatures.slack import SlackScheme
from shared.signatures.smino import SminoScheme
from shared.signatures.standard_webhooks import StandardWebhooksScheme
from shared.signatures.stripe import StripeScheme

__all__ = ["SCHEMES", "Scheme", "SchemeConfig", "build_scheme"]

SCHEMES: dict[str, type[Scheme]] = {
    "moncash": MoncashScheme,
    "helloasso": HelloassoScheme,
    "smino": SminoScheme,
    "nowallet": NowalletScheme,
    "shared-secret": SharedSecretScheme,
    "ip-allowlist": IpAllowlistScheme,
    "hmac": HmacScheme,
    "github": GithubScheme,
    "stripe": StripeScheme,
    "slack": SlackScheme,
    "shopify": ShopifyScheme,
    "standard-webhooks": StandardWebhooksScheme,
}


def build_scheme(name: str, config: SchemeConfig) -> Scheme:
    """The scheme ``name`` configured for ``config.source``, or a ``ConfigError``."""
    cls = SCHEMES.get(name)
    if cls is None:
        raise ConfigError(f"source {config.source!r}: unknown scheme {name!r}")
    return cls(config)
