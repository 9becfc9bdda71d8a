"""JobManager: every queue operation, in a sync and an async form written once.

Each operation is a builder that returns an `Op` (which named query, its
parameters, how to read the rows); `plans.paired()` turns one builder into the
pair `name` / `name_async`. Sync forms run on `connector.get_sync_connector()`,
async forms on the connector itself.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

from procrastinate_core import exceptions, serialization
from procrastinate_core.connectors.base import BaseConnector
from procrastinate_core.jobs import Job, Status
from procrastinate_core.plans import HasConnector, Op, paired

QUEUEING_LOCK_CONSTRAINT = "pcq_jobs_queueing_lock_uniq"
#: Hours of per-minute outcome counts workers keep (the dashboard shows the last one).
OUTCOME_STATS_HOURS = 3


@dataclasses.dataclass(frozen=True)
class JobOutcome:
    """How one attempt ended, as the worker records it (in batches).

    `status` is the final status, or "todo" for a retry at `retry_at`.
    """

    job_id: int
    worker_id: int
    attempt: int
    status: Status
    delete_job: bool = False
    retry_at: datetime.datetime | None = None
    priority: int | None = None
    queue: str | None = None
    lock: str | None = None
    result: Any = None
    error: dict[str, Any] | None = None

    def as_record(self) -> dict[str, Any]:
        return {
            "id": self.job_id,
            "worker_id": self.worker_id,
            "attempt": self.attempt,
            "status": Status(self.status).value,
            "delete_job": self.delete_job,
            "retry_at": self.retry_at.isoformat() if self.retry_at else None,
            "priority": self.priority,
            "queue_name": self.queue,
            "lock": self.lock,
            "result": self.result,
            "error": self.error,
        }


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


def _first(column: str) -> Callable[[Any], Any]:
    return lambda row: None if row is None else row[column]


def _sorted_ids(rows: list[dict[str, Any]]) -> list[int]:
    """Ids of inserted rows in insertion order (ids grow in the order rows were given)."""
    return sorted(row["id"] for row in rows)


def _pivot_counts(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_name: dict[Any, dict[str, Any]] = {}
    for row in rows:
        entry = by_name.setdefault(
            row["name"], {"name": row["name"], "jobs_count": 0, **{s.value: 0 for s in Status}}
        )
        entry[row["status"]] = row["count"]
        entry["jobs_count"] += row["count"]
    return list(by_name.values())


class JobManager(HasConnector):
    """Reads and changes jobs; the only code that knows which query does what."""

    def __init__(self, connector: BaseConnector) -> None:
        self.connector = connector

    def wrap_error(self, exc: Exception) -> Exception:
        if (
            isinstance(exc, exceptions.UniqueViolation)
            and exc.constraint_name == QUEUEING_LOCK_CONSTRAINT
        ):
            return exceptions.AlreadyEnqueued(
                "a job with this queueing lock is already waiting to run "
                f"({exc}). Catch AlreadyEnqueued to ignore it, or use another queueing_lock."
            )
        return exc

    def _to_job(self, row: dict[str, Any]) -> Job:
        return Job.from_row(row, self.connector.json_loads)

    def _jobs(self, rows: list[dict[str, Any]]) -> list[Job]:
        return [self._to_job(row) for row in rows]

    # -- deferring -----------------------------------------------------------
    def _batch_defer_jobs(
        self, jobs: Sequence[Job], connection: Any = None, args_json: Sequence[str] | None = None
    ) -> Op[list[Job]]:
        """Insert jobs in one statement; returns them with their ids.

        `args_json`: each job's task_kwargs as the connector's json_dumps wrote
        them (JobDeferrer already encoded them to check them), in job order.
        """
        payload = serialization.defer_payload(jobs, args_json, self.connector.json_dumps)

        def parse(rows: list[dict[str, Any]]) -> list[Job]:
            ids = _sorted_ids(rows)
            return [
                job.evolve(id=job_id, status=Status.TODO.value)
                for job, job_id in zip(jobs, ids, strict=True)
            ]

        return Op("job_defer_many", {"jobs": payload}, "all", parse, connection)

    batch_defer_jobs, batch_defer_jobs_async = paired(_batch_defer_jobs)

    def _defer_from_template(
        self, template: Job, args_json: Sequence[str], connection: Any = None
    ) -> Op[list[int]]:
        """Insert one job per argument text, all from one template; their ids in order.

        What task.defer and batch_defer need: no Job object per row is built on the
        way in or out, which is most of a large batch's client CPU.
        """
        payload = serialization.template_payload(template, args_json)
        return Op("job_defer_many", {"jobs": payload}, "all", _sorted_ids, connection)

    defer_from_template, defer_from_template_async = paired(_defer_from_template)

    def defer_job(self, job: Job, connection: Any = None, args_json: str | None = None) -> Job:
        texts = None if args_json is None else [args_json]
        return self.batch_defer_jobs([job], connection=connection, args_json=texts)[0]

    async def defer_job_async(
        self, job: Job, connection: Any = None, args_json: str | None = None
    ) -> Job:
        texts = None if args_json is None else [args_json]
        return (await self.batch_defer_jobs_async([job], connection=connection, args_json=texts))[0]

    def _defer_periodic_job(
        self, job: Job, periodic_id: str, defer_timestamp: int
    ) -> Op[int | None]:
        """Defer one periodic tick unless any worker already did; the job id or None."""
        params = {
            "task_name": job.task_name,
            "periodic_id": periodic_id,
            "defer_timestamp": defer_timestamp,
            "queue_name": job.queue,
            "priority": job.priority,
            "lock": job.lock,
            "queueing_lock": job.queueing_lock,
            "args": self.connector.json_dumps(job.task_kwargs),
        }
        return Op("periodic_defer", params, "one", _first("id"))

    defer_periodic_job, defer_periodic_job_async = paired(_defer_periodic_job)

    def _prune_periodic_defers(self, before: int) -> Op[int]:
        """Forget periodic ticks older than `before` (Unix time)."""
        return Op("periodic_defers_prune", {"before": before}, "one", _first("deleted"))

    prune_periodic_defers, prune_periodic_defers_async = paired(_prune_periodic_defers)

    # -- the worker's side -----------------------------------------------------
    def _fetch_jobs(self, worker_id: int, queues: Iterable[str] | None, limit: int) -> Op[list[Job]]:
        """Claim up to `limit` ready jobs for a worker, best first."""
        params = {
            "worker_id": worker_id,
            "queues": list(queues) if queues else None,
            "limit": limit,
        }

        def parse(rows: list[dict[str, Any]]) -> list[Job]:
            jobs = self._jobs(rows)
            jobs.sort(key=lambda job: (-job.priority, job.id or 0))
            return jobs

        return Op("job_fetch_many", params, "all", parse)

    fetch_jobs, fetch_jobs_async = paired(_fetch_jobs)

    def _finish_jobs(self, outcomes: Sequence[JobOutcome]) -> Op[set[int]]:
        """Record outcomes in one statement; returns the ids that were still owned.

        An id missing from the result means the worker lost the job (it was
        recovered as stalled): its outcome was refused.
        """
        payload = self.connector.json_dumps([outcome.as_record() for outcome in outcomes])
        return Op(
            "job_finish_many", {"outcomes": payload}, "all", lambda rows: {r["id"] for r in rows}
        )

    finish_jobs, finish_jobs_async = paired(_finish_jobs)

    def _recover_stalled_jobs(self, stalled_worker_timeout: float) -> Op[list[tuple[int, Status]]]:
        """Requeue jobs of workers silent for `stalled_worker_timeout` s and prune them."""
        return Op(
            "job_recover_stalled",
            {"stalled_seconds": float(stalled_worker_timeout)},
            "all",
            lambda rows: [(row["id"], Status(row["status"])) for row in rows],
        )

    recover_stalled_jobs, recover_stalled_jobs_async = paired(_recover_stalled_jobs)

    def _release_unknown_jobs(self, worker_id: int, known_ids: list[int]) -> Op[list[tuple[int, Status]]]:
        """Requeue this worker's running jobs it does not know of (a claim whose reply was lost)."""
        return Op(
            "job_release_unknown",
            {"worker_id": worker_id, "known_ids": list(known_ids)},
            "all",
            lambda rows: [(row["id"], Status(row["status"])) for row in rows],
        )

    release_unknown_jobs, release_unknown_jobs_async = paired(_release_unknown_jobs)

    def _list_jobs_to_abort(self, worker_id: int) -> Op[list[int]]:
        """Ids of this worker's running jobs that were asked to abort."""
        return Op(
            "job_list_to_abort", {"worker_id": worker_id}, "all", lambda rows: [r["id"] for r in rows]
        )

    list_jobs_to_abort, list_jobs_to_abort_async = paired(_list_jobs_to_abort)

    def _register_worker(self, name: str | None = None, host: str | None = None, pid: int | None = None) -> Op[int]:
        """Register a worker; its id."""
        return Op("worker_register", {"name": name, "host": host, "pid": pid}, "one", _first("id"))

    register_worker, register_worker_async = paired(_register_worker)

    def _update_heartbeat(self, worker_id: int) -> Op[bool]:
        """Beat; False when the worker's row was pruned (it was considered stalled)."""
        return Op("worker_heartbeat", {"worker_id": worker_id}, "one", lambda row: row is not None)

    update_heartbeat, update_heartbeat_async = paired(_update_heartbeat)

    def _unregister_worker(self, worker_id: int) -> Op[None]:
        """Remove a worker's row (its running jobs, if any, become recoverable at once)."""
        return Op("worker_unregister", {"worker_id": worker_id}, "none", lambda _: None)

    unregister_worker, unregister_worker_async = paired(_unregister_worker)

    def _list_workers(self) -> Op[list[dict[str, Any]]]:
        """Registered workers with their heartbeat age in seconds."""
        return Op("worker_list", {}, "all", list)

    list_workers, list_workers_async = paired(_list_workers)

    # -- inspecting and acting on jobs --------------------------------------
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
            "id": id,
            "queue": queue,
            "task": task,
            "status": Status(status).value if status is not None else None,
            "lock": lock,
            "queueing_lock": queueing_lock,
            "worker_id": worker_id,
            "limit": limit,
        }
        return Op("job_list", params, "all", self._jobs)

    list_jobs, list_jobs_async = paired(_list_jobs)

    def _get_job_status(self, job_id: int) -> Op[Status]:
        """The status of a job; JobNotFound if there is none with that id."""

        def parse(row: dict[str, Any] | None) -> Status:
            if row is None:
                raise exceptions.JobNotFound(f"no job with id {job_id}")
            return Status(row["status"])

        return Op("job_get_status", {"job_id": job_id}, "one", parse)

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

    def _cancel_job_by_id(self, job_id: int, abort: bool = False, delete_job: bool = False) -> Op[bool]:
        """Cancel a waiting job (or delete it); with abort=True, ask a running one to stop.

        True if the job was cancelled, deleted, or asked to abort; False if it
        was already finished (or running, without abort=True).
        """
        if delete_job:
            return Op("job_delete_waiting", {"job_id": job_id}, "one", lambda row: row is not None)
        return Op(
            "job_cancel", {"job_id": job_id, "abort": abort}, "one", lambda row: row is not None
        )

    cancel_job_by_id, cancel_job_by_id_async = paired(_cancel_job_by_id)

    def _delete_finished_job_by_id(self, job_id: int) -> Op[bool]:
        """Delete a finished job and its history; False if it is waiting or running (or gone)."""
        return Op("job_delete_finished", {"job_id": job_id}, "one", lambda row: row is not None)

    delete_finished_job_by_id, delete_finished_job_by_id_async = paired(_delete_finished_job_by_id)

    def _retry_job_by_id(
        self,
        job_id: int,
        retry_at: datetime.datetime | None = None,
        priority: int | None = None,
        queue: str | None = None,
        lock: str | None = None,
    ) -> Op[bool]:
        """Put a finished job back in the queue; False if it is waiting or running.

        Raises AlreadyEnqueued if its queueing lock is held by another waiting job.
        """
        params = {
            "job_id": job_id,
            "retry_at": retry_at,
            "priority": priority,
            "queue_name": queue,
            "lock": lock,
        }
        return Op("job_retry", params, "one", lambda row: row is not None)

    retry_job_by_id, retry_job_by_id_async = paired(_retry_job_by_id)

    def _delete_old_jobs(
        self,
        nb_hours: float,
        queue: str | None = None,
        include_failed: bool = False,
        include_cancelled: bool = False,
        include_aborted: bool = False,
    ) -> Op[int]:
        """Delete succeeded (and optionally failed/cancelled/aborted) jobs older than nb_hours."""
        statuses = ["succeeded"]
        statuses += ["failed"] if include_failed else []
        statuses += ["cancelled"] if include_cancelled else []
        statuses += ["aborted"] if include_aborted else []
        params = {"nb_hours": float(nb_hours), "queue": queue, "statuses": statuses}
        return Op("job_delete_old", params, "one", _first("deleted"))

    delete_old_jobs, delete_old_jobs_async = paired(_delete_old_jobs)

    def _count_jobs_by(
        self,
        group_by: Literal["queue", "task", "lock"],
        queue: str | None = None,
        task: str | None = None,
        status: str | Status | None = None,
        lock: str | None = None,
    ) -> Op[list[dict[str, Any]]]:
        params = {
            "group_by": group_by,
            "queue": queue,
            "task": task,
            "status": Status(status).value if status is not None else None,
            "lock": lock,
        }
        return Op("job_count_by", params, "all", _pivot_counts)

    _count_by, _count_by_async = paired(_count_jobs_by)

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

    # -- readiness (migration 0006) ------------------------------------------------
    def _promote_due_jobs(self, limit: int = 1000) -> Op[int]:
        """Make up to `limit` scheduled jobs whose time has come (database clock) claimable.

        The stager (stager.py) calls this in every worker; claims never look at
        scheduled jobs themselves. Returns how many were promoted.
        """
        return Op("job_promote_due", {"limit": int(limit)}, "one", _first("promoted"))

    promote_due_jobs, promote_due_jobs_async = paired(_promote_due_jobs)

    # -- queue statistics (metrics, dashboards) ------------------------------------
    def _get_queue_stats(self) -> Op[list[QueueStats]]:
        """Per queue with waiting or running jobs: counts and ages; finished jobs are not read."""
        return Op("queue_stats", {}, "all", lambda rows: [QueueStats(**row) for row in rows])

    get_queue_stats, get_queue_stats_async = paired(_get_queue_stats)

    def _get_outcome_stats(self, minutes: int = 60) -> Op[list[dict[str, Any]]]:
        """Outcomes recorded per minute and queue over the last `minutes` (database clock):
        dicts of minute, queue_name, outcome (succeeded, failed, retried, ...) and count."""
        return Op("outcome_stats_recent", {"minutes": int(minutes)}, "all", list)

    get_outcome_stats, get_outcome_stats_async = paired(_get_outcome_stats)

    def _prune_outcome_stats(self, hours: float = OUTCOME_STATS_HOURS) -> Op[int]:
        """Forget per-minute outcome counts older than `hours`; how many rows went."""
        return Op("outcome_stats_prune", {"hours": int(hours)}, "one", _first("deleted"))

    prune_outcome_stats, prune_outcome_stats_async = paired(_prune_outcome_stats)

    def _count_running_jobs_by_worker(self) -> Op[dict[int, int]]:
        """How many jobs each worker is running now (workers running none are absent)."""
        return Op(
            "worker_running_counts", {}, "all",
            lambda rows: {int(row["worker_id"]): int(row["running"]) for row in rows},
        )

    count_running_jobs_by_worker, count_running_jobs_by_worker_async = paired(
        _count_running_jobs_by_worker
    )
