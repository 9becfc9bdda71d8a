"""Every named query of queries.sql written in Python, for the in-memory connector.

One method per query, named like it (the read-only ones in in_memory_reads.py,
flow control's in in_memory_flow.py), with the SQL's semantics: the claim
order and lock rule of job_fetch_many, the fencing of job_finish_many, the
queueing-lock unique index, the event history and notifications written by
the triggers, stalled-job recovery, periodic ticks. Values come in and go
out as the real connectors pass them: JSON as text, rows as dicts.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping
from typing import Any

from procrastinate_core import sql
from procrastinate_core.connectors.in_memory_flow import FlowTables
from procrastinate_core.connectors.in_memory_reads import InMemoryReads
from procrastinate_core.connectors.in_memory_tables import (
    FINAL_STATUSES,
    Clock,
    Notify,
    after,
    minute_of,
    timestamp,
    utc_now,
)

__all__ = ["Clock", "InMemoryStore", "Notify", "utc_now"]


class InMemoryStore(FlowTables, InMemoryReads):  # flow control: in_memory_flow.py; reads
    """One method per named query, named like it; `run(name, params)` dispatches."""

    def run(self, name: str, params: Mapping[str, Any] | None) -> list[dict[str, Any]]:
        """Run the named query; its rows (possibly none)."""
        sql.query(name)  # a name unknown to queries.sql is a programming error, as for real
        method = getattr(self, name, None)
        if method is None:
            raise NotImplementedError(
                f"InMemoryConnector does not implement query {name!r} yet; add "
                f"InMemoryStore.{name} in procrastinate_core/connectors/in_memory_store.py"
            )
        with self.lock:
            result: list[dict[str, Any]] = method(dict(params or {}))
        return result

    # -- jobs ----------------------------------------------------------------
    def job_defer_many(self, p: dict[str, Any]) -> list[dict[str, Any]]:
        # One statement: every check passes before any row goes in (all or nothing).
        # Ids are taken row by row until a row fails, as PostgreSQL's sequence does.
        jobs = []
        seen: set[str] = set()
        for record in json.loads(p["jobs"]):
            job = self._new_job(record)
            jobs.append(job)
            queueing_lock = job["queueing_lock"]
            if queueing_lock is not None:
                if queueing_lock in seen or self._queueing_lock_taken(queueing_lock):
                    # pcq_defer_jobs: nothing inserted, one row saying why (never raises)
                    detail = f"Key (queueing_lock)=({queueing_lock}) already exists."
                    return [{"id": None, "conflict": detail}]
                seen.add(queueing_lock)
        for job in jobs:
            self._inserted(job)
        return [{"id": job["id"], "conflict": None} for job in jobs]

    # No WAL here: a non-durable defer is a defer (durable=False, docs/durability.md).
    job_defer_many_nondurable = job_defer_many
    job_insert_many = job_defer_many  # the same rows; only the server's plan differs
    job_insert_many_nondurable = job_defer_many

    def job_fetch_many(self, p: dict[str, Any]) -> list[dict[str, Any]]:
        now = self.clock()
        queues = p.get("queues")
        chosen = sorted(
            (
                j
                for j in self.jobs.values()
                if j["status"] == "todo"
                and j["waiting_for"] is None
                and (queues is None or j["queue_name"] in queues)
            ),
            key=lambda j: (-j["priority"], j["id"]),
        )[: p["limit"]]
        for job in chosen:
            self._update(
                job,
                status="doing",
                worker_id=p["worker_id"],
                attempts=job["attempts"] + 1,
                started_at=now,
            )
        return [self.job_row(job) for job in chosen]

    job_fetch_many_nondurable = job_fetch_many  # durability is the server's business

    def job_promote_due(self, p: dict[str, Any]) -> list[dict[str, Any]]:
        now = self.clock()
        due = sorted(
            (
                j
                for j in self.jobs.values()
                if j["status"] == "todo"
                and j["waiting_for"] == "schedule"
                and j["scheduled_at"] is not None
                and j["scheduled_at"] <= now
            ),
            key=lambda j: j["scheduled_at"],
        )[: p["limit"]]
        for job in due:
            self._update(job, waiting_for=self._due_reason(job))
        return [{"promoted": len(due)}]

    def job_finish_many(self, p: dict[str, Any]) -> list[dict[str, Any]]:
        now = self.clock()
        done = []
        for o in json.loads(p["outcomes"]):
            job = self.jobs.get(o["id"])
            if (
                job is None
                or job["status"] != "doing"
                or job["worker_id"] != o["worker_id"]
                or job["attempts"] != o["attempt"]
            ):
                continue  # fenced out: the worker lost this job
            done.append({"id": job["id"]})
            if o.get("delete_job"):
                self._count_outcome(now, job["queue_name"], o["status"])
                self._delete(job["id"])
                continue
            retry = o["status"] == "todo"
            status = o["status"]
            if retry and self._queueing_lock_taken(job["queueing_lock"], but=job["id"]):
                status = "failed"
            self._update(
                job,
                status=status,
                finished_at=None if retry else now,
                scheduled_at=(timestamp(o.get("retry_at")) or after(now, o.get("retry_in")))
                if retry
                else job["scheduled_at"],
                priority=o["priority"] if o.get("priority") is not None else job["priority"],
                queue_name=o.get("queue_name") or job["queue_name"],
                lock=o["lock"] if o.get("lock") is not None else job["lock"],
                abort_requested=False,
                result=o.get("result"),
                error=o.get("error"),
            )
            self._count_outcome(now, job["queue_name"], job["status"])
        return done

    def _count_outcome(self, now: datetime.datetime, queue: str, status: str) -> None:
        """The pcq_outcome_stats upsert of job_finish_many (one backend here)."""
        key = (minute_of(now), queue, "retried" if status == "todo" else status)
        self.outcome_stats[key] = self.outcome_stats.get(key, 0) + 1

    def outcome_stats_prune(self, p: dict[str, Any]) -> list[dict[str, Any]]:
        before = self.clock() - datetime.timedelta(hours=int(p["hours"]))
        doomed = [key for key in self.outcome_stats if key[0] < before]
        for key in doomed:
            del self.outcome_stats[key]
        return [{"deleted": len(doomed)}]

    def job_recover_stalled(self, p: dict[str, Any]) -> list[dict[str, Any]]:
        now = self.clock()
        limit = now - datetime.timedelta(seconds=float(p["stalled_seconds"]))
        stale = {w for w, row in self.workers.items() if row["last_heartbeat"] < limit}
        recovered = []
        for job in list(self.jobs.values()):
            if job["status"] != "doing":
                continue
            if (
                job["worker_id"] is not None
                and job["worker_id"] in self.workers
                and job["worker_id"] not in stale
            ):
                continue
            recoveries = job.get("stalled_recoveries", 0) + 1
            poison = p.get("max_recoveries") is not None and recoveries >= p["max_recoveries"]
            error = job.get("error")
            if job["abort_requested"]:
                status = "aborted"
            elif poison:
                status = "failed"
                error = {
                    "type": "procrastinate_core.exceptions.PoisonJob",
                    "message": f"its worker died while running it {recoveries} times "
                    f"(max_stalled_recoveries={p['max_recoveries']}): the task probably kills its "
                    "process (os._exit, a crash in a C extension, the OOM killer); fix it, then "
                    "retry the job",
                    "traceback": "",
                }
            elif self._queueing_lock_taken(job["queueing_lock"], but=job["id"]):
                status = "cancelled"
            else:
                status = "todo"
            self._update(
                job,
                status=status,
                worker_id=None,
                finished_at=None if status == "todo" else now,
                error=error,
                stalled_recoveries=recoveries,
            )
            recovered.append({"id": job["id"], "status": status})
        for worker_id in stale:
            del self.workers[worker_id]
        return recovered

    def job_release_unknown(self, p: dict[str, Any]) -> list[dict[str, Any]]:
        released = []
        for job in list(self.jobs.values()):
            if (
                job["status"] != "doing"
                or job["worker_id"] != p["worker_id"]
                or job["id"] in p["known_ids"]
            ):
                continue
            if job["abort_requested"]:
                status = "aborted"
            elif self._queueing_lock_taken(job["queueing_lock"], but=job["id"]):
                status = "cancelled"
            else:
                status = "todo"
            self._update(
                job,
                status=status,
                worker_id=None,
                finished_at=None if status == "todo" else self.clock(),
            )
            released.append({"id": job["id"], "status": status})
        return released

    def job_cancel(self, p: dict[str, Any]) -> list[dict[str, Any]]:
        job = self.jobs.get(p["job_id"])
        if job is None:
            return []
        if job["status"] == "todo":
            self._update(job, status="cancelled", finished_at=self.clock(), abort_requested=False)
        elif job["status"] == "doing" and p.get("abort"):
            self._update(job, abort_requested=True)
        else:
            return []
        return [{"id": job["id"], "status": job["status"]}]

    def job_delete_waiting(self, p: dict[str, Any]) -> list[dict[str, Any]]:
        job = self.jobs.get(p["job_id"])
        if job is None or job["status"] != "todo":
            return []
        self._delete(job["id"])
        return [{"id": job["id"]}]

    def job_delete_finished(self, p: dict[str, Any]) -> list[dict[str, Any]]:
        job = self.jobs.get(p["job_id"])
        if job is None or job["status"] not in FINAL_STATUSES:
            return []
        self._delete(job["id"])
        return [{"id": job["id"]}]

    def job_retry(self, p: dict[str, Any]) -> list[dict[str, Any]]:
        job = self.jobs.get(p["job_id"])
        if job is None or job["status"] not in FINAL_STATUSES:
            return []
        if p.get("statuses") is not None and job["status"] not in p["statuses"]:
            return []
        self._update(
            job,
            status="todo",
            scheduled_at=timestamp(p.get("retry_at")),
            priority=p["priority"] if p.get("priority") is not None else job["priority"],
            queue_name=p.get("queue_name") or job["queue_name"],
            lock=p["lock"] if p.get("lock") is not None else job["lock"],
            abort_requested=False,
            worker_id=None,
            started_at=None,
            finished_at=None,
        )
        return [{"id": job["id"]}]

    def job_delete_old(self, p: dict[str, Any]) -> list[dict[str, Any]]:
        limit = self.clock() - datetime.timedelta(hours=float(p["nb_hours"]))
        doomed = [
            job["id"]
            for job in sorted(self.jobs.values(), key=lambda j: j["finished_at"] or limit)
            if job["status"] in p["statuses"]
            and job["finished_at"] is not None
            and job["finished_at"] < limit
            and (p.get("queue") is None or job["queue_name"] == p["queue"])
        ][: p["batch_size"]]
        for job_id in doomed:
            self._delete(job_id)
        return [{"deleted": len(doomed)}]

    # -- workers -------------------------------------------------------------
    def worker_register(self, p: dict[str, Any]) -> list[dict[str, Any]]:
        worker_id = self._next_worker_id
        self._next_worker_id += 1
        now = self.clock()
        self.workers[worker_id] = {
            "id": worker_id,
            "name": p.get("name"),
            "host": p.get("host"),
            "pid": p.get("pid"),
            "started_at": now,
            "last_heartbeat": now,
        }
        return [{"id": worker_id}]

    def worker_heartbeat(self, p: dict[str, Any]) -> list[dict[str, Any]]:
        worker = self.workers.get(p["worker_id"])
        if worker is None:
            return []
        worker["last_heartbeat"] = self.clock()
        return [{"id": worker["id"]}]

    def worker_unregister(self, p: dict[str, Any]) -> list[dict[str, Any]]:
        self.workers.pop(p["worker_id"], None)
        return []

    # -- periodic ticks ----------------------------------------------------------
    def periodic_defer(self, p: dict[str, Any]) -> list[dict[str, Any]]:
        key = (p["task_name"], p.get("periodic_id") or "", int(p["defer_timestamp"]))
        if key in self.periodic_defers:
            return []
        job_id = self._next_job_id
        self._next_job_id += 1
        self.periodic_defers[key] = job_id
        if self._queueing_lock_taken(p.get("queueing_lock")):
            return []
        record = {**p, "args": json.loads(p["args"]) if p.get("args") is not None else {}}
        job = self._new_job(record, job_id=job_id)
        for column in (
            "concurrency_key",
            "concurrency_limit",
            "rate_key",
            "rate_limit",
            "rate_period",
        ):
            job[column] = p.get(column)  # flow control (#13)
        self._inserted(job)
        return [{"id": job_id}]

    def periodic_defers_prune(self, p: dict[str, Any]) -> list[dict[str, Any]]:
        doomed = [key for key in self.periodic_defers if key[2] < p["before"]]
        for key in doomed:
            del self.periodic_defers[key]
        return [{"deleted": len(doomed)}]

    # -- schema: always installed and current --------------------------------------
    def schema_is_installed(self, p: dict[str, Any]) -> list[dict[str, Any]]:
        return [{"installed": True}]

    def schema_versions_applied(self, p: dict[str, Any]) -> list[dict[str, Any]]:
        return [{"version": m.version} for m in sql.migrations()]

    # -- the clock ------------------------------------------------------------------
    def database_now(self, p: dict[str, Any]) -> list[dict[str, Any]]:
        return [{"now": self.clock().timestamp()}]
