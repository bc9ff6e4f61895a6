"""One place decides what a failed attempt means for its event (dramatiq's retries middleware is
the model): retried with the job's backoff while attempts remain and the error is not permanent,
else dead-lettered.

Every way an attempt can end badly comes here, whoever notices it:

- a handler raised, or the event cannot be parsed (the batch loop, or RQ's own worker running
  ``workers.tasks.process_event``);
- the worker holding the job died or froze (RQ's StartedJobRegistry cleanup calls the job's
  failure callback, ``workers.tasks.on_job_failure``);
- the worker died between taking the job and starting it (the janitor finds it stuck);
- an operator stopped it (RQ's stop-job command): never retried;
- the job's data is not an event hookline queued: never run, never retried.

:func:`attempt_failed` records the attempt (its error kept for the next one, or the dead letter
written) and tells RQ what was decided through the job itself: when the attempt ends the event,
``retries_left`` becomes 0, so RQ moves the job to its FailedJobRegistry instead of scheduling
another attempt. RQ keeps doing the mechanics (scheduling, registries); hookline decides.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from rq.job import Job
from rq.timeouts import JobTimeoutException

from shared import keys, logs
from shared.envelope import Envelope, InvalidEnvelope
from shared.errors import PayloadError, PermanentError
from workers import deadletters
from workers.deadletters import AttemptError
from workers.parsing import event_type_of
from workers.runtime import Runtime, current

log = logging.getLogger("hookline.worker")

#: the job meta key holding every failed attempt's error until the event ends
ERRORS_META = "hookline_errors"
#: when an event's end cannot be recorded (the database is away), it is tried once more this
#: much later
UNRECORDED_RETRY_SECONDS = 60
#: the source recorded for a job whose data is not an event (no configured source can be named
#: so: a source name starts with a letter or a digit)
INVALID_SOURCE = "_invalid"


class StopRequested(Exception):
    """An operator stopped the job (RQ's stop-job or stop-execution command)."""


@dataclass(frozen=True)
class Failure:
    """Why an attempt ended: one line, and whether retrying could ever help."""

    error: str
    permanent: bool

    @classmethod
    def of(cls, err: BaseException) -> Failure:
        if isinstance(err, StopRequested):
            return STOPPED
        if isinstance(err, JobTimeoutException):
            return cls(f"timed out: {describe(err)}", False)
        return cls(describe(err), isinstance(err, PermanentError))


ABANDONED = Failure("the worker holding the job died or froze (abandoned)", False)
STUCK = Failure("the worker taking the job died before starting it (abandoned)", False)
STOPPED = Failure("stopped by an operator (rq stop-job)", True)


def describe(err: BaseException) -> str:
    """``ExceptionName: message``, one line, bounded (the traceback stays in RQ's job data)."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:1000]


def attempt_of(job: Job | None, max_attempts: int) -> int:
    """1 for the first run; RQ decrements ``retries_left`` at each retry."""
    if job is None or job.retries_left is None:
        return 1
    return max(1, max_attempts - int(job.retries_left))


def past_errors(job: Job) -> list[AttemptError]:
    raw = job.meta.get(ERRORS_META)
    out = []
    for e in raw if isinstance(raw, list) else []:
        try:
            out.append(AttemptError(**e))
        except TypeError:  # not what hookline wrote: skip it rather than lose the event
            continue
    return out


def read_envelope(job: Job) -> Envelope:
    """The event a job carries; ``InvalidEnvelope`` when its data is not an event hookline
    queued (it is then never run)."""
    try:
        func_name, args, kwargs = job.func_name, job.args, job.kwargs
    except Exception as err:  # RQ wraps what the serializer raised
        cause = err.__cause__ or err
        raise InvalidEnvelope(f"job data cannot be read: {describe(cause)}") from err
    if func_name != keys.JOB_FUNC or len(args) != 1 or kwargs:
        raise InvalidEnvelope(f"job is not a hookline event (it calls {str(func_name)[:80]!r})")
    return Envelope.from_dict(args[0])


def attempt_failed(job: Job | None, failure: Failure) -> bool:
    """Record that ``job``'s attempt ended with ``failure``. Returns ``True`` when that ends
    the event (dead-lettered; RQ must not retry it), ``False`` when RQ retries it."""
    rt = current()
    attempt = attempt_of(job, rt.settings.worker.max_attempts)
    error = AttemptError(attempt, time.time(), failure.error, failure.permanent)
    ends = failure.permanent or job is None or not job.should_retry
    try:
        envelope = read_envelope(job) if job is not None else None
    except InvalidEnvelope as err:
        envelope = None
        error = AttemptError(attempt, time.time(), describe(err), True)
        ends = True
    if ends:
        try:
            if envelope is None or job is None:
                _dead_letter_invalid(rt, job, error)
            else:
                _dead_letter(rt, job, envelope, error)
        except Exception as err:
            if job is None:
                raise
            # the database is away as the event dies: it must not leave the pipeline with no
            # record, so RQ keeps it (after its longest backoff) and it is decided again then
            log.error(
                "job %s could not be dead-lettered (%s): kept for another attempt",
                job.id,
                describe(err),
            )
            _remember(job, error)
            job.retries_left = 1
            # one more attempt, not at once (and never in a loop while the database is away)
            job.retry_intervals = [UNRECORDED_RETRY_SECONDS]
            return False
        if job is not None:
            job.retries_left = 0
        return True
    assert job is not None and envelope is not None
    _remember(job, error)
    rt.metrics.events.labels(envelope.source, "retried").inc()
    log.warning(
        "event %s/%s attempt %d failed, will retry: %s",
        envelope.source,
        envelope.event_id,
        attempt,
        error.error,
        extra=logs.event_fields(envelope, job.id),
    )
    return False


def _remember(job: Job, error: AttemptError) -> None:
    """Keep the attempt's error with the job so the dead letter can show every attempt."""
    job.meta.setdefault(ERRORS_META, []).append(error.__dict__)
    try:
        job.save_meta()
    except Exception:
        log.warning("could not save attempt error for job %s", job.id)


def _dead_letter(rt: Runtime, job: Job, envelope: Envelope, error: AttemptError) -> None:
    """Write the event's dead letter with every attempt's error, the last one ``error`` (whose
    ``permanent`` says why it died)."""
    errors = [*past_errors(job), error]
    source = rt.settings.sources.get(envelope.source)
    try:
        event_type = event_type_of(envelope, source) if source is not None else None
    except PayloadError:  # a type no database takes: the dead letter goes without it
        event_type = None
    written = deadletters.record(
        rt.engine, envelope, event_type=event_type, errors=errors, permanent=error.permanent
    )
    if not written:
        log.warning(
            "event %s/%s was applied meanwhile: not dead-lettered (%s)",
            envelope.source,
            envelope.event_id,
            error.error,
        )
        return
    rt.metrics.events.labels(envelope.source, "dead_lettered").inc()
    log.error(
        "event %s/%s dead-lettered after %d attempt(s): %s",
        envelope.source,
        envelope.event_id,
        len(errors),
        error.error,
        extra=logs.event_fields(envelope, job.id),
    )


def _dead_letter_invalid(rt: Runtime, job: Job | None, error: AttemptError) -> None:
    """A job that is not an event: dead-lettered under :data:`INVALID_SOURCE` with its job id
    and its raw data as the body, for an operator to inspect and purge."""
    job_id = job.id if job is not None else "unknown"
    try:
        data = job.data if job is not None else b""
    except Exception:
        data = b""
    envelope = Envelope(
        source=INVALID_SOURCE,
        event_id=job_id,
        received_at=(job.enqueued_at.timestamp() if job is not None and job.enqueued_at else 0.0),
        headers=(),
        body=data,
    )
    deadletters.record(rt.engine, envelope, event_type=None, errors=[error], permanent=True)
    rt.metrics.events.labels(INVALID_SOURCE, "dead_lettered").inc()
    log.error("job %s is not a hookline event, dead-lettered unrun: %s", job_id, error.error)
