"""The RQ job function every queued event runs, ``workers.tasks.process_event``, and what the
batch loop calls for many events at once.

Attempts are RQ's own: the ingress enqueues each job with ``Retry(max_attempts - 1, backoff)``
so a transient failure is scheduled again by RQ (and shows in its registries). What a failed
attempt means is decided in one place, :mod:`workers.retries`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any

from rq import get_current_job
from rq.exceptions import AbandonedJobError
from rq.job import Job

from shared import logs, telemetry
from workers import retries
from workers.effects import Delivery, Outcome, apply_events
from workers.runtime import Runtime, current

log = logging.getLogger("hookline.worker")


def delivery_of(rt: Runtime, job: Job) -> Delivery:
    """The event ``job`` carries, which attempt this is and the earlier attempts' errors;
    ``InvalidEnvelope`` when the job is not an event."""
    return Delivery(
        envelope=retries.read_envelope(job),
        attempt=retries.attempt_of(job, rt.settings.worker.max_attempts),
        errors=tuple(e.to_json() for e in retries.past_errors(job)),
    )


def process_event(*_args: Any) -> str:
    """RQ's entry point, for a plain ``rq worker`` (hookline's workers call :func:`process`):
    apply the current job's event; on failure, record it, and re-raise for RQ."""
    job = get_current_job()
    if job is None:
        raise RuntimeError("process_event runs as an RQ job")
    try:
        return process(job)
    except Exception as err:
        retries.attempt_failed(job, retries.Failure.of(err))
        raise


def process(job: Job) -> Outcome:
    """Apply one job's event in its own transaction; raises what went wrong (the caller
    records it through :func:`workers.retries.attempt_failed`)."""
    rt = current()
    delivery = delivery_of(rt, job)
    envelope = delivery.envelope
    started = time.perf_counter()
    tracing = telemetry.current()
    with (
        logs.event_context(**logs.event_fields(envelope, job.id)),
        _NOT_TRACED if tracing is None else _consuming(tracing, [job], [delivery]),
    ):
        try:
            [outcome] = apply_events(rt, [delivery])
        finally:
            elapsed = time.perf_counter() - started
            rt.metrics.handler_seconds.labels(delivery.envelope.source).observe(elapsed)
        _applied(rt, delivery, outcome, job.id)
    return outcome


#: what stands for the consumer spans while traces are off
_NOT_TRACED = contextlib.nullcontext()


def _consuming(
    tracing: telemetry.Tracing, jobs: Sequence[Job], deliveries: Sequence[Delivery]
) -> contextlib.AbstractContextManager[Any]:
    """A CONSUMER span per event, in its trace (the context its job carries)."""
    runs = [(d.envelope, job.id, d.attempt) for job, d in zip(jobs, deliveries, strict=True)]
    return tracing.consumers(jobs[0].origin, runs)


def process_batch(jobs: Sequence[Job]) -> list[Outcome] | None:
    """Apply the events of ``jobs`` in one transaction; ``None`` if any of them failed (then
    nothing was applied, and each must go through :func:`process` on its own)."""
    rt = current()
    started = time.perf_counter()
    try:
        deliveries = [delivery_of(rt, job) for job in jobs]
        tracing = telemetry.current()
        with _NOT_TRACED if tracing is None else _consuming(tracing, jobs, deliveries):
            outcomes = apply_events(rt, deliveries)
    except Exception as err:  # each event then meets its own error on its own path
        log.debug("batch of %d fell back to one by one: %s", len(jobs), retries.describe(err))
        return None
    share = (time.perf_counter() - started) / len(deliveries)
    for job, delivery, outcome in zip(jobs, deliveries, outcomes, strict=True):
        rt.metrics.handler_seconds.labels(delivery.envelope.source).observe(share)
        _applied(rt, delivery, outcome, job.id)
    return outcomes


def _applied(rt: Runtime, delivery: Delivery, outcome: str, job_id: str) -> None:
    """The one line and the counter every applied event gets, and, when this run committed
    its row (not a duplicate of an earlier run's), its lag since the ingress received it (on
    two clocks: a worker's behind the ingress's counts as no lag)."""
    envelope = delivery.envelope
    rt.metrics.events.labels(envelope.source, outcome).inc()
    if outcome != "duplicate":
        lag = max(0.0, time.time() - envelope.received_at)
        rt.metrics.event_lag.labels(envelope.source).observe(lag)
    log.info(
        "event %s/%s %s (attempt %d)",
        envelope.source,
        envelope.event_id,
        outcome,
        delivery.attempt,
        extra=logs.event_fields(envelope, job_id),
    )


def on_job_failure(job: Job, _connection: Any, exc_type: type[BaseException], *_rest: Any) -> None:
    """RQ's failure callback. Failures inside a run were recorded there already; this acts
    only when RQ gives up on a job because its worker died: the attempt is recorded (a dead
    letter if it was the last), then RQ retries or fails it as decided."""
    if isinstance(exc_type, type) and issubclass(exc_type, AbandonedJobError):
        retries.attempt_failed(job, retries.ABANDONED)
