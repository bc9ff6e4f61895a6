"""Shopify: ``X-Shopify-Hmac-Sha256: <base64 HMAC-SHA256 of the body>``."""

from __future__ import annotations

from shared.signatures.hmac_generic import BodyHmacScheme


class ShopifyScheme(BodyHmacScheme):
    """Shopify webhooks; the event id and topic travel in headers."""

    name = "shopify"
    header = "X-Shopify-Hmac-Sha256"
    encoding = "base64"
    default_event_id = "header:X-Shopify-Webhook-Id"
    default_event_type = "header:X-Shopify-Topic"
    sensitive_headers = frozenset({"X-Shopify-Hmac-Sha256"})
