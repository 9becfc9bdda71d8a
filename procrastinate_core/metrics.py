"""Prometheus metrics: what workers did with jobs, and how the queues stand now.

Optional: `pip install "procrastinate-core[metrics]"` (prometheus_client). Two
sources, because they live in different places:

- `JobMetrics`, a worker middleware: each worker counts the jobs it ran, by
  task, queue and outcome, times them, and counts retry attempts. Only the
  process that ran a job knows how long it took.
- `QueueCollector`: gauges read from the database (jobs waiting and running
  per queue, queue latency, the longest-running job, workers and their
  heartbeats). It reads only todo/doing rows and the workers table, never the
  finished jobs, so a scrape costs the same with ten million of them.

`WorkerExporter` serves both from a worker process (`worker --metrics-port`);
`procrastinate_django.metrics.metrics_view` serves the queue gauges from the
web site. Metric names: METRIC_NAMES below and docs/observability.md.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any

from procrastinate_core import exceptions
from procrastinate_core.job_context import AbortReason, JobContext
from procrastinate_core.job_reads import QueueStats
from procrastinate_core.manager import JobManager

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import Metric

logger = logging.getLogger(__name__)

#: Every metric this module exports, with its labels.
METRIC_NAMES: dict[str, tuple[str, ...]] = {
    "procrastinate_job_outcomes_total": ("task", "queue", "outcome"),
    "procrastinate_job_duration_seconds": ("task", "queue", "outcome"),
    "procrastinate_job_retries_total": ("task", "queue"),
    "procrastinate_jobs_running": ("queue",),
    "procrastinate_queue_jobs": ("queue", "status"),
    "procrastinate_queue_latency_seconds": ("queue",),
    "procrastinate_queue_oldest_running_seconds": ("queue",),
    "procrastinate_workers": (),
    "procrastinate_worker_heartbeat_age_seconds": ("worker_id", "name"),
}

#: Job durations: from a millisecond no-op to an hour-long report.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)


def require_prometheus() -> Any:
    """prometheus_client, or MissingDriverError naming the extra that installs it."""
    try:
        import prometheus_client
        import prometheus_client.core  # noqa: F401 - the custom collectors' metric families
    except ImportError as exc:
        raise exceptions.MissingDriverError(
            f"metrics need the 'prometheus_client' package, which is not installed ({exc}). "
            'Install it with: pip install "procrastinate-core[metrics]"'
        ) from exc
    return prometheus_client


def _outcome_of_interruption(context: JobContext) -> str:
    reason = context.abort_reason()
    if reason is AbortReason.USER_REQUEST:
        return "aborted"
    if reason is AbortReason.TIMEOUT:
        return "timeout"
    return "interrupted"  # the worker is stopping: the job goes back to the queue


class JobMetrics:
    """Counters and a histogram of the jobs this process runs; use it as a worker middleware.

    `worker_middleware=[metrics]` (it is an async callable), or let
    WorkerExporter add it. Outcomes: succeeded, failed (raised; a retry may
    follow), aborted, timeout, interrupted (requeued by a stopping worker).
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        prometheus = require_prometheus()
        kwargs: dict[str, Any] = {} if registry is None else {"registry": registry}
        self.outcomes = prometheus.Counter(
            "procrastinate_job_outcomes",
            "Jobs run by this worker, by how they ended",
            METRIC_NAMES["procrastinate_job_outcomes_total"],
            **kwargs,
        )
        self.duration = prometheus.Histogram(
            "procrastinate_job_duration_seconds",
            "Seconds a job ran, by how it ended",
            METRIC_NAMES["procrastinate_job_duration_seconds"],
            buckets=DURATION_BUCKETS,
            **kwargs,
        )
        self.retries = prometheus.Counter(
            "procrastinate_job_retries",
            "Attempts started beyond a job's first (retries, and reruns after a recovery)",
            METRIC_NAMES["procrastinate_job_retries_total"],
            **kwargs,
        )
        self.running = prometheus.Gauge(
            "procrastinate_jobs_running",
            "Jobs running in this worker now",
            METRIC_NAMES["procrastinate_jobs_running"],
            **kwargs,
        )

    async def __call__(
        self, call_next: Callable[[], Awaitable[Any]], context: JobContext, worker: Any
    ) -> Any:
        job = context.job
        task, queue = job.task_name, job.queue
        if job.attempts > 0:  # earlier runs of this job (procrastinate's count)
            self.retries.labels(task, queue).inc()
        running = self.running.labels(queue)
        running.inc()
        started = time.perf_counter()
        outcome = "failed"
        try:
            result = await call_next()
        except asyncio.CancelledError:
            outcome = _outcome_of_interruption(context)
            raise
        except exceptions.JobAborted:
            outcome = "aborted"
            raise
        except BaseException:
            if context.abort_reason() is AbortReason.TIMEOUT:
                outcome = "timeout"
            raise
        else:
            outcome = "succeeded"
            return result
        finally:
            running.dec()
            self.outcomes.labels(task, queue, outcome).inc()
            self.duration.labels(task, queue, outcome).observe(time.perf_counter() - started)


@dataclasses.dataclass(frozen=True)
class QueueSnapshot:
    """The database's view of the queues at one moment (what QueueCollector exports)."""

    queues: tuple[QueueStats, ...]
    workers: tuple[dict[str, Any], ...]


def read_snapshot(job_manager: JobManager) -> QueueSnapshot:
    return QueueSnapshot(tuple(job_manager.get_queue_stats()), tuple(job_manager.list_workers()))


async def read_snapshot_async(job_manager: JobManager) -> QueueSnapshot:
    queues = await job_manager.get_queue_stats_async()
    workers = await job_manager.list_workers_async()
    return QueueSnapshot(tuple(queues), tuple(workers))


class QueueCollector:
    """Prometheus collector of the queue gauges, from whatever snapshot `source` returns.

    `source` returns None until a first snapshot exists (nothing is exported then).
    """

    def __init__(self, source: Callable[[], QueueSnapshot | None]) -> None:
        self.source = source

    def describe(self) -> list[Metric]:
        return []  # no database read when the collector is registered

    def collect(self) -> Iterator[Metric]:
        snapshot = self.source()
        if snapshot is None:
            return
        core = require_prometheus().core
        jobs = core.GaugeMetricFamily(
            "procrastinate_queue_jobs",
            "Jobs waiting (todo) or running (doing), per queue",
            labels=["queue", "status"],
        )
        latency = core.GaugeMetricFamily(
            "procrastinate_queue_latency_seconds",
            "Seconds the oldest job that could run now has waited (0: none waits)",
            labels=["queue"],
        )
        oldest_running = core.GaugeMetricFamily(
            "procrastinate_queue_oldest_running_seconds",
            "Seconds the longest-running job of the queue has run (0: none runs)",
            labels=["queue"],
        )
        for stats in snapshot.queues:
            jobs.add_metric([stats.queue_name, "todo"], stats.todo)
            jobs.add_metric([stats.queue_name, "doing"], stats.doing)
            latency.add_metric([stats.queue_name], max(stats.oldest_ready_age or 0.0, 0.0))
            oldest_running.add_metric([stats.queue_name], max(stats.oldest_running_age or 0.0, 0.0))
        workers = core.GaugeMetricFamily(
            "procrastinate_workers", "Workers registered in the database (alive or not yet pruned)"
        )
        workers.add_metric([], len(snapshot.workers))
        heartbeats = core.GaugeMetricFamily(
            "procrastinate_worker_heartbeat_age_seconds",
            "Seconds since each registered worker's last heartbeat",
            labels=["worker_id", "name"],
        )
        for worker in snapshot.workers:
            heartbeats.add_metric(
                [str(worker["id"]), worker.get("name") or ""], float(worker["heartbeat_age"])
            )
        yield from (jobs, latency, oldest_running, workers, heartbeats)


def render(registry: CollectorRegistry) -> tuple[bytes, str]:
    """The text exposition of `registry` and its content type (for a web view)."""
    prometheus = require_prometheus()
    return prometheus.generate_latest(registry), prometheus.CONTENT_TYPE_LATEST


class WorkerExporter:
    """Serves a worker's metrics over HTTP: its job metrics and the queue gauges.

    An async context manager around a worker run, on the worker's loop: the
    queue gauges come from a snapshot refreshed every `refresh` seconds (so a
    scrape never waits on the database, and many scrapers cost one query per
    refresh). The HTTP server runs in prometheus_client's own thread.
    """

    def __init__(
        self,
        job_manager: JobManager,
        port: int,
        host: str = "0.0.0.0",
        refresh: float = 15.0,
        registry: CollectorRegistry | None = None,
    ) -> None:
        prometheus = require_prometheus()
        self.job_manager = job_manager
        self.port = port
        self.host = host
        self.refresh = refresh
        self.registry = registry if registry is not None else prometheus.CollectorRegistry()
        self.job_metrics = JobMetrics(self.registry)
        self.snapshot: QueueSnapshot | None = None
        self.registry.register(QueueCollector(lambda: self.snapshot))
        self._server: Any = None
        self._refresher: asyncio.Task[None] | None = None
        #: set after every refresh, for tests waiting on one
        self.refreshed = asyncio.Event()

    async def _refresh_forever(self) -> None:
        while True:
            try:
                self.snapshot = await read_snapshot_async(self.job_manager)
                self.refreshed.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the last snapshot stays; try again next period
                logger.warning(
                    "Could not refresh the queue metrics (%s: %s); retrying in %.0f s",
                    type(exc).__name__,
                    exc,
                    self.refresh,
                    extra={"action": "metrics_refresh_failed"},
                )
            await asyncio.sleep(self.refresh)

    async def __aenter__(self) -> WorkerExporter:
        prometheus = require_prometheus()
        started = prometheus.start_http_server(self.port, addr=self.host, registry=self.registry)
        self._server = started[0] if isinstance(started, tuple) else None
        self.port = self._server.server_port if self._server is not None else self.port
        self._refresher = asyncio.create_task(self._refresh_forever(), name="pcq-metrics")
        logger.info(
            "Serving metrics on http://%s:%d/metrics",
            self.host,
            self.port,
            extra={"action": "metrics_serving", "port": self.port},
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            await asyncio.gather(self._refresher, return_exceptions=True)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
