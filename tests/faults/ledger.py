"""The ledger: one row per attempt a task actually started, written by the task itself.

Each worker thread keeps its own autocommit connection (application_name
`fault-ledger`), so a ledger write never joins the queue's transactions and
survives whatever the fault does to the worker's pool. Writes retry until the
database answers again (a server restart is one of the faults).
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import psycopg

CREATE = """
CREATE TABLE IF NOT EXISTS fault_ledger (
    id bigserial PRIMARY KEY,
    job_id bigint NOT NULL,
    attempt integer NOT NULL,
    pid integer NOT NULL,
    started_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at timestamptz,
    outcome text
)
"""

_local = threading.local()


def _dsn() -> str:
    return os.environ["PCQ_FAULT_LEDGER_DSN"]


def _execute(query: str, params: tuple[Any, ...]) -> Any:
    deadline = time.monotonic() + 60
    while True:
        conn = getattr(_local, "conn", None)
        try:
            if conn is None or conn.closed:
                conn = _local.conn = psycopg.connect(
                    _dsn(), autocommit=True, application_name="fault-ledger", connect_timeout=2
                )
            return conn.execute(query, params).fetchone()
        except psycopg.OperationalError:
            _local.conn = None
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def start(job_id: int, attempt: int) -> int:
    """Records that this process started this attempt; returns the ledger row id."""
    row = _execute(
        "INSERT INTO fault_ledger (job_id, attempt, pid) VALUES (%s, %s, %s) RETURNING id",
        (job_id, attempt, os.getpid()),
    )
    return int(row[0])


def finish(row_id: int, outcome: str) -> None:
    _execute(
        "UPDATE fault_ledger SET finished_at = clock_timestamp(), outcome = %s WHERE id = %s "
        "RETURNING id",
        (outcome, row_id),
    )
