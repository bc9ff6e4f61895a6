"""The RQ job function every queued event runs: ``workers.tasks.process_event``.

Attempts are RQ's own: the ingress enqueues each job with ``Retry(max_attempts - 1, backoff)``
so a transient failure is scheduled again by RQ (and shows in its registries). This function
adds what RQ lacks: it tells permanent failures from transient ones, keeps every attempt's
error in the job's meta, and writes the dead letter itself on a permanent failure or on the
last attempt, so no event leaves the pipeline without a row in ``webhook_events`` or
``dead_letters``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from rq import get_current_job
from rq.exceptions import AbandonedJobError
from rq.job import Job

from shared.envelope import Envelope
from shared.errors import PayloadError, PermanentError
from workers import deadletters
from workers.deadletters import AttemptError
from workers.effects import apply_event, apply_events
from workers.parsing import event_type_of
from workers.runtime import Runtime, current

log = logging.getLogger("hookline.worker")

ERRORS_META = "hookline_errors"


def attempt_of(job: Job | None, max_attempts: int) -> int:
    """1 for the first run; RQ decrements ``retries_left`` at each retry."""
    if job is None or job.retries_left is None:
        return 1
    return max(1, max_attempts - int(job.retries_left))


def is_last_attempt(job: Job | None) -> bool:
    return job is None or not job.retries_left


def past_errors(job: Job | None) -> list[AttemptError]:
    raw = job.meta.get(ERRORS_META, []) if job is not None else []
    return [AttemptError(**e) for e in raw if isinstance(e, dict)]


def remember_error(job: Job | None, error: AttemptError) -> None:
    """Keep the attempt's error with the job so the dead letter can show every attempt."""
    if job is None:
        return
    job.meta.setdefault(ERRORS_META, []).append(error.__dict__)
    try:
        job.save_meta()
    except Exception:
        log.warning("could not save attempt error for job %s", job.id)


def describe(err: BaseException) -> str:
    """``ExceptionName: message``, one line, bounded (the traceback stays in RQ's job data)."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:1000]


def process_event(envelope_data: dict[str, Any]) -> str:
    """Apply one queued event; returns its outcome (RQ's entry point)."""
    return process(envelope_data, get_current_job())


def process_batch(jobs: Sequence[Job]) -> list[str] | None:
    """Apply the events of ``jobs`` in one transaction; ``None`` if any of them failed (then
    nothing was applied, and each must go through :func:`process` on its own)."""
    rt = current()
    started = time.perf_counter()
    try:
        items = [
            (Envelope.from_dict(job.args[0]), attempt_of(job, rt.settings.worker.max_attempts))
            for job in jobs
        ]
        outcomes = apply_events(rt, items)
    except Exception as err:  # each event then meets its own error on its own path
        log.debug("batch of %d fell back to one by one: %s", len(jobs), describe(err))
        return None
    share = (time.perf_counter() - started) / len(items)
    for (envelope, attempt), outcome in zip(items, outcomes, strict=True):
        rt.metrics.handler_seconds.labels(envelope.source).observe(share)
        _applied(rt, envelope, attempt, outcome)
    return list(outcomes)


def _applied(rt: Runtime, envelope: Envelope, attempt: int, outcome: str) -> None:
    """The one line and the counter every applied event gets."""
    rt.metrics.events.labels(envelope.source, outcome).inc()
    log.info("event %s/%s %s (attempt %d)", envelope.source, envelope.event_id, outcome, attempt)


def process(envelope_data: dict[str, Any], job: Job | None) -> str:
    """Apply one event for ``job``: permanent failures and last attempts are dead-lettered
    here; other failures are remembered and re-raised for RQ to retry."""
    rt = current()
    envelope = Envelope.from_dict(envelope_data)
    attempt = attempt_of(job, rt.settings.worker.max_attempts)
    metrics = rt.metrics
    started = time.perf_counter()
    try:
        outcome = apply_event(rt, envelope, attempt)
    except PermanentError as err:
        error = AttemptError(attempt, time.time(), describe(err), True)
        _dead_letter(rt, job, envelope, error)
        return "dead_lettered"
    except Exception as err:
        error = AttemptError(attempt, time.time(), describe(err), False)
        if is_last_attempt(job):
            _dead_letter(rt, job, envelope, error)
        else:
            remember_error(job, error)
            metrics.events.labels(envelope.source, "retried").inc()
            log.warning(
                "event %s/%s attempt %d failed, will retry: %s",
                envelope.source,
                envelope.event_id,
                attempt,
                error.error,
            )
        raise
    finally:
        metrics.handler_seconds.labels(envelope.source).observe(time.perf_counter() - started)
    _applied(rt, envelope, attempt, outcome)
    return outcome


def _dead_letter(rt: Runtime, job: Job | None, envelope: Envelope, error: AttemptError) -> None:
    """Write the event's dead letter with every attempt's error, the last one ``error`` (whose
    ``permanent`` says why it died)."""
    errors = [*past_errors(job), error]
    source = rt.settings.sources.get(envelope.source)
    try:
        event_type = event_type_of(envelope, source) if source is not None else None
    except PayloadError:  # a type no database takes: the dead letter goes without it
        event_type = None
    deadletters.record(
        rt.engine, envelope, event_type=event_type, errors=errors, permanent=error.permanent
    )
    rt.metrics.events.labels(envelope.source, "dead_lettered").inc()
    log.error(
        "event %s/%s dead-lettered after %d attempt(s): %s",
        envelope.source,
        envelope.event_id,
        len(errors),
        error.error,
    )


def on_job_failure(job: Job, _connection: Any, exc_type: type[BaseException], *_rest: Any) -> None:
    """RQ's failure callback. Failures inside the job were handled there already; this acts
    only when RQ gives up on a job because its worker died."""
    if isinstance(exc_type, type) and issubclass(exc_type, AbandonedJobError):
        dead_letter_abandoned(job)


def dead_letter_abandoned(job: Job) -> None:
    """A worker died holding ``job`` (``kill -9``, OOM) and RQ's StartedJobRegistry cleanup gave
    up on it: remember the error, and dead-letter the event if that was its last attempt (RQ
    alone would only move it to its FailedJobRegistry)."""
    rt = current()
    attempt = attempt_of(job, rt.settings.worker.max_attempts)
    error = AttemptError(attempt, time.time(), "the worker holding the job died (abandoned)", False)
    try:
        envelope = Envelope.from_dict(job.args[0])
    except Exception:
        return
    if is_last_attempt(job):
        _dead_letter(rt, job, envelope, error)
    else:
        remember_error(job, error)
        rt.metrics.events.labels(envelope.source, "retried").inc()
