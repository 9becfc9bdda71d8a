"""The admin dashboard: queues, per-minute outcomes, workers, periodic ticks; who may see it."""

from __future__ import annotations

import datetime
import re

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client

import procrastinate_core as pc
from procrastinate_core.testing import InMemoryConnector
from procrastinate_django import dashboard
from procrastinate_django.testing import run_deferred_jobs
from tests.django.testapp.tasks import fail, record

CHANGELIST = "/admin/procrastinate_django/procrastinatejob/"
DASHBOARD = CHANGELIST + "dashboard/"


def _viewer() -> Client:
    user = User.objects.create_user("viewer", password="pw", is_staff=True)
    user.user_permissions.add(
        Permission.objects.get(
            codename="view_procrastinatejob", content_type__app_label="procrastinate_django"
        )
    )
    client = Client()
    client.force_login(user)
    return client


@pytest.mark.django_db(transaction=True)
def test_the_dashboard_shows_what_just_ran(live_db: None) -> None:
    for value in ("a", "b", "c"):
        record.configure(queue="dash").defer(value=value)
    fail.configure(queue="dash").defer(value="x")
    record.configure(queue="dash", schedule_in={"hours": 1}).defer(value="later")
    run_deferred_jobs()

    client = _viewer()
    page = client.get(DASHBOARD).content.decode()
    row = page.split('data-queue="dash">')[1].split("</tr>")[0]
    cells = re.findall(r'<td class="num">([^<]*)</td>', row)
    # waiting, running, latency, longest running, succeeded, failed, retried (last hour)
    assert cells[0] == "1" and cells[1] == "0"
    assert cells[4:] == ["3", "1", "0"]
    assert re.search(r'data-outcome="succeeded" data-total="3"', page)
    assert re.search(r'data-outcome="failed" data-total="1"', page)
    assert page.count("<rect") > 60  # bars drawn (plus each chart's frame)
    assert '<meta http-equiv="refresh" content="10">' in page
    assert '<meta http-equiv="refresh"' not in client.get(DASHBOARD + "?refresh=0").content.decode()
    # Linked from the job list.
    assert f'href="{DASHBOARD}"' in client.get(CHANGELIST).content.decode()


@pytest.mark.django_db
def test_only_staff_who_may_view_jobs_see_it() -> None:
    assert Client().get(DASHBOARD).status_code == 302  # to the login page
    nobody = User.objects.create_user("nobody", password="pw", is_staff=True)
    client = Client()
    client.force_login(nobody)
    assert client.get(DASHBOARD).status_code == 403


def test_build_lists_workers_with_their_jobs_and_periodic_ticks_on_the_database_clock() -> None:
    connector = InMemoryConnector()
    app = pc.App(connector=connector)

    @app.periodic(cron="*/5 * * * *", periodic_id="every-5")
    @app.task(queue="ticks")
    def tick(timestamp: int) -> None: ...

    with app.open():
        worker = app.job_manager.register_worker("w1", "host-a", 123)
        tick.defer(timestamp=0)
        app.job_manager.fetch_jobs(worker, None, 1)
        context = dashboard.build(app)
    [row] = context["workers"]
    assert (row["name"], row["host"], row["running"]) == ("w1", "host-a", 1)
    [periodic] = context["periodic"]
    assert periodic["task"] == tick.name and periodic["periodic_id"] == "every-5"
    now = context["now"]
    assert now < periodic["next_tick"] <= now + datetime.timedelta(minutes=5)
    assert periodic["next_tick"].minute % 5 == 0 and periodic["next_tick"].second == 0
    [queue] = context["queues"]
    assert (queue["name"], queue["doing"], queue["oldest_running"]) == ("ticks", 1, "0.0 s")


def test_charts_put_each_count_in_its_minute() -> None:
    now = datetime.datetime(2026, 12, 1, 10, 30, 15, tzinfo=datetime.timezone.utc)
    rows = [
        {"minute": now.replace(minute=30, second=0), "outcome": "succeeded", "count": 4},
        {"minute": now.replace(minute=29, second=0), "outcome": "succeeded", "count": 2},
        {"minute": now.replace(minute=29, second=0), "outcome": "retried", "count": 1},
        {"minute": now - datetime.timedelta(hours=2), "outcome": "failed", "count": 9},  # outside
    ]
    succeeded, failed, retried = dashboard.charts(rows, now)
    assert succeeded.counts[-1] == 4 and succeeded.counts[-2] == 2 and succeeded.total == 6
    assert failed.total == 0 and retried.counts[-2] == 1
    assert "<title>10:30: 4 succeeded</title>" in succeeded.svg


@pytest.mark.django_db
def test_the_admin_index_links_to_the_dashboard() -> None:
    client = _viewer()
    index = client.get("/admin/").content.decode()
    assert "/admin/procrastinate_django/procrastinatedashboard/" in index and ">Dashboard<" in index
    response = client.get("/admin/procrastinate_django/procrastinatedashboard/")
    assert response.status_code == 302 and response["Location"] == DASHBOARD
    # Staff who may not view jobs see no entry.
    nobody = User.objects.create_user("nobody", password="pw", is_staff=True)
    other = Client()
    other.force_login(nobody)
    assert "procrastinatedashboard" not in other.get("/admin/").content.decode()


@pytest.mark.django_db(transaction=True)
def test_a_paused_queue_is_listed_and_resumed_from_the_dashboard(live_db: None) -> None:
    from procrastinate_django import app

    waiting = record.configure(queue="held").defer(value="later")
    app.job_manager.pause_queue("held")
    viewer = _viewer()
    page = viewer.get(DASHBOARD).content.decode()
    assert 'data-paused="queue:held"' in page
    assert ">Resume</button>" not in page  # viewing is not acting
    assert viewer.post(DASHBOARD, {"kind": "queue", "name": "held"}).status_code == 403
    assert app.job_manager.list_paused_queues() == ["held"]

    operator = User.objects.create_user("operator", password="pw", is_staff=True)
    for codename in ("view_procrastinatejob", "cancel_job"):
        operator.user_permissions.add(
            Permission.objects.get(
                codename=codename, content_type__app_label="procrastinate_django"
            )
        )
    client = Client()
    client.force_login(operator)
    assert ">Resume</button>" in client.get(DASHBOARD).content.decode()
    done = client.post(DASHBOARD, {"kind": "queue", "name": "held"}, follow=True).content.decode()
    assert "Resumed queue held: 1 waiting job(s) released." in done
    assert app.job_manager.list_paused_queues() == []
    run_deferred_jobs()
    [job] = app.job_manager.list_jobs(id=waiting)
    assert job.status == "succeeded"
