"""Building configurations and signed deliveries with the schemes' real code."""

from __future__ import annotations

import time
from typing import Any

from shared.config import Settings, settings_from_mapping
from shared.samples import Sample, sample

#: one source per scheme, named after it, with two secrets where rotation applies
SOURCES: dict[str, dict[str, Any]] = {
    "moncash": {"scheme": "moncash", "secrets": ["mc-secret-old", "mc-secret-new"]},
    "helloasso": {"scheme": "helloasso", "secrets": ["AyCM0yTeQd8In2OzdP3R2HGTrYiCA818"]},
    "smino": {"scheme": "smino", "secrets": ["smino-secret"]},
    "nowallet": {
        "scheme": "nowallet",
        "secrets": ["nowallet_sk_wibuTFF6v3BGCsFXK3ZbxojWhGq7htWFN8iKo+ZBsu4="],
        "unique_key": "nowallet_uk_w0quVMx4Vy54zk321rYyrvQeLEJA8Y5TyFxTDYJQ4VU=",
    },
    "shared-secret": {
        "scheme": "shared-secret",
        "secrets": ["plain-shared-token"],
        "header": "X-Webhook-Token",
    },
    "ip-allowlist": {"scheme": "ip-allowlist", "allowed_ips": ["127.0.0.0/8", "::1"]},
    "hmac": {
        "scheme": "hmac",
        "secrets": ["generic-hmac-secret"],
        "header": "X-Hub-Signature",
        "algorithm": "sha512",
        "encoding": "base64",
        "prefix": "sha512=",
    },
    "github": {"scheme": "github", "secrets": ["It's a Secret to Everybody"]},
    "stripe": {"scheme": "stripe", "secrets": ["whsec_stripe_test_secret"]},
    "slack": {"scheme": "slack", "secrets": ["8f742231b10e8888abcd99yyyzzz85a5"]},
    "shopify": {"scheme": "shopify", "secrets": ["shpss_shopify_secret"]},
    "standard-webhooks": {
        "scheme": "standard-webhooks",
        "secrets": ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"],
    },
}

SECRET_VALUES = [s for cfg in SOURCES.values() for s in cfg.get("secrets", [])] + [
    SOURCES["nowallet"]["unique_key"]
]


def make_settings(
    redis_url: str = "redis://127.0.0.1:6379/15",
    database_url: str = "sqlite://",
    sources: dict[str, dict[str, Any]] | None = None,
    **sections: dict[str, Any],
) -> Settings:
    raw: dict[str, Any] = {
        "redis_url": redis_url,
        "database_url": database_url,
        "sources": SOURCES if sources is None else sources,
    }
    raw.update(sections)
    return settings_from_mapping(raw, environ={})


def signed(
    settings: Settings,
    source: str,
    n: int | None = None,
    now: float | None = None,
    body: bytes | None = None,
    **overrides: Any,
) -> tuple[bytes, dict[str, str], Sample]:
    """An authentic delivery for ``source``: (body, headers, sample)."""
    now = time.time() if now is None else now
    scheme = settings.sources[source].scheme
    example = sample(scheme.name, now, n, **overrides)
    payload = example.body if body is None else body
    headers = dict(example.headers)
    headers.update(scheme.sign(payload, now, event_id=example.event_id))
    return payload, headers, example
