"""The worker-side ceiling: a minimal hand-written drain loop over the same RQ queue.

It does what a worker must do and nothing more, in batches: pop up to ``--batch`` job ids from
the RQ queue list, load the jobs' ``data`` field in one pipelined round trip, decode them as the
workers do (hookline's ``JobSerializer``, RQ's JSON format, and ``Envelope.from_dict``), parse
each body, and in ONE PostgreSQL transaction per batch insert the ``webhook_events`` rows
(``ON CONFLICT DO NOTHING RETURNING``: exactly-once like the workers), the ``event_bodies``
rows (body and redacted headers, as the workers keep them while ``[archive] retention_days``
is not 0; none with ``--no-bodies``, as with ``retention_days = 0``) and the ``payments``
rows of the events that were new (the same rank-guarded upsert as ``workers.payments``);
then delete the job hashes. No RQ registries, heartbeats, results,
retries, logging or ORM: what is left is the unavoidable cost.

The keys are RQ's, named by RQ's classes through ``shared.keys``: ``RQ_KEY_PREFIX`` moves
them as it moves the workers'.

    python bench/drain_ceiling.py --redis-url redis://127.0.0.1:PORT/0 \
        --dsn "host=127.0.0.1 user=postgres dbname=hookline_bench" [--no-bodies]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import time
import zlib
from typing import Any

import psycopg
from psycopg.types.json import Json
from redis import Redis

from shared import keys
from shared.envelope import Envelope
from shared.rqcompat import JobSerializer

EVENTS_SQL = """
INSERT INTO webhook_events
    (source, event_id, event_type, status, attempts, received_at, processed_at, remote)
SELECT s, e, t, 'processed', 1, r, %(now)s, a
FROM unnest(%(source)s::text[], %(event_id)s::text[], %(type)s::text[],
            %(received)s::timestamptz[], %(remote)s::text[]) AS u(s, e, t, r, a)
ON CONFLICT (source, event_id) DO NOTHING
RETURNING id, event_id
"""

BODIES_SQL = """
INSERT INTO event_bodies (event_pk, headers, body)
SELECT k, h, b FROM unnest(%(pk)s::bigint[], %(headers)s::json[], %(body)s::bytea[]) AS u(k, h, b)
ON CONFLICT (event_pk) DO NOTHING
"""

PAYMENTS_SQL = """
INSERT INTO payments (source, reference, status, status_rank, amount, currency, event_id,
                      created_at, updated_at)
SELECT s, ref, 'completed', 2, a, c, e, %(now)s, %(now)s
FROM unnest(%(source)s::text[], %(ref)s::text[], %(amount)s::numeric[], %(currency)s::text[],
            %(event_id)s::text[]) AS u(s, ref, a, c, e)
ON CONFLICT (source, reference) DO UPDATE SET
    status = excluded.status, status_rank = excluded.status_rank, amount = excluded.amount,
    currency = excluded.currency, event_id = excluded.event_id, updated_at = excluded.updated_at
WHERE payments.status_rank < excluded.status_rank
"""


def _data(blob: bytes) -> bytes:
    """As RQ reads a job's data: compressed, or (small jobs) as it is."""
    try:
        return zlib.decompress(blob)
    except zlib.error:
        return blob


def drain(
    redis: Redis, conn: psycopg.Connection[Any], queue: str, batch: int, bodies: bool = True
) -> int:
    queue_key = keys.queue_key(queue)
    done = 0
    while True:
        ids: list[bytes] | None = redis.lpop(queue_key, batch)  # type: ignore[assignment]
        if not ids:
            return done
        job_keys = [keys.job_key(i.decode()) for i in ids]
        pipe = redis.pipeline(transaction=False)
        for key in job_keys:
            pipe.hget(key, "data")
        blobs = pipe.execute()
        ev: dict[str, list[Any]] = {
            "source": [],
            "event_id": [],
            "type": [],
            "received": [],
            "remote": [],
        }
        kept: dict[str, tuple[Any, bytes]] = {}
        pay: dict[str, list[Any]] = {
            "source": [],
            "ref": [],
            "amount": [],
            "currency": [],
            "event_id": [],
        }
        for blob in blobs:
            _func, _inst, args, _kw = JobSerializer.loads(_data(blob))
            env = Envelope.from_dict(args[0])
            doc = json.loads(env.body)
            ev["source"].append(env.source)
            ev["event_id"].append(env.event_id)
            ev["type"].append(doc.get("event"))
            ev["received"].append(dt.datetime.fromtimestamp(env.received_at, dt.UTC))
            ev["remote"].append(env.remote)
            kept[env.event_id] = (Json([list(h) for h in env.headers]), env.body)
            pay["source"].append(env.source)
            pay["ref"].append(str(doc["reference"]))
            pay["amount"].append(doc.get("amount"))
            pay["currency"].append(str(doc.get("currency", "HTG")).upper())
            pay["event_id"].append(env.event_id)
        now = dt.datetime.now(dt.UTC)
        with conn.transaction():
            rows = conn.execute(EVENTS_SQL, {**ev, "now": now}).fetchall()
            new = {r[1]: r[0] for r in rows}
            if new and bodies:
                conn.execute(
                    BODIES_SQL,
                    {
                        "pk": list(new.values()),
                        "headers": [kept[e][0] for e in new],
                        "body": [kept[e][1] for e in new],
                    },
                )
            keep = [i for i, e in enumerate(pay["event_id"]) if e in new]
            if keep:
                conn.execute(
                    PAYMENTS_SQL, {k: [v[i] for i in keep] for k, v in pay.items()} | {"now": now}
                )
        redis.delete(*job_keys)
        done += len(ids)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--queue", default="hookline")
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument(
        "--no-bodies",
        action="store_true",
        help="keep no event_bodies rows, as workers with [archive] retention_days = 0",
    )
    args = parser.parse_args()
    redis = Redis.from_url(args.redis_url)
    started = time.perf_counter()
    with psycopg.connect(args.dsn) as conn:
        n = drain(redis, conn, args.queue, args.batch, bodies=not args.no_bodies)
    elapsed = time.perf_counter() - started
    print(json.dumps({"events": n, "seconds": round(elapsed, 3)}))


if __name__ == "__main__":
    main()
