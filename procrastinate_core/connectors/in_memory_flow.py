"""Flow control (migration 0008) for the in-memory connector: limits, pauses, unique jobs.

What 0008's functions and triggers do, in Python, on InMemoryTables' dicts:
the 'limit' waiting reason and pcq_settle_limits (slots given to the best
waiting jobs of a key when a holder leaves or a job enters it), the pause
gate and pcq_set_paused, and pcq_defer_flow (unique keys with on_conflict,
per item; all_or_nothing inserts nothing when one conflicts). The named
queries job_defer_flow_many, paused_set and paused_list are methods here;
InMemoryStore inherits them.
"""

from __future__ import annotations

import copy
import datetime
import json
from collections.abc import Mapping
from typing import Any

from procrastinate_core import exceptions
from procrastinate_core.connectors.in_memory_tables import InMemoryTables, timestamp

_HOLDING_WAITS = (None, "pause")


def _holds_slot(job: Mapping[str, Any] | None) -> bool:
    """Runs, is ready, or is ready but paused: one of its key's slots is taken."""
    return (
        job is not None
        and job.get("concurrency_key") is not None
        and (
            job["status"] == "doing"
            or (job["status"] == "todo" and job.get("waiting_for") in _HOLDING_WAITS)
        )
    )


def _waits_for_slot(job: Mapping[str, Any] | None) -> bool:
    return job is not None and job["status"] == "todo" and job.get("waiting_for") == "limit"


class FlowTables(InMemoryTables):
    """InMemoryTables plus pcq_paused and what migration 0008's triggers do."""

    def reset(self) -> None:
        with self.lock:
            super().reset()
            #: pcq_paused: (kind, name) -> paused_at
            self.paused: dict[tuple[str, str], datetime.datetime] = {}

    # -- the schema's behaviour --------------------------------------------------
    def _wait_reason(self, job: Mapping[str, Any]) -> str | None:
        reason = super()._wait_reason(job)
        if reason is None and job["status"] == "todo" and job.get("concurrency_key") is not None:
            return "limit"
        return reason

    def _is_paused(self, job: Mapping[str, Any]) -> bool:
        return ("queue", job["queue_name"]) in self.paused or (
            "task",
            job["task_name"],
        ) in self.paused

    def _gate(self, new: dict[str, Any], changes: dict[str, Any] | None) -> None:
        if self._is_paused(new):
            new["waiting_for"] = "pause"
            if changes is not None:
                changes["waiting_for"] = "pause"

    def _after_change(self, old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> None:
        keys = set()
        if _holds_slot(old) and not _holds_slot(new):
            keys.add(old["concurrency_key"])  # type: ignore[index]
        if _waits_for_slot(new) and not _waits_for_slot(old):
            keys.add(new["concurrency_key"])  # type: ignore[index]
        for key in sorted(keys):
            self._settle_limit(key)

    def _settle_limit(self, key: str) -> None:
        """pcq_settle_limits for one key."""
        waiting = sorted(
            (
                j
                for j in self.jobs.values()
                if j.get("concurrency_key") == key and _waits_for_slot(j)
            ),
            key=lambda j: (-j["priority"], j["id"]),
        )
        if not waiting:
            return
        held = sum(
            1 for j in self.jobs.values() if j.get("concurrency_key") == key and _holds_slot(j)
        )
        for job in waiting[: max(waiting[0]["concurrency_limit"] - held, 0)]:
            self._update(job, waiting_for=None)

    # -- unique jobs ---------------------------------------------------------------
    def _unique_conflict(self, item: Mapping[str, Any]) -> dict[str, Any] | None:
        key = item.get("unique_key")
        if key is None:
            return None
        states = item.get("unique_states") or []
        seconds = item.get("unique_seconds")
        since = None if seconds is None else self.clock() - datetime.timedelta(seconds=seconds)
        found = [
            j
            for j in self.jobs.values()
            if j.get("unique_key") == key
            and j["status"] in states
            and (
                j["status"] in ("todo", "doing")
                or since is None
                or (j["finished_at"] is not None and j["finished_at"] >= since)
            )
        ]
        found.sort(key=lambda j: (j["status"] == "todo", j["id"]))
        return found[0] if found else None

    def _defer_flow_item(self, ord_: int, item: dict[str, Any]) -> dict[str, Any]:
        found = self._unique_conflict(item)
        if found is not None and item.get("on_conflict") == "ignore":
            return {
                "ord": ord_,
                "id": found["id"],
                "outcome": "ignored",
                "conflict_id": found["id"],
            }
        if found is not None and (
            item.get("on_conflict") != "replace" or found["status"] != "todo"
        ):
            return {"ord": ord_, "id": None, "outcome": "conflict", "conflict_id": found["id"]}
        if found is not None:
            for job in list(self.jobs.values()):
                if job.get("unique_key") == item["unique_key"] and job["status"] == "todo":
                    self._update(job, status="cancelled", finished_at=self.clock())
        job = self._new_job(item)
        job["scheduled_at"] = timestamp(item.get("scheduled_at"))
        job["concurrency_key"] = item.get("concurrency_key")
        job["concurrency_limit"] = item.get("concurrency_limit")
        job["unique_key"] = item.get("unique_key")
        self._inserted(job)
        outcome = "inserted" if found is None else "replaced"
        return {
            "ord": ord_,
            "id": job["id"],
            "outcome": outcome,
            "conflict_id": None if found is None else found["id"],
        }

    # -- named queries ----------------------------------------------------------------
    def job_defer_flow_many(self, p: dict[str, Any]) -> list[dict[str, Any]]:
        items = json.loads(p["jobs"])
        # One statement: an error (a taken queueing lock) or an all-or-nothing
        # conflict undoes the whole call; notifications go out only if it stands.
        saved = (copy.deepcopy(self.jobs), list(self.events), self._next_event_id)
        notify, sent = self.notify, []
        self.notify = lambda channel, payload: sent.append((channel, payload))
        try:
            rows = []
            for ord_, item in enumerate(items, start=1):
                row = self._defer_flow_item(ord_, item)
                rows.append(row)
                if row["outcome"] == "conflict" and p.get("all_or_nothing"):
                    self.jobs, self.events, self._next_event_id = saved
                    return [
                        {
                            "ord": n,
                            "id": None,
                            "outcome": "conflict" if n == ord_ else "skipped",
                            "conflict_id": row["conflict_id"] if n == ord_ else None,
                        }
                        for n in range(1, len(items) + 1)
                    ]
        except exceptions.UniqueViolation as exc:
            # pcq_defer_flow_guarded: a held queueing lock inserts nothing and says so
            self.jobs, self.events, self._next_event_id = saved
            return [
                {
                    "ord": n,
                    "id": None,
                    "outcome": "queueing_lock",
                    "conflict_id": None,
                    "conflict": str(exc),
                }
                for n in range(1, len(items) + 1)
            ]
        except BaseException:
            self.jobs, self.events, self._next_event_id = saved
            raise
        finally:
            self.notify = notify
        for channel, payload in sent:
            notify(channel, payload)
        return rows

    def paused_set(self, p: dict[str, Any]) -> list[dict[str, Any]]:
        kind, name, batch = p["kind"], p["name"], p["batch"]
        column = "queue_name" if kind == "queue" else "task_name"
        if p["paused"]:
            self.paused.setdefault((kind, name), self.clock())
        else:
            self.paused.pop((kind, name), None)
        wanted = None if p["paused"] else "pause"
        chosen = [
            job
            for job in sorted(self.jobs.values(), key=lambda j: j["id"])
            if job[column] == name
            and job["status"] == "todo"
            and job["waiting_for"] == wanted
            and (p["paused"] or not self._is_paused(job))  # still held by its other kind
        ][:batch]
        for job in chosen:
            self._update(job, waiting_for="pause" if p["paused"] else None)
        return [{"changed": len(chosen)}]

    def paused_list(self, p: dict[str, Any]) -> list[dict[str, Any]]:
        return [
            {"kind": kind, "name": name, "paused_at": at}
            for (kind, name), at in sorted(self.paused.items())
        ]
