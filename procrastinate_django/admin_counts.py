"""Counts for the admin's job pages that stay cheap next to millions of finished jobs (#12).

An exact count of finished jobs reads the whole table: at 10,000,000 rows the
list took 12 s and the summary 6 s. So, once the table is big, the admin
shows estimates, marked "about" / "≈", and keeps exact what is cheap:

- the job list counts exactly when PostgreSQL's planner expects the count to
  cost less than EXACT_COUNT_MAX_COST (a small table, or a filter an index
  answers) or expects fewer than EXACT_COUNT_MAX_ROWS matches, and otherwise
  shows the planner's estimate of the matching rows;
- the summary and the queue and task filters count waiting and running jobs
  exactly (their partial indexes) and estimate finished ones from a sample
  once pcq_jobs holds more than ESTIMATE_ABOVE rows
  (JobManager.count_job_rows).

Subclass ProcrastinateJobAdmin and change `estimate_above` or its paginator's
`exact_count_max_cost` to move the lines.
"""

from __future__ import annotations

import json
from typing import Any

from django.contrib import admin
from django.core.paginator import Paginator
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.functional import cached_property

from procrastinate_core.jobs import Status

#: Rows in pcq_jobs (the planner's count) above which finished jobs are estimated.
ESTIMATE_ABOVE = 200_000
#: The planner's cost units (about one page read each) under which the list counts
#: exactly; reading a 300,000-row table in full costs about 10,000.
EXACT_COUNT_MAX_COST = 10_000.0
#: An estimate of fewer matching rows is checked by an exact count (see EstimatingPaginator):
#: above the admin's list_max_show_all (200), so that "Show all" never trusts an estimate.
EXACT_COUNT_MAX_ROWS = 1_000


def planner_estimate(queryset: QuerySet[Any]) -> tuple[int, float]:
    """(rows, total cost) the planner expects for reading the queryset's rows, unordered."""
    plan = json.loads(queryset.order_by().values("pk").explain(format="json"))[0]["Plan"]
    return int(plan["Plan Rows"]), float(plan["Total Cost"])


class EstimatingPaginator(Paginator):
    """Counts exactly only when that is cheap; else the planner's estimate (`estimated`).

    A small estimate is always checked by an exact count: the admin shows every row
    at once (no LIMIT) when the count says they fit on one page or under "Show
    all", which an estimate that is too low must never decide.
    """

    exact_count_max_cost = EXACT_COUNT_MAX_COST
    exact_count_max_rows = EXACT_COUNT_MAX_ROWS
    estimated = False

    @cached_property
    def count(self) -> int:
        queryset = self.object_list
        if not isinstance(queryset, QuerySet):
            return super().count
        rows, cost = planner_estimate(queryset)
        if cost <= self.exact_count_max_cost or rows <= self.exact_count_max_rows:
            return queryset.count()
        self.estimated = True
        return rows


def _manager() -> Any:
    from procrastinate_django.admin_actions import job_manager

    return job_manager()


class _NameFilter(admin.SimpleListFilter):
    """Queue or task names from count_job_rows, not a DISTINCT over every row.

    Above ESTIMATE_ABOVE rows, a name only finished jobs carry is listed when the
    sample holds it; filtering on any name (?queue_name=...) works all the same.
    """

    group_by = "queue"
    estimate_above = ESTIMATE_ABOVE

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        above = getattr(model_admin, "estimate_above", self.estimate_above)
        rows = _manager().count_job_rows(self.group_by, estimate_above=above)
        return [(name, name) for name in sorted({r["name"] for r in rows if r["name"]})]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        return queryset if value is None else queryset.filter(**{self.parameter_name: value})


class QueueFilter(_NameFilter):
    title = "queue"
    parameter_name = "queue_name"
    group_by = "queue"


class TaskFilter(_NameFilter):
    title = "task"
    parameter_name = "task_name"
    group_by = "task"


def _grouped(rows: list[dict[str, Any]], statuses: list[str]) -> list[dict[str, Any]]:
    table: dict[str, dict[str, Any]] = {}
    for row in rows:
        entry = table.setdefault(
            row["name"],
            {"name": row["name"], "counts": dict.fromkeys(statuses, 0), "total": 0},
        )
        entry["counts"][row["status"]] = row["count"]
        entry["total"] += row["count"]
    return [
        {**entry, "cells": [entry["counts"][s] for s in statuses]}
        for entry in sorted(table.values(), key=lambda e: e["name"])
    ]


def summary(estimate_above: int | None) -> dict[str, Any]:
    """The summary page's tables: by status, by queue, by task, and which statuses are estimates."""
    manager = _manager()
    statuses = [status.value for status in Status]
    by_queue = manager.count_job_rows("queue", estimate_above=estimate_above)
    by_task = manager.count_job_rows("task", estimate_above=estimate_above)
    by_status = dict.fromkeys(statuses, 0)
    for row in by_queue:
        by_status[row["status"]] += row["count"]
    estimated = sorted({row["status"] for row in by_queue + by_task if row["estimated"]})
    return {
        "statuses": statuses,
        "by_status": list(by_status.items()),
        "total": sum(by_status.values()),
        "by_queue": _grouped(by_queue, statuses),
        "by_task": _grouped(by_task, statuses),
        "estimated": estimated,
    }
