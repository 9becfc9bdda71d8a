"""Which services a worker runs, in which order, each built from what it needs.

Start order: the essential services (outcome recorder, heartbeat, abort
watcher), which must outlive running jobs, then the feeders (stalled-job
sweeper, stager, stats pruner, listener, periodic deferrer), which bring work and stop first. Each
Supervisor stops its services in reverse. The worker hands in callbacks,
never itself.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from procrastinate_core.abort_watcher import AbortWatcher, AbortWatcherConfig
from procrastinate_core.connectors.base import BaseConnector
from procrastinate_core.heartbeat import HeartbeatConfig, HeartbeatService
from procrastinate_core.job_context import AbortReason
from procrastinate_core.manager import JobManager
from procrastinate_core.notification_listener import (
    ListenerConfig,
    NotificationListener,
    listen_channels,
)
from procrastinate_core.options import WorkerOptions
from procrastinate_core.outcome_recorder import OutcomeRecorder
from procrastinate_core.periodic import PeriodicTask
from procrastinate_core.periodic_deferrer import PeriodicConfig, PeriodicDeferrer
from procrastinate_core.service import Service, Supervisor, TestSignal
from procrastinate_core.stager import Stager
from procrastinate_core.stalled_sweeper import StalledJobSweeper, SweeperConfig
from procrastinate_core.stats_pruner import StatsPruner


class WorkerSignals:
    """Test signals of the worker's own loop (each service has its own too)."""

    __test__ = False

    def __init__(self) -> None:
        self.registered = TestSignal()
        self.services_started = TestSignal()
        self.fetched = TestSignal()
        #: one turn of the fetch loop (whether it claimed or found no free slot)
        self.loop_turned = TestSignal()
        self.stopping = TestSignal()
        self.stopped = TestSignal()


@dataclasses.dataclass(frozen=True)
class WorkerCallbacks:
    """What services may ask of their worker."""

    worker_id: Callable[[], int | None]
    has_running: Callable[[], bool]
    wake: Callable[[], None]
    request_abort: Callable[[int, AbortReason], None]
    reregister: Callable[[], Awaitable[int]]


@dataclasses.dataclass(frozen=True)
class WorkerServices:
    recorder: OutcomeRecorder
    abort_watcher: AbortWatcher
    listener: NotificationListener | None
    essentials: Supervisor
    feeders: Supervisor


def build_services(
    manager: JobManager,
    connector: BaseConnector,
    options: WorkerOptions,
    periodic_tasks: list[PeriodicTask],
    periodic_defaults: Mapping[str, Any],
    callbacks: WorkerCallbacks,
) -> WorkerServices:
    """The services of one worker; raises on a bad config (before any I/O)."""
    recorder = OutcomeRecorder(manager, on_recorded=callbacks.wake)
    abort_watcher = AbortWatcher(
        manager,
        AbortWatcherConfig(interval=options.abort_job_polling_interval),
        worker_id=callbacks.worker_id,
        has_running=callbacks.has_running,
        on_abort=callbacks.request_abort,
    )
    heartbeat = HeartbeatService(
        manager,
        HeartbeatConfig(options.update_heartbeat_interval, options.stalled_worker_timeout),
        worker_id=callbacks.worker_id,
        reregister=callbacks.reregister,
    )
    sweeper = StalledJobSweeper(
        manager,
        SweeperConfig(options.stalled_worker_timeout, options.max_stalled_recoveries),
        on_recovered=callbacks.wake,
    )
    # Due scheduled jobs become claimable through the stager (readiness, migration 0006).
    stager = Stager(manager, on_promoted=lambda _count: callbacks.wake())
    feeders: list[Service] = [sweeper, stager, StatsPruner(manager)]
    listener = None
    if options.listen_notify:
        listener = NotificationListener(
            connector,
            ListenerConfig(listen_channels(options.queues)),
            on_job=callbacks.wake,
            on_abort=abort_watcher.on_notification,
        )
        feeders.append(listener)
    if options.wait and periodic_tasks:
        config = PeriodicConfig.from_defaults(periodic_defaults)
        feeders.append(PeriodicDeferrer(manager, periodic_tasks, config))
    return WorkerServices(
        recorder=recorder,
        abort_watcher=abort_watcher,
        listener=listener,
        essentials=Supervisor([recorder, heartbeat, abort_watcher]),
        feeders=Supervisor(feeders),
    )
