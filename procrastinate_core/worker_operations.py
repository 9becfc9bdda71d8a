"""JobManager's side for workers: claims, outcomes, recovery, worker rows, readiness, stats.

A mixin of JobManager (manager.py), written like it: each operation is a
builder returning an Op, `plans.paired()` makes the sync and async pair. The
services of a worker (worker_services.py) call these; nothing here is what a
user calls to inspect or change jobs (manager.py has that).
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Iterable, Sequence
from typing import Any

from procrastinate_core.jobs import Job, Status
from procrastinate_core.plans import HasConnector, Op, first_column, paired

#: Hours of per-minute outcome counts workers keep (the dashboard shows the last one).
OUTCOME_STATS_HOURS = 3


@dataclasses.dataclass(frozen=True)
class JobOutcome:
    """How one attempt ended, as the worker records it (in batches).

    `status` is the final status, or "todo" for a retry at `retry_at`, or
    `retry_in` seconds after the database's now() (one clock).
    """

    job_id: int
    worker_id: int
    attempt: int
    status: Status
    delete_job: bool = False
    retry_at: datetime.datetime | None = None
    #: a retry's wait in seconds; job_finish_many adds it to the database's now()
    retry_in: float | None = None
    priority: int | None = None
    queue: str | None = None
    lock: str | None = None
    result: Any = None
    error: dict[str, Any] | None = None
    #: size of `result` as JSON text, so the recorder can bound a batch without re-encoding
    result_bytes: int = dataclasses.field(default=0, compare=False)

    def as_record(self) -> dict[str, Any]:
        return {
            "id": self.job_id,
            "worker_id": self.worker_id,
            "attempt": self.attempt,
            "status": Status(self.status).value,
            "delete_job": self.delete_job,
            "retry_at": self.retry_at.isoformat() if self.retry_at else None,
            "retry_in": self.retry_in,
            "priority": self.priority,
            "queue_name": self.queue,
            "lock": self.lock,
            "result": self.result,
            "error": self.error,
        }


class WorkerOperations(HasConnector):
    """The JobManager's operations for workers and their services."""

    # -- the worker's side -----------------------------------------------------
    def _fetch_jobs(
        self, worker_id: int, queues: Iterable[str] | None, limit: int, durable: bool = True
    ) -> Op[list[Job]]:
        """Claim up to `limit` ready jobs for a worker, best first.

        `durable=False` (the worker's `durable_claims`): the claim's commit does not
        wait for its WAL flush, the larger half of the time from a defer to its task.
        A claim lost in a server crash leaves its job `todo`, to run again."""
        params = {
            "worker_id": worker_id,
            "queues": list(queues) if queues else None,
            "limit": limit,
        }

        def parse(rows: list[dict[str, Any]]) -> list[Job]:
            jobs = self._jobs(rows)
            jobs.sort(key=lambda job: (-job.priority, job.id or 0))
            return jobs

        return Op(
            "job_fetch_many" if durable else "job_fetch_many_nondurable", params, "all", parse
        )

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

    def _recover_stalled_jobs(
        self, stalled_worker_timeout: float, max_recoveries: int | None = None
    ) -> Op[list[tuple[int, Status]]]:
        """Requeue jobs of workers silent for `stalled_worker_timeout` s and prune them.

        A job recovered this way for the `max_recoveries`-th time ends failed (None: no bound).
        """
        return Op(
            "job_recover_stalled",
            {"stalled_seconds": float(stalled_worker_timeout), "max_recoveries": max_recoveries},
            "all",
            lambda rows: [(row["id"], Status(row["status"])) for row in rows],
        )

    recover_stalled_jobs, recover_stalled_jobs_async = paired(_recover_stalled_jobs)

    def _release_unknown_jobs(
        self, worker_id: int, known_ids: list[int]
    ) -> Op[list[tuple[int, Status]]]:
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
            "job_list_to_abort",
            {"worker_id": worker_id},
            "all",
            lambda rows: [r["id"] for r in rows],
        )

    list_jobs_to_abort, list_jobs_to_abort_async = paired(_list_jobs_to_abort)

    def _register_worker(
        self, name: str | None = None, host: str | None = None, pid: int | None = None
    ) -> Op[int]:
        """Register a worker; its id."""
        return Op(
            "worker_register", {"name": name, "host": host, "pid": pid}, "one", first_column("id")
        )

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

    # -- readiness (migration 0006) ------------------------------------------------
    def _promote_due_jobs(self, limit: int = 1000) -> Op[int]:
        """Make up to `limit` scheduled jobs whose time has come (database clock) claimable.

        The stager (stager.py) calls this in every worker; claims never look at
        scheduled jobs themselves. Returns how many were promoted.
        """
        return Op("job_promote_due", {"limit": int(limit)}, "one", first_column("promoted"))

    promote_due_jobs, promote_due_jobs_async = paired(_promote_due_jobs)

    def _database_now(self) -> Op[float]:
        """The database's clock, as Unix time: the one clock of every time decision."""
        return Op("database_now", {}, "one", lambda row: float(row["now"]))

    database_now, database_now_async = paired(_database_now)

    def _get_outcome_stats(self, minutes: int = 60) -> Op[list[dict[str, Any]]]:
        """Outcomes recorded per minute and queue over the last `minutes` (database clock):
        dicts of minute, queue_name, outcome (succeeded, failed, retried, ...) and count."""
        return Op("outcome_stats_recent", {"minutes": int(minutes)}, "all", list)

    get_outcome_stats, get_outcome_stats_async = paired(_get_outcome_stats)

    def _prune_outcome_stats(self, hours: float = OUTCOME_STATS_HOURS) -> Op[int]:
        """Forget per-minute outcome counts older than `hours`; how many rows went."""
        return Op("outcome_stats_prune", {"hours": int(hours)}, "one", first_column("deleted"))

    prune_outcome_stats, prune_outcome_stats_async = paired(_prune_outcome_stats)

    def _count_running_jobs_by_worker(self) -> Op[dict[int, int]]:
        """How many jobs each worker is running now (workers running none are absent)."""
        return Op(
            "worker_running_counts",
            {},
            "all",
            lambda rows: {int(row["worker_id"]): int(row["running"]) for row in rows},
        )

    count_running_jobs_by_worker, count_running_jobs_by_worker_async = paired(
        _count_running_jobs_by_worker
    )
