"""RELIABILITY F13: a defer joins the caller's transaction (rolled back with it, seen at commit)."""

from __future__ import annotations

import datetime

import psycopg
import pytest
from django.db import connection, transaction

from tests.django.support import background_worker, job_rows, ledger, wait_for_status
from tests.django.testapp.models import Note
from tests.django.testapp.tasks import record

pytestmark = pytest.mark.usefixtures("live_db")


def _other_connection_count() -> int:
    """Jobs visible to another session (what a worker sees)."""
    params = {
        k: v
        for k, v in connection.get_connection_params().items()
        if k in {"dbname", "host", "port", "user", "password"}
    }
    with psycopg.connect(**params, autocommit=True) as other:
        row = other.execute("SELECT count(*) FROM pcq_jobs").fetchone()
        assert row is not None
        return int(row[0])


def _run_sentinel() -> None:
    """Defer a committed job and wait for it: the FIFO worker would have run anything before it."""
    job_id = record.defer(value="sentinel")
    wait_for_status(job_id, "succeeded")


def test_rollback_of_atomic_block_drops_the_job_and_the_row() -> None:
    with background_worker(concurrency=1):
        with pytest.raises(RuntimeError, match="boom"), transaction.atomic():
            Note.objects.create(text="rolled back")
            record.defer(value="rolled back")
            raise RuntimeError("boom")
        _run_sentinel()
    assert job_rows() == [row for row in job_rows() if "sentinel" in row["args"]]
    assert [run.value for run in ledger()] == ["sentinel"]
    assert Note.objects.count() == 0
    with connection.cursor() as cursor:  # the connection is still usable
        cursor.execute("SELECT 1")


def test_rolled_back_savepoint_drops_only_its_job() -> None:
    with background_worker(concurrency=1):
        with transaction.atomic():
            kept = record.defer(value="outer")
            with pytest.raises(RuntimeError), transaction.atomic():
                record.defer(value="inner")
                raise RuntimeError("inner fails")
        wait_for_status(kept, "succeeded")
        _run_sentinel()
    assert [row["id"] for row in job_rows() if "sentinel" not in row["args"]] == [kept]
    assert [run.value for run in ledger()] == ["outer", "sentinel"]


def test_failing_atomic_request_rolls_back_its_job(client) -> None:
    client.raise_request_exception = False
    with background_worker(concurrency=1):
        response = client.get("/defer-then-fail/")
        assert response.status_code == 500
        _run_sentinel()
    assert [run.value for run in ledger()] == ["sentinel"]
    assert Note.objects.count() == 0
    assert all("doomed" not in row["args"] for row in job_rows())


def test_commit_makes_exactly_one_job_visible_and_wakes_the_worker_then() -> None:
    # Polling every 60 s: only the NOTIFY sent at commit can start the job in time.
    with background_worker(
        concurrency=1, fetch_job_polling_interval=60, abort_job_polling_interval=60
    ):
        with transaction.atomic():
            Note.objects.create(text="committed")
            job_id = record.defer(value="committed")
            assert _other_connection_count() == 0  # invisible before commit
        committed_at = datetime.datetime.now(datetime.UTC)
        assert _other_connection_count() == 1
        wait_for_status(job_id, "succeeded", timeout=10)
    [run] = ledger()
    assert run.value == "committed"
    assert run.at >= committed_at
    assert [row["id"] for row in job_rows()] == [job_id]


def test_sync_view_defers_through_django_connection(client) -> None:
    response = client.get("/defer/")
    assert response.status_code == 200
    job_id = response.json()["job_id"]
    assert [(row["id"], row["status"]) for row in job_rows()] == [(job_id, "todo")]
    assert Note.objects.count() == 1


def test_async_view_defers_and_worker_runs_it() -> None:
    from asgiref.sync import async_to_sync
    from django.test import AsyncClient

    with background_worker(concurrency=1):
        response = async_to_sync(AsyncClient().get)("/defer-async/")
        assert response.status_code == 200
        job_id = response.json()["job_id"]
        wait_for_status(job_id, "succeeded")
    assert [run.value for run in ledger("record")] == ["async view"]
