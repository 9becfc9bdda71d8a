"""OpenTelemetry traces (otel.py): defer and run spans, tied by the trace context stored on the job.

Spans go to the SDK's in-memory exporter through a tracer provider of the
test's own (never the process-wide one); the jobs run on a real PostgreSQL.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from opentelemetry import baggage, trace
from opentelemetry import context as otel_context
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import procrastinate_core as pc
from procrastinate_core import exceptions, otel, sql
from procrastinate_core.testing import InMemoryConnector
from tests.integration.worker_support import FAST


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


def spans(exporter: InMemorySpanExporter, kind: SpanKind) -> list[Any]:
    return [s for s in exporter.get_finished_spans() if s.kind is kind]


def traceparent_of(span) -> str:
    ctx = span.get_span_context()
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"


async def run_all(app: pc.App) -> None:
    await app.run_worker_async(wait=False, **FAST)


async def test_defer_then_run_is_one_trace(async_app, provider, exporter):
    otel.instrument(async_app, tracer_provider=provider)

    @async_app.task(queue="mail")
    async def send(to):
        return to

    job_id = await send.defer_async(to="ann")
    [producer] = spans(exporter, SpanKind.PRODUCER)
    assert producer.name == f"defer {send.name}"
    assert producer.attributes["messaging.system"] == "procrastinate"
    assert producer.attributes["messaging.destination.name"] == "mail"
    assert producer.attributes["messaging.message.id"] == str(job_id)
    assert producer.attributes["procrastinate.task.name"] == send.name

    [job] = await async_app.job_manager.list_jobs_async(id=job_id)
    assert job.trace_context == {"traceparent": traceparent_of(producer)}

    await run_all(async_app)
    [consumer] = spans(exporter, SpanKind.CONSUMER)
    assert consumer.name == f"run {send.name}"
    assert consumer.parent.span_id == producer.get_span_context().span_id
    assert consumer.get_span_context().trace_id == producer.get_span_context().trace_id
    assert [link.context.span_id for link in consumer.links] == [
        producer.get_span_context().span_id
    ]
    assert dict(consumer.attributes) == {
        "messaging.system": "procrastinate",
        "messaging.operation.type": "process",
        "messaging.operation.name": "run",
        "messaging.destination.name": "mail",
        "messaging.message.id": str(job_id),
        "procrastinate.task.name": send.name,
        "procrastinate.job.attempt": 1,
        "procrastinate.job.outcome": "succeeded",
    }
    assert consumer.status.status_code is StatusCode.UNSET


async def test_each_attempt_is_a_span_with_its_outcome(async_app, provider, exporter):
    otel.instrument(async_app, tracer_provider=provider)
    calls = []

    @async_app.task(retry=pc.RetryStrategy(max_attempts=2))
    def flaky():
        calls.append(1)
        raise ValueError(f"boom {len(calls)}")

    job_id = await flaky.defer_async()
    await run_all(async_app)
    assert (await async_app.job_manager.list_jobs_async(id=job_id))[0].status == "failed"
    [producer] = spans(exporter, SpanKind.PRODUCER)
    runs = spans(exporter, SpanKind.CONSUMER)
    assert [s.attributes["procrastinate.job.attempt"] for s in runs] == [1, 2, 3]
    assert [s.attributes["procrastinate.job.outcome"] for s in runs] == ["retry", "retry", "failed"]
    assert {s.parent.span_id for s in runs} == {producer.get_span_context().span_id}
    for run in runs:
        assert run.attributes["error.type"] == "ValueError"
        assert run.status.status_code is StatusCode.ERROR
        assert [e.name for e in run.events] == ["exception"]


async def test_a_task_deferring_another_continues_the_trace(async_app, provider, exporter):
    otel.instrument(async_app, tracer_provider=provider)

    @async_app.task
    async def child():
        return None

    @async_app.task
    async def parent_task():
        await child.defer_async()

    await parent_task.defer_async()
    await run_all(async_app)
    by_name = {s.name: s for s in exporter.get_finished_spans()}
    run_parent = by_name[f"run {parent_task.name}"]
    defer_child = by_name[f"defer {child.name}"]
    run_child = by_name[f"run {child.name}"]
    assert defer_child.parent.span_id == run_parent.get_span_context().span_id
    assert run_child.parent.span_id == defer_child.get_span_context().span_id
    assert len({s.get_span_context().trace_id for s in by_name.values()}) == 1


async def test_batch_defer_is_one_span_and_every_job_carries_it(async_app, provider, exporter):
    otel.trace_defers(async_app, tracer_provider=provider)

    @async_app.task
    def each(n):
        return n

    ids = await each.batch_defer_async({"n": 1}, {"n": 2}, {"n": 3})
    [producer] = spans(exporter, SpanKind.PRODUCER)
    assert producer.attributes["messaging.batch.message_count"] == 3
    assert list(producer.attributes["procrastinate.job.ids"]) == ids
    jobs = await async_app.job_manager.list_jobs_async()
    assert {j.trace_context["traceparent"] for j in jobs} == {traceparent_of(producer)}


def test_sync_defers_are_traced_the_same_way(app, provider, exporter):
    otel.trace_defers(app, tracer_provider=provider)
    job_id = app.configure_task("t").defer()
    [one] = app.configure_task("t").batch_defer({"n": 1})
    first, second = spans(exporter, SpanKind.PRODUCER)
    assert first.attributes["messaging.message.id"] == str(job_id)
    assert second.attributes["messaging.message.id"] == str(one)
    [job] = app.job_manager.list_jobs(id=one)
    assert job.trace_context == {"traceparent": traceparent_of(second)}


@pytest.mark.parametrize(
    "options",
    [{"concurrency_limit": 2}, {"unique_key": "k"}],
    ids=["set-based insert", "per-item insert"],
)
async def test_flow_controlled_defers_store_the_trace_context(
    async_app, provider, exporter, options
):
    """Both insert paths of pcq_defer_flow (migration 0010) keep the trace context."""
    otel.trace_defers(async_app, tracer_provider=provider)
    job_id = await async_app.configure_task("some.task", **options).defer_async()
    [producer] = spans(exporter, SpanKind.PRODUCER)
    [job] = await async_app.job_manager.list_jobs_async(id=job_id)
    assert job.trace_context == {"traceparent": traceparent_of(producer)}


async def test_a_failed_defer_ends_its_span_in_error(async_app, provider, exporter):
    otel.trace_defers(async_app, tracer_provider=provider)
    deferrer = async_app.configure_task("t", queueing_lock="only-one")
    await deferrer.defer_async()
    with pytest.raises(exceptions.AlreadyEnqueued):
        await deferrer.defer_async()
    first, second = spans(exporter, SpanKind.PRODUCER)
    assert first.status.status_code is StatusCode.UNSET
    assert second.status.status_code is StatusCode.ERROR
    assert "messaging.message.id" not in second.attributes


async def test_without_tracing_nothing_is_stored_and_runs_still_work(async_app, provider, exporter):
    @async_app.task
    async def plain():
        return None

    assert async_app.job_manager.defer_hook is None
    job_id = await plain.defer_async()
    [job] = await async_app.job_manager.list_jobs_async(id=job_id)
    assert job.trace_context is None
    # The middleware alone: a run without a stored context is a root span, no link.
    await async_app.run_worker_async(
        wait=False,
        worker_middleware=[otel.OpenTelemetryMiddleware(tracer_provider=provider)],
        **FAST,
    )
    [consumer] = exporter.get_finished_spans()
    assert consumer.parent is None and not consumer.links
    # and untrace_defers turns the defer side off again
    otel.trace_defers(async_app, tracer_provider=provider)
    otel.untrace_defers(async_app)
    await plain.defer_async()
    assert len(exporter.get_finished_spans()) == 1


async def test_a_large_trace_context_keeps_only_its_traceparent(
    async_app, provider, exporter, caplog
):
    otel.trace_defers(async_app, tracer_provider=provider)
    token = otel_context.attach(baggage.set_baggage("blob", "x" * 2000))
    try:
        with caplog.at_level(logging.WARNING, logger="procrastinate_core.otel"):
            job_id = await async_app.configure_task("t").defer_async()
    finally:
        otel_context.detach(token)
    [producer] = spans(exporter, SpanKind.PRODUCER)
    [job] = await async_app.job_manager.list_jobs_async(id=job_id)
    assert job.trace_context == {"traceparent": traceparent_of(producer)}
    [record] = [r for r in caplog.records if r.action == "trace_context_too_large"]
    assert "over the 1024 bytes" in record.getMessage() and record.dropped == ["baggage"]
    # a small baggage is kept whole
    token = otel_context.attach(baggage.set_baggage("tenant", "acme"))
    try:
        job_id = await async_app.configure_task("t").defer_async()
    finally:
        otel_context.detach(token)
    [job] = await async_app.job_manager.list_jobs_async(id=job_id)
    assert job.trace_context["baggage"] == "tenant=acme"


def test_bounded_trace_context_refuses_what_cannot_fit():
    assert otel.bounded_trace_context({}) is None
    assert otel.bounded_trace_context({"tracestate": "x" * 2000}) is None
    assert otel.bounded_trace_context({"traceparent": "y" * 2000}) is None
    small = {"traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01"}
    assert otel.bounded_trace_context(small) == small


@pytest.mark.parametrize(
    "stored",
    [
        '{"traceparent": 5}',
        '"not an object"',
        '{"traceparent": "garbage"}',
        '{"traceparent": "' + "z" * 2000 + '"}',
    ],
)
async def test_a_bad_stored_context_is_ignored_and_the_job_runs(
    async_app, db_conn, provider, exporter, stored
):
    """A trace_context written by hand is never trusted: no link, the job still succeeds."""
    otel.instrument(async_app, tracer_provider=provider)

    @async_app.task
    async def fine():
        return None

    job_id = await fine.defer_async()
    db_conn.execute("UPDATE pcq_jobs SET trace_context = %s::jsonb WHERE id = %s", (stored, job_id))
    db_conn.commit()
    await run_all(async_app)
    [consumer] = spans(exporter, SpanKind.CONSUMER)
    assert not consumer.links and consumer.parent is None
    assert (await async_app.job_manager.list_jobs_async(id=job_id))[0].status == "succeeded"


async def test_parent_false_starts_a_trace_per_run_linked_to_the_defer(
    async_app, provider, exporter
):
    otel.instrument(async_app, tracer_provider=provider, parent=False)

    @async_app.task
    async def alone():
        return None

    await alone.defer_async()
    await run_all(async_app)
    [producer] = spans(exporter, SpanKind.PRODUCER)
    [consumer] = spans(exporter, SpanKind.CONSUMER)
    assert consumer.parent is None
    assert consumer.get_span_context().trace_id != producer.get_span_context().trace_id
    assert consumer.links[0].context.span_id == producer.get_span_context().span_id


async def test_an_aborted_run_is_not_an_error(async_app, provider, exporter):
    otel.instrument(async_app, tracer_provider=provider)

    @async_app.task
    async def stops():
        raise exceptions.JobAborted("asked to")

    await stops.defer_async()
    await run_all(async_app)
    [consumer] = spans(exporter, SpanKind.CONSUMER)
    assert consumer.attributes["procrastinate.job.outcome"] == "aborted"
    assert consumer.status.status_code is StatusCode.UNSET


async def test_in_memory_connector_keeps_the_trace_context_too(provider, exporter):
    app = pc.App(connector=InMemoryConnector())
    otel.instrument(app, tracer_provider=provider)

    @app.task
    def noop():
        return None

    job_id = noop.defer()
    [producer] = spans(exporter, SpanKind.PRODUCER)
    assert isinstance(app.connector, InMemoryConnector)
    assert app.connector.jobs[job_id]["trace_context"] == {"traceparent": traceparent_of(producer)}
    flow_id = app.configure_task("x", unique_key="u").defer()
    assert app.connector.jobs[flow_id]["trace_context"]["traceparent"].startswith("00-")
    async with app.open_async():
        await app.run_worker_async(wait=False, **FAST)
    [consumer] = [s for s in spans(exporter, SpanKind.CONSUMER) if s.name == f"run {noop.name}"]
    assert consumer.parent.span_id == producer.get_span_context().span_id


async def test_with_connector_keeps_tracing_defers(async_app, provider, exporter, connector):
    otel.trace_defers(async_app, tracer_provider=provider)
    other = async_app.with_connector(InMemoryConnector())
    await other.configure_task("t").defer_async()
    assert len(spans(exporter, SpanKind.PRODUCER)) == 1
    assert trace.get_current_span() is trace.INVALID_SPAN  # nothing left attached


async def test_migration_0010_runs_again_harmlessly(async_app, db_conn, provider, exporter):
    """Its body (all but the pcq_migrations row, which records it once) is re-runnable,
    and jobs deferred before and after keep their trace context."""
    [migration] = [m for m in sql.migrations() if m.version == 10]
    body = migration.sql.replace(
        "INSERT INTO pcq_migrations (version, name) VALUES (10, 'trace_context');", ""
    )
    assert body != migration.sql
    otel.trace_defers(async_app, tracer_provider=provider)
    before = await async_app.configure_task("t", unique_key="a").defer_async()
    db_conn.execute(body)
    db_conn.execute(body)
    after = await async_app.configure_task("t", unique_key="b").defer_async()
    jobs = await async_app.job_manager.list_jobs_async()
    assert [j.id for j in jobs] == [before, after]
    assert all(j.trace_context["traceparent"].startswith("00-") for j in jobs)
