"""The admin's counts next to many finished jobs (#12): exact on a small table, estimates
(marked) above the thresholds, and the estimates right where they can be checked.

The thresholds are moved to force the estimate paths on a table of five rows
that was just analyzed: there the planner's estimates and a sample of 100 %
are exact, so an estimate path must give the true numbers and say "about".
"""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client

from procrastinate_django import admin_counts
from procrastinate_django.admin import ProcrastinateJobAdmin
from tests.django.testapp.tasks import fail, record

pytestmark = pytest.mark.django_db

CHANGELIST = "/admin/procrastinate_django/procrastinatejob/"
SUMMARY = CHANGELIST + "summary/"
EXACT_BY_STATUS = {
    "todo": 1,
    "doing": 1,
    "succeeded": 1,
    "failed": 2,
    "cancelled": 0,
    "aborted": 0,
}


@pytest.fixture
def staff() -> Client:
    client = Client()
    client.force_login(User.objects.create_superuser("admin", password="pw"))
    return client


@pytest.fixture
def five_jobs() -> None:
    """todo and doing (queue default), two failed (queue other), one succeeded; analyzed."""
    ids = [
        record.defer(value=1),
        record.defer(value=2),
        fail.configure(queue="other").defer(value=3),
        fail.configure(queue="other").defer(value=4),
        record.defer(value=5),
    ]
    with connection.cursor() as cursor:
        cursor.execute("UPDATE pcq_jobs SET status = 'doing', attempts = 1 WHERE id = %s", [ids[1]])
        cursor.execute(
            "UPDATE pcq_jobs SET status = 'failed', attempts = 1, finished_at = now() "
            "WHERE id = ANY(%s)",
            [ids[2:4]],
        )
        cursor.execute(
            "UPDATE pcq_jobs SET status = 'succeeded', attempts = 1, finished_at = now() "
            "WHERE id = %s",
            [ids[4]],
        )
        cursor.execute("ANALYZE pcq_jobs")


def _filter_choices(response: Any, title: str) -> list[str]:
    [spec] = [spec for spec in response.context["cl"].filter_specs if spec.title == title]
    return [value for value, _label in spec.lookup_choices]


# -- the job list's count -----------------------------------------------------
def test_a_small_list_is_counted_exactly(staff: Client, five_jobs: None) -> None:
    response = staff.get(CHANGELIST)
    cl = response.context["cl"]
    assert (cl.result_count, cl.paginator.estimated) == (5, False)
    page = response.content.decode()
    assert "5 jobs" in page and "about 5" not in page
    filtered = staff.get(CHANGELIST, {"status__exact": "failed"}).context["cl"]
    assert (filtered.result_count, filtered.paginator.estimated) == (2, False)


def test_above_the_cost_line_the_list_shows_the_planners_estimate(
    staff: Client, five_jobs: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(admin_counts.EstimatingPaginator, "exact_count_max_cost", -1.0)
    monkeypatch.setattr(admin_counts.EstimatingPaginator, "exact_count_max_rows", 0)
    response = staff.get(CHANGELIST)
    cl = response.context["cl"]
    assert (cl.result_count, cl.paginator.estimated) == (5, True)
    assert "about 5 jobs" in response.content.decode()
    assert len(cl.result_list) == 5  # the rows themselves are read as before
    filtered = staff.get(CHANGELIST, {"status__exact": "failed"}).context["cl"]
    assert (filtered.result_count, filtered.paginator.estimated) == (2, True)


def test_a_small_estimate_is_checked_by_an_exact_count(
    staff: Client, five_jobs: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Django lists every row unpaginated when the count fits a page: never on an estimate."""
    monkeypatch.setattr(admin_counts.EstimatingPaginator, "exact_count_max_cost", -1.0)
    with connection.cursor() as cursor:  # the planner still believes in 5 rows
        cursor.execute(
            "INSERT INTO pcq_jobs (queue_name, task_name)"
            " SELECT 'bulk', 't' FROM generate_series(1, 60)"
        )
    cl = staff.get(CHANGELIST).context["cl"]
    assert (cl.result_count, cl.paginator.estimated, cl.multi_page) == (65, False, True)
    assert len(cl.result_list) == 50  # one page, with a LIMIT


def test_the_cost_line_is_the_planners_cost_of_the_count(staff: Client, five_jobs: None) -> None:
    from procrastinate_django.models import ProcrastinateJob

    rows, cost = admin_counts.planner_estimate(ProcrastinateJob.objects.all())
    assert rows == 5
    assert 0 < cost < admin_counts.EXACT_COUNT_MAX_COST


# -- the summary ------------------------------------------------------------------
def test_a_small_summary_is_exact(staff: Client, five_jobs: None) -> None:
    response = staff.get(SUMMARY)
    assert dict(response.context["by_status"]) == EXACT_BY_STATUS
    assert response.context["estimated"] == []
    assert "≈" not in response.content.decode()


def test_above_the_row_line_the_summary_samples_finished_jobs_and_says_so(
    staff: Client, five_jobs: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ProcrastinateJobAdmin, "estimate_above", 0)
    response = staff.get(SUMMARY)
    context = response.context
    assert dict(context["by_status"]) == EXACT_BY_STATUS  # a sample of 100 % on 5 rows
    assert context["estimated"] == ["failed", "succeeded"]
    assert {row["name"]: row["total"] for row in context["by_queue"]} == {"default": 3, "other": 2}
    page = response.content.decode()
    assert "failed ≈" in page and "todo ≈" not in page and "about 5 jobs" in page


# -- the queue and task filters ----------------------------------------------------
@pytest.mark.parametrize("estimate_above", [None, 0])
def test_filter_choices_come_from_the_counts(
    staff: Client, five_jobs: None, monkeypatch: pytest.MonkeyPatch, estimate_above: int | None
) -> None:
    monkeypatch.setattr(ProcrastinateJobAdmin, "estimate_above", estimate_above)
    response = staff.get(CHANGELIST)
    assert _filter_choices(response, "queue") == ["default", "other"]
    assert _filter_choices(response, "task") == [
        "tests.django.testapp.tasks.fail",
        "tests.django.testapp.tasks.record",
    ]
    listed = staff.get(CHANGELIST, {"queue_name": "other"}).context["cl"].result_list
    assert sorted(job.queue_name for job in listed) == ["other", "other"]


def test_the_list_has_no_date_hierarchy(staff: Client, five_jobs: None) -> None:
    """Its min/max and list of dates would read every row of a big table."""
    assert ProcrastinateJobAdmin.date_hierarchy is None
    assert ProcrastinateJobAdmin.show_full_result_count is False
