"""The job record as read from the database, its statuses, and the delete-on-finish policy."""

from __future__ import annotations

import dataclasses
import datetime
import enum
import json
from collections.abc import Callable, Mapping
from typing import Any

JSONDict = dict[str, Any]

#: Statuses a job reaches by being run: while in one, its latest claim is the current
#: (or last) run, which procrastinate's `attempts` does not count yet.
_RUN_STATUSES = frozenset({"doing", "succeeded", "failed", "aborted"})


def public_attempts(claims: int, status: str | None) -> int:
    """procrastinate's `attempts` from our stored claim count: the runs *before* the
    current (or last) one, so 0 during the first run and N after N retries.

    The database counts claims (`pcq_jobs.attempts`, incremented by the claim, the
    fence of job_finish_many); this is the one place the two are mapped.
    """
    return claims - 1 if claims > 0 and status in _RUN_STATUSES else claims


class Status(str, enum.Enum):
    """Where a job is in its life; the four last ones are final."""

    TODO = "todo"
    DOING = "doing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    ABORTED = "aborted"

    @property
    def is_final(self) -> bool:
        return self not in (Status.TODO, Status.DOING)

    def __str__(self) -> str:
        return self.value


#: What a person may put back in the queue (the CLI shell's `retry`, the admin's retry
#: action): a job that ended without succeeding. A succeeded job did its work, and running
#: it again would repeat its effects (an email sent twice); defer a new job for that.
#: JobManager.retry_job_by_id itself accepts any finished job, as procrastinate's does.
RETRYABLE_STATUSES: tuple[Status, ...] = (Status.FAILED, Status.ABORTED, Status.CANCELLED)
#: Why retrying a job in another status is refused, in the words both places show.
RETRY_RULE = (
    "only failed, aborted or cancelled jobs can be retried "
    "(a succeeded job is not run again: defer a new one)"
)


class DeleteJobCondition(str, enum.Enum):
    """Which finished jobs a worker deletes instead of keeping (`delete_jobs` option)."""

    NEVER = "never"
    SUCCESSFUL = "successful"
    ALWAYS = "always"


@dataclasses.dataclass(frozen=True)
class Job:
    """One job: what to run (task and kwargs), where (queue), and how it went.

    Immutable: change it with `dataclasses.replace` / `job.evolve(...)`.
    """

    queue: str
    task_name: str
    lock: str | None = None
    queueing_lock: str | None = None
    id: int | None = None
    status: str | None = None
    priority: int = 0
    task_kwargs: JSONDict = dataclasses.field(default_factory=dict)
    scheduled_at: datetime.datetime | None = None
    #: Earlier runs, as in procrastinate: 0 during the first run, N after N retries.
    attempts: int = 0
    abort_requested: bool = False
    worker_id: int | None = None
    created_at: datetime.datetime | None = None
    started_at: datetime.datetime | None = None
    finished_at: datetime.datetime | None = None
    result: Any = None
    error: JSONDict | None = None
    #: How many times a worker claimed the job (the stored counter): the number of the
    #: current run, and with worker_id the fence on its outcome. 1 during the first run.
    claims: int = 0
    #: `configure(schedule_in=...)` in seconds: the database sets scheduled_at to its
    #: now() plus this at insert (one clock), so it is None once the job is read back.
    schedule_in_seconds: float | None = None
    #: The deferring code's W3C trace context ({"traceparent": ..., "tracestate": ...}),
    #: stored with the job so its runs can be linked to the defer (otel.py); None
    #: unless tracing is on.
    trace_context: dict[str, str] | None = None

    def evolve(self, **changes: Any) -> Job:
        """A copy with `changes` applied, like dataclasses.replace but several times
        faster (a batch defer evolves every job twice): Job has no __post_init__
        to re-run, so copying the fields is all replace would do."""
        unknown = changes.keys() - _FIELD_NAMES
        if unknown:
            raise TypeError(
                f"Job has no field(s) {sorted(unknown)}; fields: {sorted(_FIELD_NAMES)}"
            )
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.__dict__.update(changes)
        return new

    @property
    def call_string(self) -> str:
        """`task_name[id](k=v, ...)`: how logs and the admin show a job."""
        kwargs = ", ".join(f"{k}={v!r}" for k, v in self.task_kwargs.items())
        return f"{self.task_name}[{self.id}]({kwargs})"

    def log_context(self) -> JSONDict:
        """The job fields put in log records' `extra`."""
        return {
            "job_id": self.id,
            "task_name": self.task_name,
            "queue": self.queue,
            "attempts": self.attempts,
            "lock": self.lock,
            "queueing_lock": self.queueing_lock,
            "priority": self.priority,
        }

    @classmethod
    def from_row(cls, row: Mapping[str, Any], json_loads: Callable[[str], Any] = json.loads) -> Job:
        """Build a Job from a row of job_fetch_many / job_list (JSON columns as text)."""
        args = row["args"]
        result = row.get("result")
        error = row.get("error")
        trace_context = row.get("trace_context")
        status = row["status"]
        claims = row["attempts"]
        # Filled in directly rather than through the frozen __init__ (one
        # object.__setattr__ per field): a busy worker builds a Job per claimed row.
        job = object.__new__(cls)
        job.__dict__.update(
            id=row["id"],
            queue=row["queue_name"],
            task_name=row["task_name"],
            priority=row["priority"],
            lock=row["lock"],
            queueing_lock=row["queueing_lock"],
            task_kwargs=json_loads(args) if isinstance(args, str) else (args or {}),
            status=status,
            scheduled_at=row["scheduled_at"],
            attempts=public_attempts(claims, status),
            claims=claims,
            worker_id=row["worker_id"],
            abort_requested=row["abort_requested"],
            created_at=row.get("created_at"),
            started_at=row.get("started_at"),
            finished_at=row.get("finished_at"),
            result=json_loads(result) if isinstance(result, str) else result,
            error=json.loads(error) if isinstance(error, str) else error,
            schedule_in_seconds=None,
            trace_context=(
                json.loads(trace_context) if isinstance(trace_context, str) else trace_context
            ),
        )
        return job


_FIELD_NAMES = frozenset(field.name for field in dataclasses.fields(Job))
