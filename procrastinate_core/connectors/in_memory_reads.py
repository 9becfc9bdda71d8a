"""The read-only queries of queries.sql written in Python, for the in-memory connector.

The twin of job_reads.py's queries (lists, counts, status, history, queue and
worker stats), split from in_memory_store.py, which keeps the queries that
change rows. Values go out as the real connectors return them: rows as dicts,
JSON as text.
"""

from __future__ import annotations

import datetime
import json
from typing import Any

from procrastinate_core.connectors.in_memory_tables import InMemoryTables, minute_of


class InMemoryReads(InMemoryTables):
    """One method per read-only query, named like it."""

    def outcome_stats_recent(self, p: dict[str, Any]) -> list[dict[str, Any]]:
        since = minute_of(self.clock()) - datetime.timedelta(minutes=int(p["minutes"]))
        return [
            {"minute": minute, "queue_name": queue, "outcome": outcome, "count": count}
            for (minute, queue, outcome), count in sorted(self.outcome_stats.items())
            if minute > since
        ]

    def job_errors_list(self, p: dict[str, Any]) -> list[dict[str, Any]]:
        job = self.jobs.get(p["job_id"])
        return [] if job is None else [{"errors": json.dumps(job["errors"])}]

    def job_get_status(self, p: dict[str, Any]) -> list[dict[str, Any]]:
        job = self.jobs.get(p["job_id"])
        return [] if job is None else [{"status": job["status"]}]

    def job_list(self, p: dict[str, Any]) -> list[dict[str, Any]]:
        filters = {
            "id": "id",
            "queue": "queue_name",
            "task": "task_name",
            "status": "status",
            "lock": "lock",
            "queueing_lock": "queueing_lock",
            "worker_id": "worker_id",
        }
        rows = [
            self.job_row(job)
            for job_id, job in sorted(self.jobs.items())
            if all(p.get(k) is None or job[c] == p[k] for k, c in filters.items())
        ]
        return rows if p.get("limit") is None else rows[: p["limit"]]

    job_list_unfinished = job_list  # the same filters; only the plan differs

    def job_table_rows(self, p: dict[str, Any]) -> list[dict[str, Any]]:
        # No planner statistics here, and counting is cheap: count_job_rows stays exact.
        return [{"rows": None}]

    def job_count_by(self, p: dict[str, Any]) -> list[dict[str, Any]]:
        column = {"queue": "queue_name", "task": "task_name"}.get(p["group_by"], "lock")
        filters = {"queue": "queue_name", "task": "task_name", "status": "status", "lock": "lock"}
        counts: dict[tuple[Any, str], int] = {}
        for job in self.jobs.values():
            if all(p.get(k) is None or job[c] == p[k] for k, c in filters.items()):
                key = (job[column], job["status"])
                counts[key] = counts.get(key, 0) + 1
        order = sorted(counts, key=lambda k: (k[0] is None, k[0] or "", k[1]))
        return [
            {"name": name, "status": status, "count": counts[(name, status)]}
            for name, status in order
        ]

    def job_count_by_sampled(self, p: dict[str, Any]) -> list[dict[str, Any]]:
        # A sample of every row: the counts are exact, the finished ones marked as sampled.
        return [
            {**row, "estimated": row["status"] not in ("todo", "doing")}
            for row in self.job_count_by(p)
        ]

    def job_events_list(self, p: dict[str, Any]) -> list[dict[str, Any]]:
        return [
            {k: e[k] for k in ("job_id", "type", "attempt", "at", "worker_id")}
            for e in self.events
            if e["job_id"] == p["job_id"]
        ]

    def job_list_to_abort(self, p: dict[str, Any]) -> list[dict[str, Any]]:
        return [
            {"id": job_id}
            for job_id, job in sorted(self.jobs.items())
            if job["status"] == "doing"
            and job["abort_requested"]
            and job["worker_id"] == p["worker_id"]
        ]

    def worker_running_counts(self, p: dict[str, Any]) -> list[dict[str, Any]]:
        counts: dict[int, int] = {}
        for job in self.jobs.values():
            if job["status"] == "doing" and job["worker_id"] is not None:
                counts[job["worker_id"]] = counts.get(job["worker_id"], 0) + 1
        return [{"worker_id": w, "running": n} for w, n in sorted(counts.items())]

    def worker_list(self, p: dict[str, Any]) -> list[dict[str, Any]]:
        now = self.clock()
        return [
            {**row, "heartbeat_age": (now - row["last_heartbeat"]).total_seconds()}
            for _, row in sorted(self.workers.items())
        ]

    def queue_stats(self, p: dict[str, Any]) -> list[dict[str, Any]]:
        now = self.clock()
        queues: dict[str, dict[str, Any]] = {}
        for job in self.jobs.values():
            if job["status"] not in ("todo", "doing"):
                continue
            row = queues.setdefault(
                job["queue_name"],
                {
                    "queue_name": job["queue_name"],
                    "todo": 0,
                    "doing": 0,
                    "oldest_ready_age": None,
                    "oldest_running_age": None,
                },
            )
            row[job["status"]] += 1
            if job["status"] == "todo":
                due = job["waiting_for"] is None or (
                    job["waiting_for"] == "schedule" and job["scheduled_at"] <= now
                )
                if due:
                    due_at = job["scheduled_at"] or job["created_at"]
                    age = (now - due_at).total_seconds()
                    row["oldest_ready_age"] = max(row["oldest_ready_age"] or age, age)
            elif job["started_at"] is not None:
                age = (now - job["started_at"]).total_seconds()
                row["oldest_running_age"] = max(row["oldest_running_age"] or age, age)
        return [queues[name] for name in sorted(queues)]

    def job_list_stalled(self, p: dict[str, Any]) -> list[dict[str, Any]]:
        limit = self.clock() - datetime.timedelta(seconds=float(p["stalled_seconds"]))
        alive = {w for w, row in self.workers.items() if row["last_heartbeat"] >= limit}
        return [
            self.job_row(job)
            for _, job in sorted(self.jobs.items())
            if job["status"] == "doing"
            and job["worker_id"] not in alive
            and p.get("queue") in (None, job["queue_name"])
            and p.get("task_name") in (None, job["task_name"])
        ]
