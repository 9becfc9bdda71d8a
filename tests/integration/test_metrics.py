"""Prometheus metrics against real PostgreSQL and a real worker: job metrics, queue gauges,
the exporter."""

from __future__ import annotations

import asyncio
import datetime
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

import procrastinate_core as pc
from procrastinate_core import metrics
from tests.support.waiting import wait_until, wait_until_async

ROOT = Path(__file__).resolve().parents[2]
FAST = {"install_signal_handlers": False, "fetch_job_polling_interval": 0.2}


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


async def test_job_metrics_count_outcomes_durations_and_retries(async_app):
    registry = CollectorRegistry()
    job_metrics = metrics.JobMetrics(registry)

    @async_app.task(queue="mq")
    async def fine() -> None:
        return None

    @async_app.task(queue="mq", retry=pc.RetryStrategy(max_attempts=2))
    async def flaky() -> None:
        raise ValueError("always")

    @async_app.task(queue="mq", pass_context=True)
    def cooperative(context: pc.JobContext) -> None:
        raise pc.exceptions.JobAborted("stopped")

    await fine.defer_async()
    await fine.defer_async()
    await flaky.defer_async()
    await cooperative.defer_async()
    await async_app.run_worker_async(wait=False, worker_middleware=[job_metrics], **FAST)

    fine_name, flaky_name = fine.name, flaky.name
    assert (
        _value(
            registry,
            "procrastinate_job_outcomes_total",
            task=fine_name,
            queue="mq",
            outcome="succeeded",
        )
        == 2
    )
    # max_attempts=2: the first run and two retries, all failed.
    assert (
        _value(
            registry,
            "procrastinate_job_outcomes_total",
            task=flaky_name,
            queue="mq",
            outcome="failed",
        )
        == 3
    )
    assert _value(registry, "procrastinate_job_retries_total", task=flaky_name, queue="mq") == 2
    assert _value(registry, "procrastinate_job_retries_total", task=fine_name, queue="mq") is None
    assert (
        _value(
            registry,
            "procrastinate_job_outcomes_total",
            task=cooperative.name,
            queue="mq",
            outcome="aborted",
        )
        == 1
    )
    count = _value(
        registry,
        "procrastinate_job_duration_seconds_count",
        task=fine_name,
        queue="mq",
        outcome="succeeded",
    )
    assert count == 2
    assert _value(registry, "procrastinate_jobs_running", queue="mq") == 0


async def test_an_aborted_async_job_is_counted_as_aborted(async_app):
    registry = CollectorRegistry()
    job_metrics = metrics.JobMetrics(registry)
    started = asyncio.Event()

    @async_app.task
    async def forever() -> None:
        started.set()
        await asyncio.Event().wait()

    job_id = await forever.defer_async()
    run = asyncio.create_task(
        async_app.run_worker_async(wait=False, worker_middleware=[job_metrics], **FAST)
    )
    await asyncio.wait_for(started.wait(), 10)
    assert _value(registry, "procrastinate_jobs_running", queue="default") == 1
    assert await async_app.job_manager.cancel_job_by_id_async(job_id, abort=True)
    await asyncio.wait_for(run, 20)
    assert (
        _value(
            registry,
            "procrastinate_job_outcomes_total",
            task=forever.name,
            queue="default",
            outcome="aborted",
        )
        == 1
    )


async def test_queue_gauges_read_waiting_and_running_jobs_and_workers(async_app, db_conn):
    @async_app.task(queue="gauges")
    def work() -> None: ...

    ready = [await work.defer_async() for _ in range(3)]
    await work.configure(schedule_in={"hours": 1}).defer_async()  # waits, not ready
    running = await work.configure(queue="other").defer_async()
    db_conn.execute(
        "UPDATE pcq_jobs SET created_at = now() - interval '90 seconds' WHERE id = %s", [ready[0]]
    )
    db_conn.execute(
        "UPDATE pcq_jobs SET status = 'doing', attempts = 1, started_at = now() - interval "
        "'7 seconds' "
        "WHERE id = %s",
        [running],
    )
    # Finished jobs are not read, and not counted.
    done = await work.defer_async()
    db_conn.execute(
        "UPDATE pcq_jobs SET status = 'succeeded', finished_at = now() WHERE id = %s", [done]
    )
    await async_app.job_manager.register_worker_async("w-metrics", "host", 1)

    snapshot = await metrics.read_snapshot_async(async_app.job_manager)
    registry = CollectorRegistry()
    registry.register(metrics.QueueCollector(lambda: snapshot))
    assert _value(registry, "procrastinate_queue_jobs", queue="gauges", status="todo") == 4
    assert _value(registry, "procrastinate_queue_jobs", queue="gauges", status="doing") == 0
    assert _value(registry, "procrastinate_queue_jobs", queue="other", status="doing") == 1
    latency = _value(registry, "procrastinate_queue_latency_seconds", queue="gauges")
    assert (
        latency is not None and 89 <= latency < 200
    )  # the oldest ready job, not the scheduled one
    oldest = _value(registry, "procrastinate_queue_oldest_running_seconds", queue="other")
    assert oldest is not None and 6 <= oldest < 120
    assert _value(registry, "procrastinate_queue_latency_seconds", queue="other") == 0
    assert _value(registry, "procrastinate_workers") == 1
    [sample] = [
        s
        for m in registry.collect()
        for s in m.samples
        if s.name == "procrastinate_worker_heartbeat_age_seconds"
    ]
    assert sample.labels["name"] == "w-metrics" and 0 <= sample.value < 60


def test_queue_stats_on_the_in_memory_connector_match():
    from procrastinate_core.testing import InMemoryConnector

    app = pc.App(connector=InMemoryConnector())

    @app.task(queue="mem")
    def work() -> None: ...

    with app.open():
        work.defer()
        work.configure(
            schedule_at=datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)
        ).defer()
        [stats] = app.job_manager.get_queue_stats()
    assert (stats.queue_name, stats.todo, stats.doing) == ("mem", 2, 0)
    assert stats.oldest_ready_age is not None and stats.oldest_ready_age >= 0
    assert stats.oldest_running_age is None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


async def test_the_worker_exporter_serves_job_metrics_and_queue_gauges(async_app):
    @async_app.task(queue="exported")
    async def fine() -> None: ...

    await fine.defer_async()
    async with metrics.WorkerExporter(
        async_app.job_manager, 0, host="127.0.0.1", refresh=0.1
    ) as exporter:
        await async_app.run_worker_async(
            wait=False, worker_middleware=[exporter.job_metrics], **FAST
        )
        await fine.configure(schedule_in={"hours": 1}).defer_async()

        async def scraped_gauge() -> str | None:
            text = await asyncio.to_thread(_scrape, exporter.port)
            return (
                text
                if 'procrastinate_queue_jobs{queue="exported",status="todo"} 1.0' in text
                else None
            )

        text = await wait_until_async(scraped_gauge, what="the refreshed queue gauge")
    assert (
        'procrastinate_job_outcomes_total{outcome="succeeded",queue="exported",'
        f'task="{fine.name}"}} 1.0' in text
    )
    with pytest.raises(OSError):
        _scrape(exporter.port)  # the server stopped with the exporter


def test_worker_metrics_port_serves_metrics_from_a_worker_process(db_dsn, db_conn, tmp_path):
    """Through the real CLI: `worker --metrics-port` in its own process, scraped over HTTP."""
    port = _free_port()
    env = {**os.environ, "PCQ_TEST_DSN": db_dsn, "PYTHONPATH": str(ROOT)}
    log = (tmp_path / "worker.log").open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "procrastinate_core",
            "--app=tests.acceptance.worker_app.app",
            "worker",
            "--metrics-port",
            str(port),
            "--metrics-host",
            "127.0.0.1",
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:

        def serving() -> str | None:
            if process.poll() is not None:
                raise AssertionError((tmp_path / "worker.log").read_text())
            try:
                text = _scrape(port)
            except OSError:
                return None
            return text if "\nprocrastinate_workers " in text else None  # first snapshot taken

        text = wait_until(serving, timeout=30, what="the worker's metrics server")
        assert "# TYPE procrastinate_job_duration_seconds histogram" in text
        assert "# TYPE procrastinate_job_outcomes_total counter" in text
        assert "\nprocrastinate_workers " in text  # the queue gauges, read from the database
        wait_until(
            lambda: db_conn.execute("SELECT count(*) FROM pcq_workers").fetchone()[0] == 1,
            what="the worker registered (its signal handlers are installed by then)",
        )
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    assert (
        db_conn.execute("SELECT count(*) FROM pcq_jobs WHERE status = 'doing'").fetchone()[0] == 0
    )


def test_a_missing_prometheus_client_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(pc.exceptions.MissingDriverError, match=r"procrastinate-core\[metrics\]"):
        metrics.JobMetrics()
