"""The tables of the in-memory connector, and what PostgreSQL does around them.

pcq_jobs, pcq_events, pcq_workers and pcq_periodic_defers as dicts behind one
lock, plus what the schema does by itself: the triggers (event history and
NOTIFY on every status change), the unique index on waiting jobs' queueing
locks, the queue-name check, the ids of an identity column. The queries
themselves are in in_memory_store.py.
"""

from __future__ import annotations

import datetime
import json
import threading
from collections.abc import Callable, Mapping
from typing import Any

from procrastinate_core import exceptions

QUEUEING_LOCK_INDEX = "pcq_jobs_queueing_lock_uniq"
FINAL_STATUSES = ("succeeded", "failed", "cancelled", "aborted")
#: entries kept in a job's error history (migration 0009)
ERROR_HISTORY = 50
_JOB_COLUMNS = (
    "id queue_name task_name priority lock queueing_lock args status scheduled_at attempts "
    "worker_id abort_requested created_at started_at finished_at result error trace_context"
).split()

Clock = Callable[[], datetime.datetime]
Notify = Callable[[str, str], None]


def utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def timestamp(value: datetime.datetime | str | None) -> datetime.datetime | None:
    """A timestamptz parameter: a datetime or an ISO string; naive means UTC."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=datetime.timezone.utc)
    return value


def after(now: datetime.datetime, seconds: float | None) -> datetime.datetime | None:
    """`now() + make_interval(secs => seconds)`: None when seconds is None (as NULL in SQL)."""
    return None if seconds is None else now + datetime.timedelta(seconds=seconds)


def minute_of(at: datetime.datetime) -> datetime.datetime:
    """The minute an outcome is counted in (pcq_outcome_stats' date_trunc('minute', ...))."""
    return at.replace(second=0, microsecond=0)


def _as_text(value: Any) -> str | None:
    return None if value is None else json.dumps(value)


class InMemoryTables:
    """The four tables as dicts, behind one lock, with the schema's triggers and constraints."""

    def __init__(self, clock: Clock, notify: Notify) -> None:
        self.clock = clock
        self.notify = notify
        self.lock = threading.RLock()
        self.reset()

    def reset(self) -> None:
        """Forget every job, event, worker and periodic tick (ids start again at 1)."""
        with self.lock:
            self.jobs: dict[int, dict[str, Any]] = {}
            #: pcq_outcome_stats: (minute, queue, outcome) -> count
            self.outcome_stats: dict[tuple[datetime.datetime, str, str], int] = {}
            self.events: list[dict[str, Any]] = []
            self.workers: dict[int, dict[str, Any]] = {}
            self.periodic_defers: dict[tuple[str, str, int], int | None] = {}
            self._next_job_id = 1
            self._next_event_id = 1
            self._next_worker_id = 1

    # -- what the triggers do ------------------------------------------------
    def _event(self, job: dict[str, Any], type_: str, worker_id: int | None = None) -> None:
        self.events.append(
            {
                "id": self._next_event_id,
                "job_id": job["id"],
                "type": type_,
                "attempt": job["attempts"],
                "at": self.clock(),
                "worker_id": worker_id,
            }
        )
        self._next_event_id += 1

    def _wake(self, queue: str) -> None:
        self.notify("pcq_any", "")
        self.notify(f"pcq_q_{queue}", "")

    def _inserted(self, job: dict[str, Any]) -> None:
        self._check_queueing_lock(job)
        job["waiting_for"] = self._wait_reason(job)
        if _is_ready(job):
            self._gate(job, None)  # flow control (#13): a paused queue or task holds it
        self.jobs[job["id"]] = job
        self._event(job, "deferred" if job["scheduled_at"] is None else "scheduled")
        if _is_ready(job):
            self._wake(job["queue_name"])
        if job["status"] == "todo" and job["waiting_for"] == "lock":
            self._settle(job["lock"])  # a head it makes ready wakes workers itself
        self._after_change(None, job)  # flow control (#13): concurrency slots

    def _update(self, job: dict[str, Any], **changes: Any) -> None:
        old = dict(job)
        new = {**job, **changes}
        if new["status"] == "todo" and old["status"] != "todo":
            self._check_queueing_lock(new)
        # the row trigger pcq_jobs_wait_reason_updated
        if (
            new["status"] == "todo"
            and (
                old["status"] != "todo"
                or new["lock"] != old["lock"]
                or new["scheduled_at"] != old["scheduled_at"]
            )
        ) or (new["status"] != "todo" and old["waiting_for"] is not None):
            new["waiting_for"] = changes["waiting_for"] = self._wait_reason(new)
        if _is_ready(new) and not _is_ready(old):
            self._gate(new, changes)  # flow control (#13): a paused queue or task holds it
        last_attempt = old["errors"][-1]["attempt"] if old["errors"] else None
        if changes.get("error") is not None and (
            changes["error"] != old["error"] or last_attempt != new["attempts"]
        ):
            # the row trigger pcq_jobs_error_history (migration 0009)
            error = changes["error"]
            entry = {
                "attempt": new["attempts"],
                "worker_id": new["worker_id"] if new["worker_id"] is not None else old["worker_id"],
                "at": self.clock().isoformat(),
                **(error if isinstance(error, dict) else {"message": error}),
            }
            changes["errors"] = [*old["errors"][-(ERROR_HISTORY - 1) :], entry]
        job.update(changes)
        if new["status"] != old["status"]:
            if new["status"] == "doing":
                kind = "started"
            elif new["status"] == "todo" and old["status"] == "doing":
                kind = "recovered" if new["worker_id"] is None else "deferred_for_retry"
            elif new["status"] == "todo":
                kind = "retried"
            else:
                kind = new["status"]
            self._event(
                job, kind, new["worker_id"] if new["worker_id"] is not None else old["worker_id"]
            )
        if new["abort_requested"] and not old["abort_requested"]:
            self._event(job, "abort_requested", new["worker_id"])
            if new["status"] == "doing":
                self.notify("pcq_abort", str(job["id"]))
        for lock in self._locks_to_settle(old, new):
            self._settle(lock)
        self._after_change(old, new)  # flow control (#13): concurrency slots
        if _is_ready(new) and not _is_ready(old):
            self._wake(new["queue_name"])

    def _delete(self, job_id: int) -> None:
        old = self.jobs.pop(job_id)
        self.events = [e for e in self.events if e["job_id"] != job_id]
        if old["lock"] is not None and _holds_or_heads(old):
            self._settle(old["lock"])
        self._after_change(old, None)  # flow control (#13): concurrency slots

    # -- flow control hooks (migration 0008; in_memory_flow.py fills them) -------
    def _gate(self, new: dict[str, Any], changes: dict[str, Any] | None) -> None:
        """The pause gate, for a job becoming ready (changes: the update's, or None)."""

    def _after_change(self, old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> None:
        """After a job was inserted (old None), updated, or deleted (new None)."""

    # -- readiness (migration 0006) ------------------------------------------
    def _wait_reason(self, job: Mapping[str, Any]) -> str | None:
        """pcq_job_wait_reason: what a job entering `todo` waits for."""
        if job["status"] != "todo":
            return None
        if job["scheduled_at"] is not None and job["scheduled_at"] > self.clock():
            return "schedule"
        return "lock" if job["lock"] is not None else None

    @staticmethod
    def _locks_to_settle(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
        """The locks pcq_record_updated_jobs settles for one changed row."""
        locks = []
        if (
            old["lock"] is not None
            and _holds_or_heads(old)
            and (
                new["status"] not in ("todo", "doing")
                or (old["status"] == "doing" and new["status"] == "todo")
                or new["lock"] != old["lock"]
                or new["waiting_for"] == "schedule"
            )
        ):
            locks.append(old["lock"])
        if (
            new["lock"] is not None
            and new["status"] == "todo"
            and new["waiting_for"] != "schedule"
            and (
                old["status"] != "todo"
                or old["waiting_for"] == "schedule"
                or old["lock"] != new["lock"]
                or old["priority"] != new["priority"]
            )
        ):
            locks.append(new["lock"])
        return sorted(set(locks))

    def _settle(self, lock: str) -> None:
        """pcq_settle_locks for one lock: give it to its best job if nobody holds it."""
        jobs = [j for j in self.jobs.values() if j["lock"] == lock]
        if any(j["status"] == "doing" for j in jobs):
            return
        heads = [j for j in jobs if j["status"] == "todo" and j["waiting_for"] in (None, "pause")]
        waiting = [j for j in jobs if j["status"] == "todo" and j["waiting_for"] == "lock"]
        if not waiting:
            return
        best = min(waiting, key=lambda j: (-j["priority"], j["id"]))
        if heads:
            head = heads[0]
            if (-head["priority"], head["id"]) < (-best["priority"], best["id"]):
                return
            self._update(head, waiting_for="lock")
        self._update(best, waiting_for=None)

    def _queueing_lock_taken(self, queueing_lock: str | None, but: int | None = None) -> bool:
        return queueing_lock is not None and any(
            j["queueing_lock"] == queueing_lock and j["status"] == "todo" and j["id"] != but
            for j in self.jobs.values()
        )

    def _check_queueing_lock(self, job: dict[str, Any]) -> None:
        if self._queueing_lock_taken(job["queueing_lock"], but=job["id"]):
            raise self._unique_violation(job["queueing_lock"])

    @staticmethod
    def _unique_violation(queueing_lock: str) -> exceptions.UniqueViolation:
        """What PostgreSQL's unique index on waiting jobs' queueing_lock raises, translated."""
        return exceptions.UniqueViolation(
            f'duplicate key value violates unique constraint "{QUEUEING_LOCK_INDEX}": '
            f"Key (queueing_lock)=({queueing_lock}) already exists.",
            constraint_name=QUEUEING_LOCK_INDEX,
        )

    def _new_job(self, record: Mapping[str, Any], job_id: int | None = None) -> dict[str, Any]:
        queue = record["queue_name"]
        if not isinstance(queue, str) or not 1 <= len(queue.encode()) <= 50:
            raise exceptions.ConnectorException(
                f'CheckViolation: new row for relation "pcq_jobs" violates check constraint '
                f'"pcq_jobs_queue_name_length" (queue {queue!r} must be 1 to 50 bytes)'
            )
        if job_id is None:
            job_id = self._next_job_id
            self._next_job_id += 1
        return {
            "id": job_id,
            "queue_name": queue,
            "task_name": record["task_name"],
            "priority": record.get("priority") or 0,
            "lock": record.get("lock"),
            "queueing_lock": record.get("queueing_lock"),
            "args": record.get("args") if record.get("args") is not None else {},
            "status": "todo",
            "scheduled_at": timestamp(record.get("scheduled_at"))
            or after(self.clock(), record.get("schedule_in_seconds")),
            "attempts": 0,
            "worker_id": None,
            "abort_requested": False,
            "created_at": self.clock(),
            "started_at": None,
            "finished_at": None,
            "result": None,
            "error": None,
            "waiting_for": None,
            "errors": [],
            "trace_context": record.get("trace_context"),  # 0010
        }

    @staticmethod
    def job_row(job: Mapping[str, Any]) -> dict[str, Any]:
        """A job as job_fetch_many / job_list return it (JSON columns as text)."""
        row = {column: job[column] for column in _JOB_COLUMNS}
        row["args"] = json.dumps(job["args"])
        row["result"] = _as_text(job["result"])
        row["error"] = _as_text(job["error"])
        row["trace_context"] = _as_text(job["trace_context"])
        return row


def _is_ready(job: Mapping[str, Any]) -> bool:
    """A claim candidate: `todo` and waiting for nothing."""
    return job["status"] == "todo" and job.get("waiting_for") is None


def _holds_or_heads(job: Mapping[str, Any]) -> bool:
    """Runs a job of its lock, or is the lock's ready (or ready but paused, 0008) head."""
    return job["status"] == "doing" or (
        job["status"] == "todo" and job.get("waiting_for") in (None, "pause")
    )
