"""OpenTelemetry on a Django project: otel.instrument(procrastinate_django.app) traces
defers through the DjangoConnector (task.defer and django.tasks' enqueue) and the runs
of `app.run_worker`, which works on an app of its own (with_connector)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from procrastinate_core import otel
from procrastinate_django import app
from tests.django.django_tasks_app import tasks
from tests.django.testapp.tasks import record

pytestmark = pytest.mark.usefixtures("live_db")


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    """The project's app instrumented for the test; as it was afterwards."""
    saved_hook = app.job_manager.defer_hook
    saved_defaults = dict(app.worker_defaults)
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    otel.instrument(app, tracer_provider=provider)
    try:
        yield exporter
    finally:
        app.job_manager.defer_hook = saved_hook
        app.worker_defaults.clear()
        app.worker_defaults.update(saved_defaults)


def test_defers_and_runs_of_the_project_app_are_traced(exporter: InMemorySpanExporter) -> None:
    job_id = record.defer(value="traced")
    result = tasks.add.enqueue(2, 3)
    defers = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.PRODUCER]
    assert [s.attributes["messaging.message.id"] for s in defers] == [str(job_id), result.id]
    [job] = app.job_manager.list_jobs(id=job_id)
    assert job.trace_context["traceparent"].startswith("00-")

    app.run_worker(wait=False, concurrency=1)
    runs = {
        s.attributes["messaging.message.id"]: s
        for s in exporter.get_finished_spans()
        if s.kind is SpanKind.CONSUMER
    }
    assert set(runs) == {str(job_id), result.id}
    for span in defers:
        run = runs[span.attributes["messaging.message.id"]]
        assert run.parent.span_id == span.context.span_id
        assert run.attributes["procrastinate.job.outcome"] == "succeeded"
