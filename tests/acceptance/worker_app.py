"""An app for worker subprocesses in acceptance tests.

Run as `python -m tests.acceptance.worker_app DSN JSON_OPTIONS`. Tasks write a
ledger (table `ledger`) on their own connection, from which the tests count
starts and successes and check ordering.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time

import psycopg

import procrastinate_core as pc
from procrastinate_core import exceptions

DSN = os.environ.get("PCQ_TEST_DSN", "")
app = pc.App(connector=pc.PsycopgConnector(conninfo=DSN, min_size=1, max_size=4))

LEDGER_SQL = """
CREATE TABLE IF NOT EXISTS ledger (
    id bigint GENERATED ALWAYS AS IDENTITY, job_id bigint, event text, attempt int,
    pid int, at timestamptz DEFAULT clock_timestamp()
)
"""


_local = threading.local()


def write_ledger(job_id: int, event: str, attempt: int) -> None:
    """Insert a ledger row on this thread's own connection (not the worker's pool)."""
    conn = getattr(_local, "conn", None)
    if conn is None:
        conn = _local.conn = psycopg.connect(DSN, autocommit=True)
    conn.execute(
        "INSERT INTO ledger (job_id, event, attempt, pid) VALUES (%s, %s, %s, %s)",
        [job_id, event, attempt, os.getpid()],
    )


@app.task(name="ledger", pass_context=True)
def ledger(context: pc.JobContext, seconds: float = 0, first_attempt_seconds: float = 0) -> str:
    job = context.job
    write_ledger(job.id or 0, "start", job.claims)
    time.sleep(first_attempt_seconds if job.claims == 1 and first_attempt_seconds else seconds)
    write_ledger(job.id or 0, "success", job.claims)
    return "ok"


@app.task(name="cooperative", pass_context=True)
def cooperative(context: pc.JobContext, seconds: float = 60) -> str:
    job = context.job
    write_ledger(job.id or 0, "start", job.claims)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if context.should_abort():
            raise exceptions.JobAborted("stopping")
        time.sleep(0.05)
    write_ledger(job.id or 0, "success", job.claims)
    return "ok"


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(process)d %(name)s %(message)s")
    options = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
    app.run_worker(**options)


if __name__ == "__main__":
    main()
