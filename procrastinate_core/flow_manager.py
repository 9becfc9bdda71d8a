"""JobManager's flow-control operations (#13): defers with limits or unique keys, pause/resume,
and the stager's promotion of rate-limited jobs.

A mixin of JobManager (manager.py), written like it: each operation is a
builder returning an Op or a plan, `plans.paired()` makes the sync and async
pair. The SQL is in queries.sql (job_defer_flow_many, paused_set, paused_list)
and migrations 0008 and 0012; see docs/flow-control.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from procrastinate_core import exceptions, flow
from procrastinate_core.jobs import Job
from procrastinate_core.plans import HasConnector, Op, Plan, first_column, paired

#: jobs held or released per transaction by pause_* / resume_*
PAUSE_BATCH_SIZE = 1000


class FlowOperations(HasConnector):
    """Flow-control operations of the JobManager."""

    def _defer_flow(
        self,
        template: Job,
        flow_options: flow.FlowOptions,
        kwargs_list: Sequence[dict[str, Any]],
        args_json: Sequence[str],
        connection: Any = None,
    ) -> Op[list[flow.DeferResult]]:
        """Insert jobs with a concurrency limit or a unique key; what became of each.

        Conflicts do not raise here (flow.ids_or_raise decides): each item is
        decided on its own, and nothing is inserted with all_or_nothing.
        """
        params = {
            "jobs": flow.payload(template, flow_options, kwargs_list, args_json),
            "all_or_nothing": flow_options.all_or_nothing,
        }
        return Op("job_defer_flow_many", params, "all", flow.parse_results, connection)

    defer_flow, defer_flow_async = paired(_defer_flow)

    def _defer_periodic_flow(
        self,
        template: Job,
        flow_options: flow.FlowOptions,
        periodic_id: str,
        defer_timestamp: int,
        args_json: str,
    ) -> Op[flow.DeferResult | None]:
        """Defer one periodic tick of a task with a unique key, unless any worker already did.

        None when another worker (or this one, earlier) deferred the tick; else what
        became of its job: a unique conflict skips the tick (it is recorded, nothing
        raises), as a held queueing lock does.
        """
        params = {
            "task_name": template.task_name,
            "periodic_id": periodic_id,
            "defer_timestamp": defer_timestamp,
            "jobs": flow.payload(template, flow_options, [template.task_kwargs], [args_json]),
        }

        def parse(rows: list[dict[str, Any]]) -> flow.DeferResult | None:
            if not rows:
                return None
            [row] = rows
            return flow.DeferResult(row["id"], row["outcome"], row["conflict_id"])

        return Op("periodic_defer_flow", params, "all", parse)

    defer_periodic_flow, defer_periodic_flow_async = paired(_defer_periodic_flow)

    def _set_paused(self, kind: Literal["queue", "task"], name: str, paused: bool) -> Plan[int]:
        """Pause or resume, holding or releasing its jobs in bounded batches; how many."""
        if not isinstance(name, str) or not name:
            raise exceptions.ConfigurationError(
                f"{kind} name {name!r}: expected a non-empty string"
            )
        params = {"kind": kind, "name": name, "paused": paused, "batch": PAUSE_BATCH_SIZE}
        total = 0
        while True:
            changed: int = yield Op("paused_set", params, "one", first_column("changed"))
            total += changed
            if changed < PAUSE_BATCH_SIZE:
                return total

    _paused, _paused_async = paired(_set_paused)

    def pause_queue(self, queue: str) -> int:
        """Stop every worker from starting jobs of `queue` (running ones finish); survives restarts.

        Returns how many ready jobs it held. Jobs deferred to it later wait too.
        """
        return self._paused("queue", queue, True)

    async def pause_queue_async(self, queue: str) -> int:
        return await self._paused_async("queue", queue, True)

    def resume_queue(self, queue: str) -> int:
        """Let workers start jobs of `queue` again (they are woken); how many jobs it released."""
        return self._paused("queue", queue, False)

    async def resume_queue_async(self, queue: str) -> int:
        return await self._paused_async("queue", queue, False)

    def pause_task(self, task_name: str) -> int:
        """As pause_queue, for the jobs of one task (in every queue)."""
        return self._paused("task", task_name, True)

    async def pause_task_async(self, task_name: str) -> int:
        return await self._paused_async("task", task_name, True)

    def resume_task(self, task_name: str) -> int:
        """As resume_queue, for the jobs of one task."""
        return self._paused("task", task_name, False)

    async def resume_task_async(self, task_name: str) -> int:
        return await self._paused_async("task", task_name, False)

    # -- rate limits: the stager's side (migration 0012) ----------------------------
    def _promote_rate_limited(self, limit: int = 1000) -> Op[tuple[int, int]]:
        """Grant starts to jobs of up to `limit` rate keys whose window may have room again.

        Time, not an event, frees a window, so the stager calls this every pass
        (database clock). Returns (keys looked at, jobs granted); keys looked at
        == `limit` means more may be due.
        """
        return Op(
            "job_promote_rate",
            {"limit": int(limit)},
            "one",
            lambda row: (int(row["keys"]), int(row["promoted"])),
        )

    promote_rate_limited, promote_rate_limited_async = paired(_promote_rate_limited)

    def _prune_rate_starts(self, limit: int = 1000) -> Op[tuple[int, float | None]]:
        """Forget up to `limit` recorded starts older than their period (they bound nothing).

        Returns (how many, seconds until the next rate key is due or None): a
        window may free sooner than the stager's next pass.
        """
        return Op(
            "rate_starts_prune",
            {"limit": int(limit)},
            "one",
            lambda row: (int(row["pruned"]), row["next_in"]),
        )

    prune_rate_starts, prune_rate_starts_async = paired(_prune_rate_starts)

    def _list_paused(self) -> Op[list[dict[str, Any]]]:
        """Paused queues and tasks: kind ('queue' or 'task'), name, paused_at."""
        return Op("paused_list", {}, "all", list)

    list_paused, list_paused_async = paired(_list_paused)

    def list_paused_queues(self) -> list[str]:
        """Names of the paused queues."""
        return [row["name"] for row in self.list_paused() if row["kind"] == "queue"]

    async def list_paused_queues_async(self) -> list[str]:
        return [row["name"] for row in await self.list_paused_async() if row["kind"] == "queue"]

    def list_paused_tasks(self) -> list[str]:
        """Names of the paused tasks."""
        return [row["name"] for row in self.list_paused() if row["kind"] == "task"]

    async def list_paused_tasks_async(self) -> list[str]:
        return [row["name"] for row in await self.list_paused_async() if row["kind"] == "task"]
