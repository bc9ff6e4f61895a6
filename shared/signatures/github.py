"""GitHub: ``X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>``."""

from __future__ import annotations

from shared.signatures.hmac_generic import BodyHmacScheme


class GithubScheme(BodyHmacScheme):
    """GitHub webhooks, verified with the SHA-256 signature only."""

    name = "github"
    header = "X-Hub-Signature-256"
    prefix = "sha256="
    default_event_id = "header:X-GitHub-Delivery"
    default_event_type = "header:X-GitHub-Event"
    # GitHub also sends the legacy SHA-1 X-Hub-Signature: never checked, but never logged either
    sensitive_headers = frozenset({"X-Hub-Signature-256", "X-Hub-Signature"})
