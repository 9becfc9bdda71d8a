"""JobContext: what a task run with pass_context=True learns about its job and worker."""

from __future__ import annotations

import dataclasses
import enum
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from procrastinate_core.jobs import Job

if TYPE_CHECKING:
    from procrastinate_core.app import App
    from procrastinate_core.tasks import Task


class AbortReason(str, enum.Enum):
    """Why a job is asked to stop."""

    USER_REQUEST = "user_request"
    SHUTDOWN = "shutdown"
    TIMEOUT = "timeout"


def _never() -> AbortReason | None:
    return None


@dataclasses.dataclass(frozen=True)
class JobContext:
    """Passed as first argument to tasks declared with pass_context=True.

    Sync tasks cannot be interrupted from outside: long ones should call
    `should_abort()` now and then and return (or raise JobAborted) when True.
    """

    app: App
    job: Job
    worker_name: str | None = None
    worker_queues: Iterable[str] | None = None
    additional_context: dict[str, Any] = dataclasses.field(default_factory=dict)
    start_timestamp: float = dataclasses.field(default_factory=time.time)
    abort_reason: Callable[[], AbortReason | None] = _never

    @property
    def task(self) -> Task[Any, Any, Any] | None:
        return self.app.tasks.get(self.job.task_name)

    def should_abort(self) -> bool:
        """True once the job was asked to abort, the worker is shutting down past
        its grace period, or the task's timeout has expired."""
        return self.abort_reason() is not None

    async def should_abort_async(self) -> bool:
        return self.should_abort()

    def evolve(self, **changes: Any) -> JobContext:
        return dataclasses.replace(self, **changes)

    @property
    def queues_display(self) -> str:
        return ", ".join(self.worker_queues) if self.worker_queues else "all queues"
