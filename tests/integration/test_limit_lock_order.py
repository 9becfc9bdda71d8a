"""The order of the flow-control advisory locks across statements (migration 0020).

A caller's transaction that first frees a concurrency slot (5277 held to its
commit) and then cancels a granted rate-limited job (wants 5280), beside one
worker statement that retries a running job holding both keys: before 0020,
that statement took the rate key's lock (5280) and then waited for the
concurrency key's, and PostgreSQL broke the deadlock after deadlock_timeout by
failing the worker's outcome. Every statement now takes 5277 before 5280, so
the worker's statement waits for the caller's lock holding none the caller
needs, and both commit.
"""

from __future__ import annotations

import threading
from typing import Any

import psycopg

import procrastinate_core as pc
from tests.support.waiting import wait_until

HOUR = 3600


def test_a_worker_retry_and_a_callers_two_statements_do_not_deadlock(
    app: pc.App, db_dsn: str
) -> None:
    both = app.configure_task(
        "t", rate_key="R", rate_limit=10, rate_period=HOUR, concurrency_key="K", concurrency_limit=2
    )
    running = both.defer()
    ready_slot = app.configure_task("t", concurrency_key="K", concurrency_limit=2).defer()
    granted = app.configure_task("t", rate_key="R", rate_limit=10, rate_period=HOUR).defer()
    worker = app.job_manager.register_worker("w")
    assert [job.id for job in app.job_manager.fetch_jobs(worker, None, 1)] == [running]

    cancel = "UPDATE pcq_jobs SET status = 'cancelled', finished_at = now() WHERE id = %s"
    retry = (
        "UPDATE pcq_jobs SET status = 'todo', scheduled_at = now(), started_at = NULL "
        "WHERE id = %s AND status = 'doing'"
    )
    errors: dict[str, BaseException] = {}
    with (
        psycopg.connect(db_dsn) as caller,
        psycopg.connect(db_dsn) as outcome,
        psycopg.connect(db_dsn, autocommit=True) as observer,
    ):
        [outcome_pid] = outcome.execute("SELECT pg_backend_pid()").fetchone()
        outcome.commit()
        caller.execute(cancel, [ready_slot])  # frees a slot of K: 5277(K) held until commit

        def worker_statement(conn: psycopg.Connection[Any]) -> None:
            try:
                conn.execute(retry, [running])  # enters 'rate' (5280(R)), leaves K's slot (5277)
                conn.commit()
            except psycopg.Error as exc:
                errors["worker"] = exc
                conn.rollback()

        thread = threading.Thread(target=worker_statement, args=(outcome,))
        thread.start()
        try:
            wait_until(
                lambda: (
                    observer.execute(
                        "SELECT wait_event = 'advisory' FROM pg_stat_activity WHERE pid = %s",
                        [outcome_pid],
                    ).fetchone()
                    == (True,)
                ),
                what="the worker's statement waiting for K's lock",
            )
            try:
                caller.execute(cancel, [granted])  # a granted job of R leaves: wants 5280(R)
                caller.commit()
            except psycopg.Error as exc:
                errors["caller"] = exc
                caller.rollback()
        finally:
            thread.join(30)
    for error in errors.values():
        raise error
