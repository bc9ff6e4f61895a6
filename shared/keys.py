"""Redis keys and the TTLs behind them, with why each value is what it is.

RQ owns everything under ``rq:`` (jobs, queues, registries) so that ``rq info`` and RQ's own
tools keep working; hookline adds only the small claim keys below.
"""

from __future__ import annotations

import hashlib

PREFIX = "hookline:"

#: ``hookline:claim:{source}:{event id}`` -> job id. Lives ``dedup_ttl_seconds`` (3 days by
#: default, longer than the providers' retry horizons) so a redelivery inside that window is
#: answered 200 "duplicate". Long ids are hashed so the key stays small whatever the provider
#: sends; the body is never part of the key.
CLAIM = PREFIX + "claim:"
_MAX_RAW_ID = 128

#: the function every queued event runs; a string so the ingress never imports the workers
JOB_FUNC = "workers.tasks.process_event"
#: RQ calls it when it gives up on a job whose worker died (whoever runs the cleanup)
FAILURE_CALLBACK = "workers.tasks.on_job_failure"

#: finished jobs' results are kept one hour: enough for ``rq info`` and debugging; the
#: durable record is the ``webhook_events`` row.
RESULT_TTL_SECONDS = 3600
#: failed jobs stay in RQ's FailedJobRegistry a week: the dead letters hold the event for
#: good, the job is only there for RQ's own tools.
FAILURE_TTL_SECONDS = 7 * 24 * 3600


def claim_key(source: str, event_id: str) -> str:
    if len(event_id) > _MAX_RAW_ID:
        event_id = "sha256=" + hashlib.sha256(event_id.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{CLAIM}{source}:{event_id}"


def job_key(job_id: str) -> str:
    return f"rq:job:{job_id}"


def queue_key(queue: str) -> str:
    return f"rq:queue:{queue}"


QUEUES_SET = "rq:queues"
