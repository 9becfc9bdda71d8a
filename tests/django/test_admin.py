"""The admin: listing, filters, search, detail, summary, actions, and who may see and act (F24)."""

from __future__ import annotations

import io
import json
import re
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.db import connection
from django.test import Client

from procrastinate_core.jobs import RETRY_RULE
from tests.django.testapp.tasks import fail, record

pytestmark = pytest.mark.django_db

CHANGELIST = "/admin/procrastinate_django/procrastinatejob/"
SUMMARY = CHANGELIST + "summary/"
XSS = "<script>alert(1)</script>"


def _set(job_id: int, **fields: Any) -> None:
    assignments = ", ".join(f"{name} = %({name})s" for name in fields)
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE pcq_jobs SET {assignments} WHERE id = %(id)s", {**fields, "id": job_id}
        )


def _status(job_id: int) -> str | None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT status FROM pcq_jobs WHERE id = %s", [job_id])
        row = cursor.fetchone()
    return None if row is None else row[0]


@pytest.fixture
def jobs() -> dict[str, int]:
    """One job per interesting status; the failed one has hostile arguments."""
    made = {
        "todo": record.configure(lock="lock-a").defer(value="waiting"),
        "doing": record.defer(value="running"),
        "failed": fail.configure(queue="other").defer(value=XSS),
        "failed2": fail.configure(queue="other").defer(value="second"),
        "succeeded": record.defer(value="done"),
    }
    _set(made["doing"], status="doing", worker_id=7, attempts=1)
    for key in ("failed", "failed2"):
        _set(
            made[key],
            status="failed",
            attempts=1,
            worker_id=7,
            error=json.dumps(
                {"type": "ValueError", "message": f"boom {XSS}", "traceback": "Traceback ..."}
            ),
        )
    _set(made["succeeded"], status="succeeded", attempts=1, result=json.dumps("done"))
    return made


def _user(
    username: str, *, staff: bool = True, perms: tuple[str, ...] = (), superuser: bool = False
) -> User:
    user = User.objects.create_user(username, password="pw", is_staff=staff, is_superuser=superuser)
    for codename in perms:
        user.user_permissions.add(
            Permission.objects.get(
                codename=codename, content_type__app_label="procrastinate_django"
            )
        )
    return user


def _client(user: User | None, **kwargs: Any) -> Client:
    client = Client(**kwargs)
    if user is not None:
        client.force_login(user)
    return client


def _act(client: Client, action: str, *ids: int) -> Any:
    return client.post(
        CHANGELIST, {"action": action, "_selected_action": [str(i) for i in ids]}, follow=True
    )


ALL_PERMS = (
    "view_procrastinatejob",
    "retry_job",
    "cancel_job",
    "abort_job",
    "delete_procrastinatejob",
)


@pytest.fixture
def operator() -> Client:
    return _client(_user("operator", perms=ALL_PERMS))


# -- who may see and act -------------------------------------------------------
@pytest.mark.parametrize("kind", ["anonymous", "non-staff"])
def test_anonymous_and_non_staff_are_sent_to_login(kind: str, jobs: dict[str, int]) -> None:
    client = _client(None if kind == "anonymous" else _user("joe", staff=False))
    for url in (CHANGELIST, f"{CHANGELIST}{jobs['failed']}/change/", SUMMARY):
        response = client.get(url)
        assert response.status_code == 302 and "/admin/login/" in response["Location"], url
    response = client.post(
        CHANGELIST, {"action": "retry_jobs", "_selected_action": [jobs["failed"]]}
    )
    assert response.status_code == 302 and "/admin/login/" in response["Location"]
    assert _status(jobs["failed"]) == "failed"


def test_staff_without_permission_gets_403(jobs: dict[str, int]) -> None:
    client = _client(_user("staff"))
    for url in (CHANGELIST, f"{CHANGELIST}{jobs['failed']}/change/", SUMMARY):
        assert client.get(url).status_code == 403, url
    response = client.post(
        CHANGELIST, {"action": "retry_jobs", "_selected_action": [jobs["failed"]]}
    )
    assert response.status_code == 403
    assert _status(jobs["failed"]) == "failed"


def test_view_only_staff_sees_jobs_but_actions_change_nothing(jobs: dict[str, int]) -> None:
    client = _client(_user("viewer", perms=("view_procrastinatejob",)))
    page = client.get(CHANGELIST)
    assert page.status_code == 200
    assert f">{jobs['failed']}<" in page.content.decode()
    assert 'value="retry_jobs"' not in page.content.decode()
    assert client.get(SUMMARY).status_code == 200
    for action, key in (
        ("retry_jobs", "failed"),
        ("cancel_jobs", "todo"),
        ("abort_jobs", "doing"),
        ("delete_jobs", "succeeded"),
    ):
        _act(client, action, jobs[key])
    assert [_status(jobs[k]) for k in ("failed", "todo", "doing", "succeeded")] == [
        "failed",
        "todo",
        "doing",
        "succeeded",
    ]
    with connection.cursor() as cursor:
        cursor.execute("SELECT bool_or(abort_requested) FROM pcq_jobs")
        assert cursor.fetchone()[0] is False


def test_each_action_needs_its_own_permission(jobs: dict[str, int]) -> None:
    client = _client(_user("retrier", perms=("view_procrastinatejob", "retry_job")))
    page = client.get(CHANGELIST).content.decode()
    assert 'value="retry_jobs"' in page
    assert 'value="cancel_jobs"' not in page and 'value="delete_jobs"' not in page
    _act(client, "cancel_jobs", jobs["todo"])
    assert _status(jobs["todo"]) == "todo"


def test_actions_require_csrf(jobs: dict[str, int]) -> None:
    user = _user("csrf", perms=ALL_PERMS)
    client = _client(user, enforce_csrf_checks=True)
    response = client.post(
        CHANGELIST, {"action": "retry_jobs", "_selected_action": [jobs["failed"]]}
    )
    assert response.status_code == 403
    assert _status(jobs["failed"]) == "failed"


def test_arguments_and_errors_are_html_escaped(operator: Client, jobs: dict[str, int]) -> None:
    detail = operator.get(f"{CHANGELIST}{jobs['failed']}/change/").content.decode()
    listing = operator.get(CHANGELIST, {"q": "alert"}).content.decode()
    for page in (detail, listing):
        assert XSS not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in detail
    assert f">{jobs['failed']}<" in listing


# -- actions -----------------------------------------------------------------
def test_retry_retries_failed_jobs_and_refuses_running_ones(
    operator: Client, jobs: dict[str, int]
) -> None:
    response = _act(
        operator, "retry_jobs", jobs["failed"], jobs["failed2"], jobs["doing"], jobs["succeeded"]
    )
    text = response.content.decode()
    assert f"Retried 2 jobs. 2 jobs left unchanged: {RETRY_RULE}." in text
    assert _status(jobs["failed"]) == "todo" and _status(jobs["failed2"]) == "todo"
    assert _status(jobs["doing"]) == "doing" and _status(jobs["succeeded"]) == "succeeded"


@pytest.mark.parametrize("status", ["todo", "doing", "succeeded", "failed", "aborted", "cancelled"])
def test_the_shell_and_the_admin_retry_the_same_jobs(operator: Client, status: str) -> None:
    """One rule (jobs.RETRYABLE_STATUSES) for the admin action and the CLI shell's `retry`."""
    from procrastinate_core.cli.shell import ShellCommands
    from procrastinate_django.procrastinate_app import app

    by_admin, by_shell = record.defer(value="admin"), record.defer(value="shell")
    for job_id in (by_admin, by_shell):
        _set(job_id, status=status)
    _act(operator, "retry_jobs", by_admin)
    code = ShellCommands(app, io.StringIO()).run("retry", [str(by_shell)])
    retryable = status in ("failed", "aborted", "cancelled")
    assert _status(by_admin) == ("todo" if retryable else status)
    assert _status(by_shell) == _status(by_admin)
    assert code == (0 if retryable else 1)


def test_cancel_abort_delete(operator: Client, jobs: dict[str, int]) -> None:
    assert (
        "Cancelled 1 job."
        in _act(operator, "cancel_jobs", jobs["todo"], jobs["succeeded"]).content.decode()
    )
    assert _status(jobs["todo"]) == "cancelled" and _status(jobs["succeeded"]) == "succeeded"

    assert "Aborted 1 job." in _act(operator, "abort_jobs", jobs["doing"]).content.decode()
    with connection.cursor() as cursor:
        cursor.execute("SELECT abort_requested FROM pcq_jobs WHERE id = %s", [jobs["doing"]])
        assert cursor.fetchone()[0] is True

    text = _act(
        operator, "delete_jobs", jobs["succeeded"], jobs["failed"], jobs["doing"]
    ).content.decode()
    assert "Deleted 2 jobs. 1 job left unchanged" in text
    assert _status(jobs["succeeded"]) is None and _status(jobs["failed"]) is None
    assert _status(jobs["doing"]) == "doing"


def test_orm_delete_is_not_offered(operator: Client, jobs: dict[str, int]) -> None:
    page = operator.get(CHANGELIST).content.decode()
    assert 'value="delete_selected"' not in page
    assert operator.get(f"{CHANGELIST}{jobs['succeeded']}/delete/").status_code == 403


# -- list, filters, search, detail, summary --------------------------------------
def _listed(client: Client, **params: str) -> set[int]:
    response = client.get(CHANGELIST, params)
    assert response.status_code == 200
    return {row.pk for row in response.context["cl"].result_list}


def test_filters_and_search(operator: Client, jobs: dict[str, int]) -> None:
    assert _listed(operator) == set(jobs.values())
    assert _listed(operator, status__exact="failed") == {jobs["failed"], jobs["failed2"]}
    assert _listed(operator, queue_name="other") == {jobs["failed"], jobs["failed2"]}
    assert _listed(operator, task_name="tests.django.testapp.tasks.record") == {
        jobs["todo"],
        jobs["doing"],
        jobs["succeeded"],
    }
    assert _listed(operator, q=str(jobs["doing"])) == {jobs["doing"]}
    assert _listed(operator, q="lock-a") == {jobs["todo"]}
    assert _listed(operator, q="second") == {jobs["failed2"]}
    assert _listed(operator, q="testapp.tasks.fail") == {jobs["failed"], jobs["failed2"]}
    _set(jobs["succeeded"], finished_at="2026-11-30 12:34:56+00")
    page = operator.get(CHANGELIST).content.decode()
    for column in (
        "status",
        "task",
        "queue",
        "priority",
        "lock",
        "attempts",
        "created",
        "last change",
    ):
        assert column in page.lower(), column
    # Times are shown to the second, the newest one named ("finished 2026-...").
    assert re.search(r"finished 2026-11-30 \d\d:34:56", page), page
    results = page.split('id="result_list"')[1].split("</thead>")[0]
    headers = re.findall(r'<th scope="col"', results)
    assert len(headers) == 10  # checkbox + 9 columns: fits 1280 px (the browser test measures it)


def test_detail_shows_arguments_outcome_and_history(operator: Client, jobs: dict[str, int]) -> None:
    failed = operator.get(f"{CHANGELIST}{jobs['failed']}/change/").content.decode()
    assert "ValueError" in failed and "Traceback ..." in failed
    assert '<table class="pcq-history">' in failed
    history = failed.split('<table class="pcq-history">')[1].split("</table>")[0]
    assert [cell for cell in ("deferred", "failed") if f"<td>{cell}</td>" in history] == [
        "deferred",
        "failed",
    ]
    # Each event names its worker: none when deferred, worker 7 for the failure.
    rows = [row.split("</tr>")[0] for row in history.split("<tr>")[2:]]
    assert rows[0].startswith("<td>deferred</td>") and rows[0].endswith("<td>-</td><td></td>")
    assert rows[-1].startswith("<td>failed</td>") and "<td>7</td>" in rows[-1]
    # The failed attempt's row carries its error.
    assert "<b>ValueError</b>: boom &lt;script&gt;" in rows[-1] and "Traceback ..." in rows[-1]
    succeeded = operator.get(f"{CHANGELIST}{jobs['succeeded']}/change/").content.decode()
    assert "&quot;done&quot;" in succeeded  # the result, as JSON
    assert "&quot;value&quot;: &quot;done&quot;" in succeeded  # the arguments


def test_the_history_shows_every_attempts_error_after_a_retry_succeeds(
    operator: Client, jobs: dict[str, int]
) -> None:
    job_id = jobs["doing"]  # attempt 1 is running on worker 7
    for attempt, (status, error) in enumerate(
        [
            ("todo", "first"),
            ("doing", None),
            ("todo", "second"),
            ("doing", None),
            ("succeeded", None),
        ],
        start=1,
    ):
        fields: dict[str, Any] = {"status": status}
        if error:
            fields["error"] = json.dumps(
                {"type": "OSError", "message": error, "traceback": f"tb {error}"}
            )
        elif status == "succeeded":
            fields["error"] = None
        if status == "doing":
            fields["attempts"] = 1 + (attempt + 1) // 2
        _set(job_id, **fields)
    page = operator.get(f"{CHANGELIST}{job_id}/change/").content.decode()
    history = page.split('<table class="pcq-history">')[1].split("</table>")[0]
    retries = [
        row for row in history.split("<tr>") if row.startswith("<td>deferred_for_retry</td>")
    ]
    assert len(retries) == 2
    assert "<b>OSError</b>: first" in retries[0] and "tb first" in retries[0]
    assert "<b>OSError</b>: second" in retries[1] and "tb second" in retries[1]
    assert "succeeded" in history


def test_actions_are_listed_in_the_jobs_history(operator: Client, jobs: dict[str, int]) -> None:
    """The job page's HISTORY button shows what staff did to the job."""
    history_url = f"{CHANGELIST}{jobs['failed']}/history/"
    assert (
        "Retried (was failed) by an admin action" not in operator.get(history_url).content.decode()
    )
    _act(operator, "retry_jobs", jobs["failed"])
    page = operator.get(history_url).content.decode()
    assert "Retried (was failed) by an admin action" in page
    assert "operator" in page  # who did it
    # A job the action left alone has nothing logged.
    _act(operator, "retry_jobs", jobs["doing"])
    assert (
        "by an admin action"
        not in operator.get(f"{CHANGELIST}{jobs['doing']}/history/").content.decode()
    )


def test_an_aborted_job_shows_that_its_abort_was_requested(
    operator: Client, jobs: dict[str, int]
) -> None:
    def shown(job_id: int) -> bool:
        page = operator.get(f"{CHANGELIST}{job_id}/change/").content.decode()
        field = page.split("Abort requested:")[1].split("</div>")[0]
        assert "icon-yes" in field or "icon-no" in field, field
        return "icon-yes" in field

    assert not shown(jobs["doing"])
    _act(operator, "abort_jobs", jobs["doing"])
    assert shown(jobs["doing"])
    # The attempt ends aborted: the row's flag is cleared, the page still says it was asked.
    _set(jobs["doing"], status="aborted", abort_requested=False, finished_at="now")
    assert shown(jobs["doing"])


@pytest.mark.parametrize("list_style", [True, False])
def test_summary_breadcrumbs_follow_the_django_version(
    operator: Client, jobs: dict[str, int], list_style: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    import django

    monkeypatch.setattr(
        django, "VERSION", (6, 0, 0, "final", 0) if list_style else (5, 2, 0, "final", 0)
    )
    page = operator.get(SUMMARY).content.decode()
    if list_style:
        assert '<ol class="breadcrumbs">' in page and '<li aria-current="page">Summary</li>' in page
    else:
        assert '<div class="breadcrumbs">' in page


def test_summary_counts_by_status_queue_and_task(operator: Client, jobs: dict[str, int]) -> None:
    response = operator.get(SUMMARY)
    assert response.status_code == 200
    context = response.context
    assert dict(context["by_status"]) == {
        "todo": 1,
        "doing": 1,
        "succeeded": 1,
        "failed": 2,
        "cancelled": 0,
        "aborted": 0,
    }
    by_queue = {row["name"]: row["total"] for row in context["by_queue"]}
    assert by_queue == {"default": 3, "other": 2}
    by_task = {row["name"]: row["counts"]["failed"] for row in context["by_task"]}
    assert by_task["tests.django.testapp.tasks.fail"] == 2
    assert 'href="' + SUMMARY in operator.get(CHANGELIST).content.decode()


@pytest.mark.parametrize("query", ["?q=a%00b", "?queue_name=a%00b", "?task_name=%00"])
def test_unstorable_search_or_filter_is_refused_with_a_message(
    operator: Client, jobs: dict[str, int], query: str
) -> None:
    """A NUL cannot be sent to PostgreSQL: the admin says so instead of a 500."""
    response = operator.get(CHANGELIST + query, follow=True)
    assert response.status_code == 200
    messages = [str(m) for m in response.context["messages"]]
    assert any("was ignored" in m and "Remove that character" in m for m in messages), messages
    assert operator.get(CHANGELIST + "?q=ok").status_code == 200
