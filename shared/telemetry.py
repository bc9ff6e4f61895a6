"""Traces: ``[telemetry] traces = true`` and the optional extra ``hookline[otel]``.

One trace per event, in OpenTelemetry's messaging shape:

- the ingress: a SERVER span per ``POST /webhooks/{source}`` (its parent the caller's W3C
  ``traceparent`` header when there is one), with a child for the signature check and a
  PRODUCER span for the claim and enqueue (one Redis script); the producer span's
  ``traceparent`` travels in the queued job (:attr:`shared.envelope.Envelope.trace`);
- the workers: a CONSUMER span per run of an event (each attempt, so retries are spans of the
  same trace), children of the producer span, covering the handlers (a ``handle`` child) and
  the commit (a ``commit`` child).

Where spans go is only the standard ``OTEL_*`` environment variables:
``OTEL_TRACES_EXPORTER`` (``otlp``, the default; ``console``; ``none``; or any exporter installed
under OpenTelemetry's ``opentelemetry_traces_exporter`` entry points), ``OTEL_EXPORTER_OTLP_*``
(endpoint, headers, protocol: ``http/protobuf``, the default, needs
``opentelemetry-exporter-otlp-proto-http``, part of the extra; ``grpc`` needs
``opentelemetry-exporter-otlp-proto-grpc``), ``OTEL_SERVICE_NAME`` (default ``hookline-ingress``,
``hookline-worker``), ``OTEL_TRACES_SAMPLER`` and ``OTEL_BSP_*``, read by the SDK itself.

Off (the default), nothing here imports OpenTelemetry and :func:`current` is ``None``: the
ingress and the workers test that once and take their untraced path.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from contextvars import ContextVar
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from shared import logs
from shared.errors import ConfigError

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span

    from shared.config import Settings
    from shared.envelope import Envelope

#: the messaging system attribute of the producer and consumer spans
MESSAGING_SYSTEM = "rq"
_EXPORTER_GROUP = "opentelemetry_traces_exporter"
_OTLP_BY_PROTOCOL = {"http/protobuf": "otlp_proto_http", "grpc": "otlp_proto_grpc"}

#: this process's tracing, once set up; ``None`` while traces are off
_tracing: Tracing | None = None
#: the consumer spans of the events a worker is applying now, by (source, event id)
_consumers: ContextVar[dict[tuple[str, str], Span] | None] = ContextVar(
    "hookline_consumer_spans", default=None
)


def current() -> Tracing | None:
    """This process's tracing, or ``None`` when traces are off."""
    return _tracing


def setup(settings: Settings, service: str) -> Tracing | None:
    """Set up traces for this process if ``[telemetry] traces`` is on (once per process: a
    second call returns the first's)."""
    global _tracing
    if not settings.telemetry.traces:
        return None
    if _tracing is None:
        install(Tracing(_provider_from_environment(service)))
    return _tracing


def install(tracing: Tracing | None) -> None:
    """Use ``tracing`` in this process (``None``: off). :func:`setup` calls it; tests use it
    to collect spans in memory."""
    global _tracing
    _tracing = tracing
    logs.trace_id_of_current_span = tracing.current_trace_id if tracing is not None else None


def exporter_names(environ: Mapping[str, str] | None = None) -> list[str]:
    """The exporters ``OTEL_TRACES_EXPORTER`` names (the OpenTelemetry default: ``otlp``),
    ``otlp`` resolved to its protocol's exporter."""
    env = os.environ if environ is None else environ
    names = [n.strip() for n in env.get("OTEL_TRACES_EXPORTER", "otlp").split(",") if n.strip()]
    out = []
    for name in names:
        if name == "none":
            continue
        if name == "otlp":
            protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get(
                "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"
            )
            if protocol not in _OTLP_BY_PROTOCOL:
                raise ConfigError(
                    f"OTEL_EXPORTER_OTLP_PROTOCOL {protocol[:40]!r} is not http/protobuf or grpc"
                )
            name = _OTLP_BY_PROTOCOL[protocol]
        out.append(name)
    return out


def check(settings: Settings, environ: Mapping[str, str] | None = None) -> None:
    """With traces on, the exporters ``OTEL_TRACES_EXPORTER`` names must be installed: a
    ``ConfigError`` naming the one missing, before any process starts (``serve --processes``
    sets up traces in each process it forks)."""
    if settings.telemetry.traces:
        for name in exporter_names(environ):
            _entry_point(name)


def _entry_point(name: str) -> Any:
    found = entry_points(group=_EXPORTER_GROUP, name=name)
    if not found:
        package = {
            "otlp_proto_http": "the otel extra: pip install 'hookline[otel]'",
            "otlp_proto_grpc": "opentelemetry-exporter-otlp-proto-grpc",
        }.get(name, f"a package providing the {name!r} trace exporter")
        raise ConfigError(f"OTEL_TRACES_EXPORTER: the {name!r} exporter needs {package}")
    return next(iter(found))


def _exporter(name: str) -> SpanExporter:
    exporter: SpanExporter = _entry_point(name).load()()
    return exporter


def _provider_from_environment(service: str) -> TracerProvider:
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: service}))
    provider = TracerProvider(resource=resource)  # the sampler from OTEL_TRACES_SAMPLER
    for name in exporter_names():
        provider.add_span_processor(BatchSpanProcessor(_exporter(name)))
    return provider


class Tracing:
    """hookline's spans, on one ``TracerProvider``."""

    def __init__(self, provider: TracerProvider) -> None:
        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.provider = provider
        self.tracer = provider.get_tracer("hookline")
        self._trace = trace
        self._kind = trace.SpanKind
        self._propagator = TraceContextTextMapPropagator()

    # -- the ingress -----------------------------------------------------------------------

    def server(
        self, headers: Mapping[str, str], name: str, attributes: dict[str, Any]
    ) -> contextlib.AbstractContextManager[Span]:
        """The SERVER span of a request, continuing the caller's ``traceparent`` if any."""
        parent = self._propagator.extract(headers)
        return self.tracer.start_as_current_span(
            name, context=parent, kind=self._kind.SERVER, attributes=attributes
        )

    def span(self, name: str, **attributes: Any) -> contextlib.AbstractContextManager[Span]:
        """An INTERNAL child of the current span."""
        return self.tracer.start_as_current_span(name, attributes=attributes)

    def producer(self, queue: str, **attributes: Any) -> contextlib.AbstractContextManager[Span]:
        """The PRODUCER span of an enqueue."""
        return self.tracer.start_as_current_span(
            f"send {queue}",
            kind=self._kind.PRODUCER,
            attributes={
                "messaging.system": MESSAGING_SYSTEM,
                "messaging.operation.type": "send",
                "messaging.destination.name": queue,
                **attributes,
            },
        )

    def traceparent(self) -> str | None:
        """The W3C ``traceparent`` of the current span, to carry in a job."""
        carrier: dict[str, str] = {}
        self._propagator.inject(carrier)
        return carrier.get("traceparent")

    def current_trace_id(self) -> str | None:
        context = self._trace.get_current_span().get_span_context()
        return f"{context.trace_id:032x}" if context.is_valid else None

    # -- the workers -----------------------------------------------------------------------

    @contextlib.contextmanager
    def consumers(
        self, queue: str, runs: Sequence[tuple[Envelope, str, int]]
    ) -> Iterator[list[Span]]:
        """A CONSUMER span per event being applied (``(envelope, job id, attempt)``), each a
        child of the span that queued it; ended together when the block ends. An exception is
        recorded as the span's error for one event; for a batch it only says the batch was
        rolled back (the culprit is unknown here: each event runs again in a span of its own,
        where its own error is recorded)."""
        spans = []
        for envelope, job_id, attempt in runs:
            parent = self._propagator.extract({"traceparent": envelope.trace or ""})
            spans.append(
                self.tracer.start_span(
                    f"process {queue}",
                    context=parent,
                    kind=self._kind.CONSUMER,
                    attributes={
                        "messaging.system": MESSAGING_SYSTEM,
                        "messaging.operation.type": "process",
                        "messaging.destination.name": queue,
                        "messaging.message.id": job_id,
                        "hookline.source": envelope.source,
                        "hookline.event_id": envelope.event_id,
                        "hookline.attempt": attempt,
                        "hookline.batch_size": len(runs),
                    },
                )
            )
        token = _consumers.set(
            {(e.source, e.event_id): s for (e, _, _), s in zip(runs, spans, strict=True)}
        )
        try:
            yield spans
        except BaseException as err:
            for span in spans:
                if len(spans) == 1:
                    _record_error(span, err)
                else:  # one event's failure: each is applied again on its own, in new spans
                    span.add_event(
                        "batch rolled back, applied one by one",
                        {"exception.type": type(err).__name__},
                    )
            raise
        finally:
            _consumers.reset(token)
            for span in spans:
                span.end()

    def child(self, key: tuple[str, str], name: str) -> contextlib.AbstractContextManager[Any]:
        """A child of the consumer span of event ``key`` (nothing outside one)."""
        parents = _consumers.get()
        if not parents or key not in parents:
            return contextlib.nullcontext()
        context = self._trace.set_span_in_context(parents[key])
        return self.tracer.start_as_current_span(name, context=context)

    @contextlib.contextmanager
    def children(self, name: str) -> Iterator[None]:
        """The same step (one commit for a batch) as a child of every current consumer span."""
        parents = _consumers.get() or {}
        spans = [
            self.tracer.start_span(name, context=self._trace.set_span_in_context(p))
            for p in parents.values()
        ]
        try:
            yield
        except BaseException as err:
            for span in spans:
                _record_error(span, err)
            raise
        finally:
            for span in spans:
                span.end()


def _record_error(span: Span, err: BaseException) -> None:
    from opentelemetry.trace import Status, StatusCode

    span.record_exception(err)
    span.set_status(Status(StatusCode.ERROR, f"{type(err).__name__}"))
