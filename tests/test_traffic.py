"""What the ingress remembers of its traffic for operators: the last rejections per source
(header names only, never a value or a body byte, memory bounded under a flood) and the last
hour's counts by source."""

from __future__ import annotations

import json
import time
from typing import Any

import redis
from aiohttp.test_utils import TestClient
from click.testing import CliRunner

from hookline.cli import main
from hookline.ops import Operations
from ingest.app import TRAFFIC, _flush, create_app
from shared import keys
from shared.traffic import REJECTIONS_KEPT, Rejection, Traffic
from tests.helpers import make_settings, signed


async def test_rejections_keep_names_never_values_and_counts_add_up(
    aiohttp_client: Any, redis_url: str, redis_client: redis.Redis, tmp_path: Any
) -> None:
    settings = make_settings(redis_url)
    app = create_app(settings)
    client: TestClient = await aiohttp_client(app)
    body, headers, _ = signed(settings, "moncash")
    forged = {**headers, "X-MCC-Signature": "a" * 64, "X-Private-Token": "sekrit-value-123"}
    # Given two accepted deliveries, one duplicate, one forged, one for an unknown source
    for h in (headers, headers):
        await client.post("/webhooks/moncash", data=body, headers=h)
    body2, headers2, _ = signed(settings, "moncash")
    await client.post("/webhooks/moncash", data=body2, headers=headers2)
    assert (await client.post("/webhooks/moncash", data=b"{}", headers=forged)).status == 401
    assert (await client.post("/webhooks/nobody", data=b"xyz", headers=forged)).status == 404
    await _flush(app)
    # Then operators see both rejections, newest first, with the header names only
    ops = Operations(settings, redis=redis_client)
    found = ops.rejections()
    assert [(r.source, r.status, r.reason) for r in found] == [
        ("_unknown", 404, "unknown_source"),
        ("moncash", 401, "invalid_signature"),
    ]
    assert found[1].size == 2 and found[0].size == 3
    assert "X-Private-Token" in found[1].header_names
    # And no header value (the signature, the private token) is anywhere in Redis's record
    for source in ("moncash", "_unknown"):
        for _id, fields in redis_client.xrange(keys.rejections_key(source)):
            stored = b" ".join(fields.values())
            assert b"sekrit-value-123" not in stored and b"a" * 64 not in stored
    # And the last hour adds up by source
    last = ops.last_hour()
    assert last["moncash"] == {
        "accepted": 2,
        "duplicates": 1,
        "rejected": {"invalid_signature": 1},
    }
    assert last["_unknown"]["rejected"] == {"unknown_source": 1}
    # And the command line shows the same, as JSON too
    config = tmp_path / "hookline.toml"
    config.write_text(
        f'redis_url = "{redis_url}"\n[sources.moncash]\nscheme = "moncash"\nsecrets = ["s"]\n'
    )
    result = CliRunner().invoke(main, ["rejections", "--config", str(config), "--json"])
    assert result.exit_code == 0, result.output
    assert [r["reason"] for r in json.loads(result.output)] == [
        "unknown_source",
        "invalid_signature",
    ]


async def test_a_flood_of_forged_requests_stays_within_the_cap(
    aiohttp_client: Any, redis_url: str, redis_client: redis.Redis
) -> None:
    settings = make_settings(redis_url)
    app = create_app(settings)
    client: TestClient = await aiohttp_client(app)
    # Given more forged requests than the cap, written in two flushes
    for i in range(REJECTIONS_KEPT + 300):
        await client.post("/webhooks/moncash", data=b"{}", headers={"X-MCC-Signature": "x"})
        if i == 600:
            await _flush(app)
    await _flush(app)
    # Then Redis holds exactly the cap, and nothing waits in memory
    assert redis_client.xlen(keys.rejections_key("moncash")) == REJECTIONS_KEPT
    assert app[TRAFFIC].waiting() == 0


def test_memory_is_bounded_while_redis_cannot_be_written() -> None:
    traffic = Traffic()
    for i in range(5 * REJECTIONS_KEPT):
        traffic.reject(Rejection(time.time(), "s", 401, "invalid_signature", "1.2.3.4", i, ()))
    assert traffic.waiting() == REJECTIONS_KEPT
    assert traffic.dropped == 4 * REJECTIONS_KEPT
