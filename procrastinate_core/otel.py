"""OpenTelemetry traces: a span for each defer and for each run, tied by a trace context
kept on the job.

Optional (the `otel` extra: opentelemetry-api) and off until asked for, so an
app that does not trace pays one attribute read per defer and nothing per run:

- `trace_defers(app)`: every defer through `app` runs inside a PRODUCER span
  ("defer <task>"), and the span's W3C trace context (traceparent, tracestate,
  whatever the propagator writes) is stored with the job (pcq_jobs.trace_context,
  migration 0010), at most MAX_TRACE_CONTEXT_BYTES of it;
- `OpenTelemetryMiddleware()`, a worker middleware: each run of a job is a
  CONSUMER span ("run <task>"), linked to the defer's span and, by default, its
  child, so a trace shows the defer and every attempt after it;
- `instrument(app)`: both (the middleware goes in the app's worker_defaults).

Attributes follow OpenTelemetry's messaging conventions where they fit
(messaging.system, messaging.operation.*, messaging.destination.name,
messaging.message.id, messaging.batch.message_count); the rest are
`procrastinate.*` (task name, attempt, outcome, worker). Spans go to whatever
tracer provider the application configured (the global one by default), so
without an OpenTelemetry SDK they are no-ops and no trace context is stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from procrastinate_core import exceptions
from procrastinate_core.job_context import AbortReason, JobContext
from procrastinate_core.jobs import Job

if TYPE_CHECKING:
    from procrastinate_core.app import App

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

#: messaging.system of every span
MESSAGING_SYSTEM = "procrastinate"
#: The most trace context (as JSON text) stored with a job; a larger one keeps only its
#: traceparent, or nothing. W3C's own bounds (traceparent 55 bytes, tracestate 512
#: characters) fit; large baggage is what this stops from riding along in every row.
MAX_TRACE_CONTEXT_BYTES = 1024


def _api() -> Any:
    """The opentelemetry API modules, or a ConfigurationError saying how to install them."""
    try:
        from opentelemetry import propagate, trace
    except ImportError:
        raise exceptions.ConfigurationError(
            "OpenTelemetry tracing needs the opentelemetry-api package: "
            "pip install 'procrastinate-core[otel]' (and an OpenTelemetry SDK to export spans)"
        ) from None
    return trace, propagate


def bounded_trace_context(carrier: Mapping[str, str]) -> dict[str, str] | None:
    """What a job stores of a propagator's carrier: all of it if it fits in
    MAX_TRACE_CONTEXT_BYTES, else its traceparent alone (logged), else nothing."""
    if not carrier:
        return None
    text = json.dumps(dict(carrier))
    if len(text.encode()) <= MAX_TRACE_CONTEXT_BYTES:
        return dict(carrier)
    traceparent = carrier.get("traceparent")
    kept = {"traceparent": traceparent} if isinstance(traceparent, str) else None
    if kept is not None and len(json.dumps(kept).encode()) > MAX_TRACE_CONTEXT_BYTES:
        kept = None
    logger.warning(
        "Trace context of %d bytes is over the %d bytes stored with a job: %s",
        len(text.encode()),
        MAX_TRACE_CONTEXT_BYTES,
        "only its traceparent is kept" if kept else "none of it is kept",
        extra={
            "action": "trace_context_too_large",
            "dropped": sorted(set(carrier) - set(kept or {})),
        },
    )
    return kept


def _stored_carrier(value: Any) -> dict[str, str] | None:
    """A job's stored trace context if it is a small string-to-string mapping, else None
    (a column written by hand is never trusted to be well formed)."""
    if not isinstance(value, dict) or not value:
        return None
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        return None
    if len(json.dumps(value).encode()) > MAX_TRACE_CONTEXT_BYTES:
        return None
    return value


class _DeferSpan:
    """One traced defer (deferrer.DeferTrace): the template to insert, and its span."""

    def __init__(self, job: Job, span: Any) -> None:
        self.job = job
        self.span = span

    def deferred(self, ids: _T) -> _T:
        if isinstance(ids, int):
            self.span.set_attribute("messaging.message.id", str(ids))
        elif isinstance(ids, list):
            if len(ids) == 1:
                self.span.set_attribute("messaging.message.id", str(ids[0]))
            self.span.set_attribute("procrastinate.job.ids", [int(i) for i in ids])
        return ids


class DeferTracer:
    """The defer hook (JobManager.defer_hook) that trace_defers installs."""

    def __init__(self, tracer_provider: Any = None, propagator: Any = None) -> None:
        trace, propagate = _api()
        self._trace = trace
        self.tracer = trace.get_tracer(__name__, tracer_provider=tracer_provider)
        #: None: the global propagator, read at each defer (W3C trace context by default)
        self.propagator = propagator
        self._propagate = propagate

    @contextlib.contextmanager
    def __call__(self, job: Job, count: int) -> Iterator[_DeferSpan]:
        attributes: dict[str, Any] = {
            "messaging.system": MESSAGING_SYSTEM,
            "messaging.operation.type": "send",
            "messaging.operation.name": "defer",
            "messaging.destination.name": job.queue,
            "procrastinate.task.name": job.task_name,
        }
        if count != 1:
            attributes["messaging.batch.message_count"] = count
        with self.tracer.start_as_current_span(
            f"defer {job.task_name}", kind=self._trace.SpanKind.PRODUCER, attributes=attributes
        ) as span:
            carrier: dict[str, str] = {}
            propagator = self.propagator or self._propagate.get_global_textmap()
            propagator.inject(carrier)
            yield _DeferSpan(job.evolve(trace_context=bounded_trace_context(carrier)), span)


def trace_defers(app: App, *, tracer_provider: Any = None, propagator: Any = None) -> None:
    """Trace every defer through `app` (and the apps with_connector makes from it later)."""
    app.job_manager.defer_hook = DeferTracer(tracer_provider, propagator)


def untrace_defers(app: App) -> None:
    """Stop tracing defers through `app`: jobs are stored without a trace context again."""
    app.job_manager.defer_hook = None


def _outcome(exc: BaseException, context: JobContext) -> str:
    """How the worker will end a run that raised `exc` (job_runner.py decides, and logs
    the same words): retry, failed, aborted, or interrupted (the worker is stopping)."""
    reason = context.abort_reason()
    if reason is AbortReason.SHUTDOWN or (
        reason is None and isinstance(exc, asyncio.CancelledError)
    ):
        return "interrupted"
    if reason is not AbortReason.TIMEOUT and isinstance(
        exc, asyncio.CancelledError | exceptions.JobAborted
    ):
        return "aborted"
    if reason is AbortReason.USER_REQUEST:
        return "failed"  # asked to abort, then raised: never retried
    task = context.task
    try:
        decision = task.get_retry_decision(exc, context.job) if task is not None else None
    except Exception:  # the runner logs a broken strategy; the job is not retried
        decision = None
    return "retry" if decision is not None else "failed"


def _error_type(exc: BaseException) -> str:
    cls = type(exc)
    return (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )


class OpenTelemetryMiddleware:
    """Worker middleware: one CONSUMER span per run, tied to the job's defer.

    `parent=True` (default) makes the run a child of the deferring span, so a
    trace holds the defer and its runs; `parent=False` starts a trace per run,
    only linked to the defer (for long-lived jobs whose traces should stay apart).
    """

    def __init__(
        self, *, tracer_provider: Any = None, propagator: Any = None, parent: bool = True
    ) -> None:
        trace, propagate = _api()
        from opentelemetry import context as context_module

        self._trace = trace
        self._propagate = propagate
        self._context_module = context_module
        self.tracer = trace.get_tracer(__name__, tracer_provider=tracer_provider)
        self.propagator = propagator
        self.parent = parent

    def _defer_context(self, job: Job) -> Any:
        """The context extracted from the job's stored trace context, or None."""
        carrier = _stored_carrier(job.trace_context)
        if carrier is None:
            return None
        propagator = self.propagator or self._propagate.get_global_textmap()
        extracted = propagator.extract(carrier)
        span_context = self._trace.get_current_span(extracted).get_span_context()
        return extracted if span_context.is_valid else None

    async def __call__(self, call_next: Any, context: JobContext, worker: Any) -> Any:
        job = context.job
        trace = self._trace
        defer_context = self._defer_context(job)
        links = []
        if defer_context is not None:
            links.append(trace.Link(trace.get_current_span(defer_context).get_span_context()))
        attributes: dict[str, Any] = {
            "messaging.system": MESSAGING_SYSTEM,
            "messaging.operation.type": "process",
            "messaging.operation.name": "run",
            "messaging.destination.name": job.queue,
            "messaging.message.id": str(job.id),
            "procrastinate.task.name": job.task_name,
            "procrastinate.job.attempt": job.claims,
        }
        if context.worker_name:
            attributes["procrastinate.worker.name"] = context.worker_name
        with self.tracer.start_as_current_span(
            f"run {job.task_name}",
            # parent=False: a trace of its own, whatever the worker's ambient context
            context=defer_context if self.parent else self._context_module.Context(),
            kind=trace.SpanKind.CONSUMER,
            links=links,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                result = await call_next()
            except BaseException as exc:
                outcome = _outcome(exc, context)
                span.set_attribute("procrastinate.job.outcome", outcome)
                if outcome in ("retry", "failed"):
                    span.set_attribute("error.type", _error_type(exc))
                    span.record_exception(exc)
                    span.set_status(trace.Status(trace.StatusCode.ERROR, str(exc)))
                raise
            span.set_attribute("procrastinate.job.outcome", "succeeded")
            return result


def instrument(
    app: App, *, tracer_provider: Any = None, propagator: Any = None, parent: bool = True
) -> OpenTelemetryMiddleware:
    """trace_defers(app), and OpenTelemetryMiddleware first in its workers' defaults.

    A `worker_middleware=` given to run_worker replaces the defaults: put the
    returned middleware in it too.
    """
    trace_defers(app, tracer_provider=tracer_provider, propagator=propagator)
    current = list(app.worker_defaults.get("worker_middleware") or [])
    for item in current:
        if isinstance(item, OpenTelemetryMiddleware):
            return item
    middleware = OpenTelemetryMiddleware(
        tracer_provider=tracer_provider, propagator=propagator, parent=parent
    )
    app.worker_defaults["worker_middleware"] = [middleware, *current]
    return middleware


__all__ = [
    "MAX_TRACE_CONTEXT_BYTES",
    "DeferTracer",
    "OpenTelemetryMiddleware",
    "bounded_trace_context",
    "instrument",
    "trace_defers",
    "untrace_defers",
]
