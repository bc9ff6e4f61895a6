"""``hookline send``: sign a body as the provider would and POST it to the ingress."""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import click

from shared.config import Settings
from shared.errors import ConfigError
from shared.samples import sample

DEFAULT_URL = "http://127.0.0.1:8080"


def webhook_url(base: str | None, source: str) -> str:
    base = (base or DEFAULT_URL).rstrip("/")
    return base if "/webhooks/" in base else f"{base}/webhooks/{source}"


def read_body(path: str | None) -> bytes | None:
    if path is None:
        return None
    if path == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(path).read_bytes()
    except OSError as err:
        raise click.UsageError(f"cannot read body file {path}: {err.strerror}") from err


def send(settings: Settings, source_name: str, body_path: str | None, url: str | None) -> int:
    source = settings.sources.get(source_name)
    if source is None:
        known = ", ".join(sorted(settings.sources)) or "none configured"
        raise ConfigError(f"unknown source {source_name!r} (sources: {known})")
    now = time.time()
    example = sample(source.scheme.name, now)
    body = read_body(body_path)
    body = example.body if body is None else body
    headers = {"Content-Type": "application/json", **example.headers}
    try:
        headers.update(source.scheme.sign(body, now, event_id=example.event_id))
    except ValueError as err:
        raise click.UsageError(f"cannot sign this body for {source.scheme.name}: {err}") from err
    target = webhook_url(url, source_name)
    request = urllib.request.Request(target, data=body, headers=headers, method="POST")  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310
            status, answer = resp.status, resp.read()
    except urllib.error.HTTPError as err:
        status, answer = err.code, err.read()
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        click.echo(f"hookline: cannot reach {target}: {reason}", err=True)
        return 1
    text = answer.decode("utf-8", "replace")
    click.echo(f"{status} {text}")
    if 200 <= status < 300:
        return 0
    # the answer is printed above; the cause, as for every non-zero exit, on stderr
    click.echo(f"hookline: {target} refused the event: {status} {_reason(text)}", err=True)
    return 1


def _reason(answer: str) -> str:
    """The ``error`` of a JSON answer (``invalid_signature``), else its first line, bounded."""
    try:
        doc = json.loads(answer)
    except ValueError:
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("error"), str):
        return str(doc["error"])[:200]
    lines = answer.strip().splitlines()
    return lines[0][:200] if lines else "(no body)"
