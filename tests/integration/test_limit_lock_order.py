"""The order of the flow-control advisory locks across statements (migration 0020).

A caller's transaction that first settles a concurrency key or a lock (5277 or
5276 held to its commit) and then cancels a granted rate-limited job (wants
5280), beside one worker statement that touches both (a retry of a running
job with both keys; an outcome batch with a rate job and a lock job): before
0020 that statement took the rate key's lock first and then waited for the
other, and PostgreSQL broke the deadlock after deadlock_timeout by failing the
worker's outcome. Every statement now takes lock names, then concurrency keys,
then rate keys, so the worker's statement waits for the caller's lock holding
none the caller needs, and both commit.
"""

from __future__ import annotations

import threading
from typing import Any

import psycopg

import procrastinate_core as pc
from tests.support.waiting import wait_until

HOUR = 3600


CANCEL = "UPDATE pcq_jobs SET status = 'cancelled', finished_at = now() WHERE id = %s"


def test_a_worker_retry_and_a_callers_two_statements_do_not_deadlock(
    app: pc.App, db_dsn: str
) -> None:
    """Concurrency key K (5277) and rate key R (5280)."""
    both = app.configure_task(
        "t", rate_key="R", rate_limit=10, rate_period=HOUR, concurrency_key="K", concurrency_limit=2
    )
    running = both.defer()
    ready_slot = app.configure_task("t", concurrency_key="K", concurrency_limit=2).defer()
    granted = app.configure_task("t", rate_key="R", rate_limit=10, rate_period=HOUR).defer()
    worker = app.job_manager.register_worker("w")
    assert [job.id for job in app.job_manager.fetch_jobs(worker, None, 1)] == [running]
    _interleave(
        db_dsn,
        caller_first=(CANCEL, [ready_slot]),  # frees a slot of K: 5277(K) held until commit
        # enters 'rate' (5280(R)) and leaves K's slot (5277(K))
        worker=(
            "UPDATE pcq_jobs SET status = 'todo', scheduled_at = now(), started_at = NULL "
            "WHERE id = %s AND status = 'doing'",
            [running],
        ),
        caller_then=(CANCEL, [granted]),  # a granted job of R leaves: wants 5280(R)
    )


def test_a_worker_batch_with_a_lock_and_a_rate_key_does_not_deadlock_either(
    app: pc.App, db_dsn: str
) -> None:
    """Lock L (5276) and rate key R (5280), on two jobs of one outcome statement."""
    rated = app.configure_task("t", rate_key="R", rate_limit=10, rate_period=HOUR)
    locked = app.configure_task("t", lock="L")
    running_rated = rated.defer()
    holder = locked.defer()
    waiting = locked.defer()  # waits for L
    granted = rated.defer()
    worker = app.job_manager.register_worker("w")
    claimed = sorted(job.id for job in app.job_manager.fetch_jobs(worker, None, 2))
    assert claimed == [running_rated, holder]
    _interleave(
        db_dsn,
        # a new priority for L's waiting job: L settled, 5276(L) held until commit
        caller_first=("UPDATE pcq_jobs SET priority = 5 WHERE id = %s", [waiting]),
        # one outcome batch: a retry of the rate job (5280(R)), L's holder done (5276(L))
        worker=(
            "UPDATE pcq_jobs SET status = CASE WHEN id = %(retry)s THEN 'todo' ELSE 'succeeded' "
            "END, scheduled_at = CASE WHEN id = %(retry)s THEN now() ELSE scheduled_at END, "
            "started_at = CASE WHEN id = %(retry)s THEN NULL ELSE started_at END, "
            "finished_at = CASE WHEN id = %(retry)s THEN NULL ELSE now() END "
            "WHERE id IN (%(retry)s, %(done)s) AND status = 'doing'",
            {"retry": running_rated, "done": holder},
        ),
        caller_then=(CANCEL, [granted]),  # a granted job of R leaves: wants 5280(R)
    )


def _interleave(db_dsn: str, caller_first: Any, worker: Any, caller_then: Any) -> None:
    """The caller's first statement; the worker's, until it waits on an advisory lock; the
    caller's second and its commit. Raises what either transaction raised (a deadlock)."""
    errors: dict[str, BaseException] = {}
    with (
        psycopg.connect(db_dsn) as caller,
        psycopg.connect(db_dsn) as outcome,
        psycopg.connect(db_dsn, autocommit=True) as observer,
    ):
        [outcome_pid] = outcome.execute("SELECT pg_backend_pid()").fetchone()
        outcome.commit()
        caller.execute(*caller_first)

        def worker_statement() -> None:
            try:
                outcome.execute(*worker)
                outcome.commit()
            except psycopg.Error as exc:
                errors["worker"] = exc
                outcome.rollback()

        thread = threading.Thread(target=worker_statement)
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
                what="the worker's statement waiting for the caller's advisory lock",
            )
            try:
                caller.execute(*caller_then)
                caller.commit()
            except psycopg.Error as exc:
                errors["caller"] = exc
                caller.rollback()
        finally:
            thread.join(30)
    for error in errors.values():
        raise error
