"""Flow control (migrations 0008, 0012) for the in-memory connector: limits, pauses,
unique jobs, rate limits.

What 0008's functions and triggers do, in Python, on InMemoryTables' dicts:
the 'limit' waiting reason and pcq_settle_limits (slots given to the best
waiting jobs of a key when a holder leaves or a job enters it), the pause
gate and pcq_set_paused, and pcq_defer_flow (unique keys with on_conflict,
per item; all_or_nothing inserts nothing when one conflicts); 0012's 'rate'
waiting reason, pcq_rate_starts, pcq_rate_keys and pcq_settle_rates (with 0016's
order for a job with both limits: the rate grant, then a slot). The
named queries job_defer_flow_many, periodic_defer_flow, paused_set, paused_list,
job_promote_rate and rate_starts_prune are methods here; InMemoryStore
inherits them.
"""

from __future__ import annotations

import copy
import datetime
import json
from collections.abc import Mapping
from typing import Any

from procrastinate_core import exceptions
from procrastinate_core.connectors.in_memory_tables import InMemoryTables

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


def _granted(job: Mapping[str, Any] | None) -> bool:
    """Granted a start and not claimed yet (ready, paused, or waiting for a slot: 0016)."""
    return (
        job is not None
        and job.get("rate_key") is not None
        and job["status"] == "todo"
        and job.get("waiting_for") in (*_HOLDING_WAITS, "limit")
    )


def _waits_for_rate(job: Mapping[str, Any] | None) -> bool:
    return job is not None and job["status"] == "todo" and job.get("waiting_for") == "rate"


class FlowTables(InMemoryTables):
    """InMemoryTables plus pcq_paused and what migration 0008's triggers do."""

    def reset(self) -> None:
        with self.lock:
            super().reset()
            #: pcq_paused: (kind, name) -> paused_at
            self.paused: dict[tuple[str, str], datetime.datetime] = {}
            #: pcq_rate_starts: (rate_key, started_at, expires_at, job_id)
            self.rate_starts: list[tuple[str, datetime.datetime, datetime.datetime, int]] = []
            #: pcq_rate_keys: rate_key -> next_at
            self.rate_keys: dict[str, datetime.datetime] = {}

    # -- the schema's behaviour --------------------------------------------------
    def _wait_reason(self, job: Mapping[str, Any]) -> str | None:
        reason = super()._wait_reason(job)
        # the rate grant first, then a slot (migration 0016)
        if reason is None and job["status"] == "todo" and job.get("rate_key") is not None:
            return "rate"
        if reason is None and job["status"] == "todo" and job.get("concurrency_key") is not None:
            return "limit"
        return reason

    @staticmethod
    def _due_reason(job: Mapping[str, Any]) -> str | None:
        """What job_promote_due gives a due job: its lock, slot or rate grant to wait for."""
        if job["lock"] is not None:
            return "lock"
        if job.get("rate_key") is not None:
            return "rate"
        return "limit" if job.get("concurrency_key") is not None else None

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
        # 0012's rate triggers on insert, update and delete (0017 and 0019 fold the
        # insert and delete ones into pcq_record_inserted_jobs / pcq_forget_deleted_jobs)
        if (
            new is not None
            and new["status"] == "doing"
            and (old is None or old["status"] != "doing")
        ):
            if new.get("rate_key") is not None:
                started = new["started_at"]
                expires = started + datetime.timedelta(seconds=new["rate_period"])
                self.rate_starts.append((new["rate_key"], started, expires, new["id"]))
        rate_keys = set()
        if _granted(old) and not (
            (new is not None and new["status"] == "doing")
            or (_granted(new) and new["rate_key"] == old["rate_key"])  # type: ignore[index]
        ):
            rate_keys.add(old["rate_key"])  # type: ignore[index]
        if _waits_for_rate(new) and not (
            _waits_for_rate(old) and old["rate_key"] == new["rate_key"]  # type: ignore[index]
        ):
            rate_keys.add(new["rate_key"])  # type: ignore[index]
        for key in sorted(rate_keys):
            self._settle_rate(key)

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

    def _settle_rate(self, key: str) -> int:
        """pcq_settle_rates for one key; how many jobs it granted."""
        waiting = sorted(
            (j for j in self.jobs.values() if j.get("rate_key") == key and _waits_for_rate(j)),
            key=lambda j: (-j["priority"], j["id"]),
        )
        if not waiting:
            self.rate_keys.pop(key, None)
            return 0
        now = self.clock()
        period = datetime.timedelta(seconds=waiting[0]["rate_period"])
        starts = [at for k, at, _, _ in self.rate_starts if k == key and at > now - period]
        granted = sum(1 for j in self.jobs.values() if j.get("rate_key") == key and _granted(j))
        free: int = max(int(waiting[0]["rate_limit"]) - len(starts) - granted, 0)
        for job in waiting[:free]:
            # a job with a concurrency key then waits for a slot (0016)
            self._update(job, waiting_for="limit" if job.get("concurrency_key") else None)
        if any(j.get("rate_key") == key and _waits_for_rate(j) for j in self.jobs.values()):
            self.rate_keys[key] = min(starts, default=now) + period
        else:
            self.rate_keys.pop(key, None)
        return min(free, len(waiting))

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
        # _new_job set scheduled_at (schedule_in_seconds on this clock, as pcq_defer_flow)
        job["concurrency_key"] = item.get("concurrency_key")
        job["concurrency_limit"] = item.get("concurrency_limit")
        job["unique_key"] = item.get("unique_key")
        job["rate_key"] = item.get("rate_key")
        job["rate_limit"] = item.get("rate_limit")
        job["rate_period"] = item.get("rate_period")
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

    def periodic_defer_flow(self, p: dict[str, Any]) -> list[dict[str, Any]]:
        """pcq_periodic_defer_flow (0015): the tick recorded first, then its job's defer."""
        key = (p["task_name"], p.get("periodic_id") or "", int(p["defer_timestamp"]))
        if key in self.periodic_defers:
            return []
        self.periodic_defers[key] = None
        try:
            [row] = self.job_defer_flow_many({"jobs": p["jobs"], "all_or_nothing": False})
        except BaseException:
            del self.periodic_defers[key]  # one statement: the tick's row goes with it
            raise
        if row["outcome"] in ("inserted", "replaced"):
            self.periodic_defers[key] = row["id"]
        return [{"id": row["id"], "outcome": row["outcome"], "conflict_id": row["conflict_id"]}]

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

    def job_promote_rate(self, p: dict[str, Any]) -> list[dict[str, Any]]:
        now = self.clock()
        due = sorted((at, key) for key, at in self.rate_keys.items() if at <= now)[: p["limit"]]
        promoted = sum(self._settle_rate(key) for _, key in sorted(due, key=lambda d: d[1]))
        return [{"keys": len(due), "promoted": promoted}]

    def rate_starts_prune(self, p: dict[str, Any]) -> list[dict[str, Any]]:
        now = self.clock()
        expired = sorted(
            (i for i, start in enumerate(self.rate_starts) if start[2] < now),
            key=lambda i: self.rate_starts[i][2],
        )[: p["limit"]]
        gone = set(expired)
        self.rate_starts = [s for i, s in enumerate(self.rate_starts) if i not in gone]
        soonest = min(self.rate_keys.values(), default=None)
        next_in = None if soonest is None else (soonest - now).total_seconds()
        return [{"pruned": len(gone), "next_in": next_in}]
