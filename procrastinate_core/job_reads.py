"""JobManager's reads: listing and counting jobs (exact, or estimated on big tables),
a job's status, events and errors, queue statistics, stalled jobs.

A mixin of JobManager (manager.py), written like it: each operation is a
builder returning an Op or a plan, `plans.paired()` makes the sync and async
pair. Nothing here changes a job.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from typing import Any, Literal

from procrastinate_core import exceptions, validation
from procrastinate_core.jobs import Job, Status
from procrastinate_core.plans import HasConnector, Op, Plan, either_colour, first_column, paired

#: Rows sampled (about) when count_job_rows estimates finished jobs.
COUNT_SAMPLE_ROWS = 20_000


def _error_history(row: dict[str, Any] | None) -> list[dict[str, Any]]:
    if row is None:
        return []
    entries: list[dict[str, Any]] = json.loads(row["errors"])
    for entry in entries:
        if isinstance(entry.get("at"), str):
            entry["at"] = datetime.datetime.fromisoformat(entry["at"])
    return entries


@dataclasses.dataclass(frozen=True)
class QueueStats:
    """One queue's live state: how many jobs wait and run, and how old the oldest are.

    `oldest_ready_age` is the queue's latency: seconds since the oldest job that
    could run now became due (None when none can). Ages are on the database clock.
    """

    queue_name: str
    todo: int
    doing: int
    oldest_ready_age: float | None
    oldest_running_age: float | None


def _count_params(
    group_by: str,
    queue: str | None,
    task: str | None,
    status: str | Status | None,
    lock: str | None,
) -> dict[str, Any]:
    if group_by not in ("queue", "task", "lock"):
        raise ValueError(f"group_by={group_by!r}: expected 'queue', 'task' or 'lock'")
    return {
        "group_by": group_by,
        "queue": validation.check_filter("queue", queue),
        "task": validation.check_filter("task", task),
        "status": Status(status).value if status is not None else None,
        "lock": validation.check_filter("lock", lock),
    }


def _pivot_counts(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_name: dict[Any, dict[str, Any]] = {}
    for row in rows:
        entry = by_name.setdefault(
            row["name"], {"name": row["name"], "jobs_count": 0, **{s.value: 0 for s in Status}}
        )
        entry[row["status"]] = row["count"]
        entry["jobs_count"] += row["count"]
    return list(by_name.values())


class JobReads(HasConnector):
    """The JobManager's read operations."""

    def _list_jobs(
        self,
        id: int | None = None,
        queue: str | None = None,
        task: str | None = None,
        status: str | Status | None = None,
        lock: str | None = None,
        queueing_lock: str | None = None,
        worker_id: int | None = None,
        limit: int | None = None,
    ) -> Op[list[Job]]:
        """Jobs matching every given filter, oldest first."""
        params = {
            "id": validation.check_optional_id("id", id),
            "queue": validation.check_filter("queue", queue),
            "task": validation.check_filter("task", task),
            "status": Status(status).value if status is not None else None,
            "lock": validation.check_filter("lock", lock),
            "queueing_lock": validation.check_filter("queueing_lock", queueing_lock),
            "worker_id": validation.check_optional_id("worker_id", worker_id),
            "limit": limit,
        }
        # Unfinished jobs are the newest rows: job_list would walk every finished one
        # first (ORDER BY id on the pkey); job_list_unfinished reads only them.
        unfinished = params["status"] in (Status.TODO.value, Status.DOING.value)
        return Op("job_list_unfinished" if unfinished else "job_list", params, "all", self._jobs)

    list_jobs, list_jobs_async = paired(_list_jobs)

    def _get_job_status(self, job_id: int, connection: Any = None) -> Op[Status]:
        """The status of a job; JobNotFound if there is none with that id.

        `connection`: run on the caller's connection (inside its transaction)."""

        def parse(row: dict[str, Any] | None) -> Status:
            if row is None:
                raise exceptions.JobNotFound(f"no job with id {job_id}")
            return Status(row["status"])

        return Op("job_get_status", {"job_id": job_id}, "one", parse, connection)

    get_job_status, get_job_status_async = paired(_get_job_status)

    def _list_job_events(self, job_id: int) -> Op[list[dict[str, Any]]]:
        """A job's history (type, attempt, at), oldest first."""
        return Op("job_events_list", {"job_id": job_id}, "all", list)

    list_job_events, list_job_events_async = paired(_list_job_events)

    def _list_job_errors(self, job_id: int) -> Op[list[dict[str, Any]]]:
        """Every failed attempt's error, oldest first: attempt, worker_id, at, type, message,
        traceback (the latest 50; `Job.error` is the last one). Empty for an unknown job."""
        return Op("job_errors_list", {"job_id": job_id}, "one", _error_history)

    list_job_errors, list_job_errors_async = paired(_list_job_errors)

    def _count_jobs_by(
        self,
        group_by: Literal["queue", "task", "lock"],
        queue: str | None = None,
        task: str | None = None,
        status: str | Status | None = None,
        lock: str | None = None,
    ) -> Op[list[dict[str, Any]]]:
        params = _count_params(group_by, queue, task, status, lock)
        return Op("job_count_by", params, "all", _pivot_counts)

    _count_by, _count_by_async = paired(_count_jobs_by)

    def _count_job_rows(
        self,
        group_by: Literal["queue", "task", "lock"],
        queue: str | None = None,
        task: str | None = None,
        status: str | Status | None = None,
        lock: str | None = None,
        estimate_above: int | None = None,
    ) -> Plan[list[dict[str, Any]]]:
        """(name, status, count, estimated) per name and status, for views of a big table.

        Exact, unless `estimate_above` is given and pcq_jobs holds more rows than
        that (the planner's count): then finished jobs are estimated from a sample
        of about COUNT_SAMPLE_ROWS rows, since counting them reads the whole table
        (seconds at 10,000,000). Waiting and running jobs are always exact.
        """
        params = _count_params(group_by, queue, task, status, lock)
        if estimate_above is not None:
            if (
                isinstance(estimate_above, bool)
                or not isinstance(estimate_above, int)
                or estimate_above < 0
            ):
                raise ValueError(
                    f"estimate_above must be a number of rows >= 0 (or None: always exact), "
                    f"got {estimate_above!r}"
                )
            rows = yield Op("job_table_rows", {}, "one", first_column("rows"))
            if rows is not None and rows > estimate_above:
                percent = min(100.0, 100.0 * COUNT_SAMPLE_ROWS / max(rows, 1))
                sampled = {**params, "rows": rows, "sample_percent": percent}
                estimated: list[dict[str, Any]] = yield Op(
                    "job_count_by_sampled", sampled, "all", list
                )
                return estimated
        exact = yield Op("job_count_by", params, "all", list)
        return [{**row, "estimated": False} for row in exact]

    count_job_rows, count_job_rows_async = paired(_count_job_rows)

    def list_queues(self, **filters: Any) -> list[dict[str, Any]]:
        """Per queue: name, jobs_count and a count per status."""
        return self._count_by("queue", **filters)

    async def list_queues_async(self, **filters: Any) -> list[dict[str, Any]]:
        return await self._count_by_async("queue", **filters)

    def list_tasks(self, **filters: Any) -> list[dict[str, Any]]:
        """Per task name: name, jobs_count and a count per status."""
        return self._count_by("task", **filters)

    async def list_tasks_async(self, **filters: Any) -> list[dict[str, Any]]:
        return await self._count_by_async("task", **filters)

    def list_locks(self, **filters: Any) -> list[dict[str, Any]]:
        """Per lock: name, jobs_count and a count per status."""
        return self._count_by("lock", **filters)

    async def list_locks_async(self, **filters: Any) -> list[dict[str, Any]]:
        return await self._count_by_async("lock", **filters)

    def _check_connection(self) -> Op[bool]:
        """Whether the database answers and holds our schema."""
        return Op("schema_is_installed", {}, "one", lambda row: bool(row and row["installed"]))

    check_connection, check_connection_async = paired(_check_connection)

    # -- queue statistics (metrics, dashboards) ------------------------------------
    def _get_queue_stats(self) -> Op[list[QueueStats]]:
        """Per queue with waiting or running jobs: counts and ages; finished jobs are not read."""
        return Op("queue_stats", {}, "all", lambda rows: [QueueStats(**row) for row in rows])

    get_queue_stats, get_queue_stats_async = paired(_get_queue_stats)

    # -- procrastinate's stalled-jobs recipe ---------------------------------------------
    def _get_stalled_jobs(
        self,
        seconds_since_heartbeat: float = 30,
        queue: str | None = None,
        task_name: str | None = None,
    ) -> Op[list[Job]]:
        """Running jobs whose worker has not beaten for `seconds_since_heartbeat` s (or is
        gone): what the worker's own sweeper would requeue, for a custom retry rule."""
        stalled_seconds = validation.check_seconds(
            "seconds_since_heartbeat",
            seconds_since_heartbeat,
            allow_zero=False,
            why="larger than the workers' update_heartbeat_interval",
        )
        params = {
            "stalled_seconds": stalled_seconds,
            "queue": queue,
            "task_name": task_name,
        }
        return Op("job_list_stalled", params, "all", self._jobs)

    _get_stalled_jobs_sync, get_stalled_jobs_async = paired(_get_stalled_jobs)
    get_stalled_jobs = either_colour(_get_stalled_jobs_sync, get_stalled_jobs_async)
