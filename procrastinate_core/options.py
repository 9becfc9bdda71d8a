"""Worker options and their defaults, declared once.

The worker, `App(worker_defaults=...)`, the CLI flags and the Django settings
read WORKER_OPTIONS; nothing else spells out a default. The options table of
docs/worker.md is checked against it (tests/unit/test_docs_rules.py).
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from typing import Any

from procrastinate_core import exceptions, middleware, validation
from procrastinate_core.jobs import DeleteJobCondition


class ShutdownTimeoutAction(str, enum.Enum):
    """What happens to jobs still running when `shutdown_graceful_timeout` is over."""

    #: asked to stop, then put back in the queue (attempt counted): another worker runs them
    REQUEUE = "requeue"
    #: asked to stop, then ended `aborted` (procrastinate's behaviour): nobody runs them again
    ABORT = "abort"


@dataclasses.dataclass(frozen=True)
class WorkerOptions:
    """How a worker runs. See docs/worker.md for the meaning of each option."""

    #: Queues to take jobs from; None means every queue.
    queues: tuple[str, ...] | None = None
    #: Name shown in logs, the workers table and JobContext.worker_name.
    name: str | None = None
    #: How many jobs run at once in this process.
    concurrency: int = 1
    #: False: process what is ready, then return (for tests and cron-style runs).
    wait: bool = True
    #: Seconds between polls when no notification arrives.
    fetch_job_polling_interval: float = 5.0
    #: Seconds between polls for abort requests (notifications make it faster).
    abort_job_polling_interval: float = 5.0
    #: Seconds to let running jobs finish after a stop signal; None waits for them.
    shutdown_graceful_timeout: float | None = None
    #: Use LISTEN/NOTIFY to learn of new jobs and abort requests at once.
    listen_notify: bool = True
    #: Which finished jobs to delete instead of keeping.
    delete_jobs: DeleteJobCondition = DeleteJobCondition.NEVER
    #: Extra values put in JobContext.additional_context.
    additional_context: Mapping[str, Any] | None = None
    #: Handle SIGINT/SIGTERM (first: graceful stop; second: immediate stop).
    install_signal_handlers: bool = True
    #: Seconds between heartbeats.
    update_heartbeat_interval: float = 10.0
    #: A worker silent this long is dead: its jobs go back to the queue.
    stalled_worker_timeout: float = 30.0
    #: Functions wrapping each job's execution (see docs/worker.md#middleware).
    worker_middleware: tuple[Any, ...] = ()
    #: Task middleware for every task this worker runs, each wrapping the tasks of its own colour
    #: (def: sync tasks, async def: async tasks), outside the task's own.
    task_middleware: tuple[Any, ...] = ()
    #: Jobs still running past shutdown_graceful_timeout: requeue them, or abort them.
    shutdown_timeout_action: ShutdownTimeoutAction = ShutdownTimeoutAction.REQUEUE
    #: A job whose worker died while running it this many times ends failed (poison job).
    max_stalled_recoveries: int = 3
    #: False: a claim commits without waiting for its WAL flush (one flush less between a
    #: defer and its task); a server crash may then lose a claim and run its job again.
    durable_claims: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "queues", validation.check_queues(self.queues, where="worker"))
        validation.check_optional_name("name", self.name, where="worker")
        if (
            isinstance(self.concurrency, bool)
            or not isinstance(self.concurrency, int)
            or self.concurrency < 1
        ):
            raise exceptions.ConfigurationError(
                f"concurrency={self.concurrency!r}: expected an int >= 1"
            )
        for option in (
            "fetch_job_polling_interval",
            "abort_job_polling_interval",
            "update_heartbeat_interval",
            "stalled_worker_timeout",
        ):
            validation.check_seconds(option, getattr(self, option), allow_zero=False)
        if self.shutdown_graceful_timeout is not None and not self.shutdown_graceful_timeout >= 0:
            raise exceptions.ConfigurationError(
                f"shutdown_graceful_timeout={self.shutdown_graceful_timeout!r}: expected "
                ">= 0 or None"
            )
        if self.stalled_worker_timeout <= self.update_heartbeat_interval:
            raise exceptions.ConfigurationError(
                f"stalled_worker_timeout={self.stalled_worker_timeout} must be larger than "
                f"update_heartbeat_interval={self.update_heartbeat_interval}, or live "
                "workers would be taken for dead"
            )
        try:
            object.__setattr__(self, "delete_jobs", DeleteJobCondition(self.delete_jobs))
        except ValueError:
            raise exceptions.ConfigurationError(
                f"delete_jobs={self.delete_jobs!r}: expected one of "
                f"{[c.value for c in DeleteJobCondition]}"
            ) from None
        object.__setattr__(self, "worker_middleware", tuple(self.worker_middleware or ()))
        object.__setattr__(self, "task_middleware", tuple(self.task_middleware or ()))
        middleware.check_worker_middleware(self.worker_middleware)
        middleware.check_worker_task_middleware(self.task_middleware)
        try:
            object.__setattr__(
                self, "shutdown_timeout_action", ShutdownTimeoutAction(self.shutdown_timeout_action)
            )
        except ValueError:
            raise exceptions.ConfigurationError(
                f"shutdown_timeout_action={self.shutdown_timeout_action!r}: expected one of "
                f"{[a.value for a in ShutdownTimeoutAction]}"
            ) from None
        if (
            isinstance(self.max_stalled_recoveries, bool)
            or not isinstance(self.max_stalled_recoveries, int)
            or self.max_stalled_recoveries < 1
        ):
            raise exceptions.ConfigurationError(
                f"max_stalled_recoveries={self.max_stalled_recoveries!r}: expected an int >= 1 "
                "(how many times a job may lose its worker before it ends failed)"
            )

        if not isinstance(self.durable_claims, bool):
            raise exceptions.ConfigurationError(
                f"durable_claims={self.durable_claims!r}: expected True or False"
            )

    @classmethod
    def build(cls, *layers: Mapping[str, Any] | None) -> WorkerOptions:
        """Options from layered mappings (defaults, then overrides); unknown keys are errors."""
        merged: dict[str, Any] = {}
        known = {field.name for field in dataclasses.fields(cls)}
        for layer in layers:
            for key, value in (layer or {}).items():
                if key not in known:
                    raise exceptions.ConfigurationError(
                        f"unknown worker option {key!r}; known options: {', '.join(sorted(known))}"
                    )
                merged[key] = value
        return cls(**merged)


WORKER_OPTIONS: tuple[dataclasses.Field[Any], ...] = dataclasses.fields(WorkerOptions)
