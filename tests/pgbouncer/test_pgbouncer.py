"""Behind a real PgBouncer (transaction and session mode): prepared statements, wake-ups, a worker
drain.

Every test runs in both modes (conftest.py); a test about one mode only skips
in the other, saying why.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg
import psycopg_pool
import pytest

import procrastinate_core as pc
from procrastinate_core import exceptions
from procrastinate_core.contrib.aiopg import AiopgConnector
from tests.integration.worker_support import running_worker, wait_status
from tests.pgbouncer.bouncer import Bouncer
from tests.support.waiting import wait_until_async

WORKER_LOGGER = "procrastinate_core.worker"


def _only(pgbouncer: Bouncer, mode: str) -> None:
    if pgbouncer.mode != mode:
        pytest.skip(f"about pool_mode = {mode}; this run is {pgbouncer.mode}")


def _statuses(db_conn: psycopg.Connection[Any]) -> dict[str, int]:
    rows = db_conn.execute("SELECT status, count(*) FROM pcq_jobs GROUP BY status").fetchall()
    return {status: count for status, count in rows}


def _listening(worker: Any) -> Any:
    async def check() -> bool:
        return bool(worker.listening)

    return check


def _bouncer_clients(pgbouncer: Bouncer, db_name: str) -> list[str]:
    """application_name of the clients the bouncer holds for this database."""
    return [
        str(row.get("application_name") or "")
        for row in pgbouncer.show("CLIENTS")
        if row.get("database") == db_name
    ]


def test_psycopg_prepared_statements_break_transaction_pooling_unless_pooler_is_set(
    pgbouncer: Bouncer, pooled_params: dict[str, Any], db_conn: psycopg.Connection[Any]
) -> None:
    """The reported failure, reproduced, and its fix: two clients alternate the same defer.

    psycopg prepares a query run 5 times on a connection; the next client's
    transaction lands on the same server connection and prepares the same name.
    """
    _only(pgbouncer, "transaction")

    def alternate(pooler: str | None) -> None:
        apps = [
            pc.App(
                connector=pc.SyncPsycopgConnector(
                    min_size=1, max_size=1, pooler=pooler, **pooled_params
                )
            )
            for _ in range(2)
        ]
        for app in apps:
            app.open()
        try:
            for i in range(10):
                for app in apps:
                    app.configure_task("t").defer(i=i)
        finally:
            for app in apps:
                app.close()

    with pytest.raises(exceptions.ConnectorException, match="prepared statement"):
        alternate(None)
    db_conn.execute("TRUNCATE pcq_jobs CASCADE")
    alternate("transaction")
    assert _statuses(db_conn) == {"todo": 20}


def test_an_explicit_prepare_threshold_is_kept_for_poolers_that_support_it() -> None:
    """PgBouncer >= 1.21 with max_prepared_statements keeps them: the user says so with kwargs."""
    default = pc.SyncPsycopgConnector(pooler="transaction")._settings.connection_kwargs()
    assert default["prepare_threshold"] is None
    kept = pc.SyncPsycopgConnector(pooler="transaction", kwargs={"prepare_threshold": 5})
    assert kept._settings.connection_kwargs()["prepare_threshold"] == 5
    assert "prepare_threshold" not in pc.SyncPsycopgConnector()._settings.connection_kwargs()


def _async_connector(
    kind: str, params: dict[str, Any], **extra: Any
) -> pc.PsycopgConnector | AiopgConnector:
    if kind == "aiopg":
        return AiopgConnector(minsize=1, maxsize=6, **params, **extra)
    if kind == "psycopg-null-pool":  # procrastinate's recipe behind PgBouncer
        return pc.PsycopgConnector(
            pool_factory=psycopg_pool.AsyncNullConnectionPool, max_size=6, **params, **extra
        )
    return pc.PsycopgConnector(min_size=1, max_size=6, **params, **extra)


@pytest.mark.parametrize("kind", ["psycopg", "psycopg-null-pool", "aiopg"])
def test_worker_drains_a_queue_through_pgbouncer(
    kind: str,
    pgbouncer: Bouncer,
    pooled_params: dict[str, Any],
    direct_listen_dsn: str,
    db_name: str,
    db_conn: psycopg.Connection[Any],
) -> None:
    extra: dict[str, Any] = {"pooler": pgbouncer.mode}
    if pgbouncer.mode == "transaction":
        extra["listen_dsn"] = direct_listen_dsn
    app = pc.App(connector=_async_connector(kind, pooled_params, **extra))
    seen: list[int] = []

    @app.task(name="bounced")
    async def bounced(i: int) -> None:
        seen.append(i)

    @app.task(name="bounced_sync")
    def bounced_sync(i: int) -> None:
        bounced.defer(i=i + 1000)  # a sync job deferring through the bridge, through the bouncer

    with app.open():  # the sync counterpart, through the bouncer too
        app.configure_task("bounced").batch_defer(*({"i": i} for i in range(300)))
        for i in range(30):
            bounced_sync.defer(i=i)
    app.run_worker(wait=False, concurrency=4, install_signal_handlers=False)
    assert _statuses(db_conn) == {"succeeded": 360}
    assert sorted(seen) == list(range(300)) + [i + 1000 for i in range(30)]
    stats = {row["database"]: row for row in pgbouncer.show("STATS")}
    assert (
        int(stats[db_name]["total_xact_count"]) > 60
    )  # the defers and claims went through the bouncer


@pytest.mark.parametrize("kind", ["psycopg", "aiopg"])
async def test_without_listen_dsn_behind_a_transaction_pooler_the_worker_polls_and_says_so(
    kind: str, pgbouncer: Bouncer, pooled_params: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    _only(pgbouncer, "transaction")
    app = pc.App(connector=_async_connector(kind, pooled_params, pooler="transaction"))
    assert isinstance(app.connector, pc.PsycopgConnector | AiopgConnector)
    assert "polling every 1 s" in app.connector.wake_up_mode
    caplog.set_level(logging.INFO, logger=WORKER_LOGGER)
    async with app.open_async():
        # Polling every 60 s: only the connector's 1 s wake-ups can start the job in time.
        async with running_worker(app, fetch_job_polling_interval=60):
            job_id = await app.configure_task("t").defer_async()
            await wait_status(
                app, job_id, "failed", timeout=10
            )  # task "t" is unknown: it fails, fast
    [line] = [r.getMessage() for r in caplog.records if "wakes up by" in r.getMessage()]
    assert "polling every 1 s (transaction pooler and no listen_dsn" in line


@pytest.mark.parametrize("kind", ["psycopg", "aiopg"])
async def test_listen_dsn_listens_on_the_server_itself_and_the_worker_says_so(
    kind: str,
    pgbouncer: Bouncer,
    pooled_params: dict[str, Any],
    direct_listen_dsn: str,
    db_name: str,
    db_conn: psycopg.Connection[Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    _only(pgbouncer, "transaction")
    connector = _async_connector(
        kind, pooled_params, pooler="transaction", listen_dsn=direct_listen_dsn
    )
    app = pc.App(connector=connector)
    caplog.set_level(logging.INFO, logger=WORKER_LOGGER)
    async with app.open_async():
        async with running_worker(app, fetch_job_polling_interval=60) as worker:
            await wait_until_async(_listening(worker), what="the listener")
            job_id = await app.configure_task("t").defer_async()
            await wait_status(app, job_id, "failed", timeout=10)
            # The listener is a direct connection: the server sees it, the bouncer does not.
            names = {
                r[0]
                for r in db_conn.execute(
                    "SELECT application_name FROM pg_stat_activity WHERE datname = "
                    "current_database()"
                )
            }
            assert "procrastinate_core-listener" in names
            assert not [
                name for name in _bouncer_clients(pgbouncer, db_name) if name.endswith("-listener")
            ]
    [line] = [r.getMessage() for r in caplog.records if "wakes up by" in r.getMessage()]
    assert "LISTEN on a direct connection" in line


async def test_session_pooling_listens_through_the_bouncer(
    pgbouncer: Bouncer,
    pooled_params: dict[str, Any],
    db_name: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _only(pgbouncer, "session")
    app = pc.App(
        connector=pc.PsycopgConnector(min_size=1, max_size=4, pooler="session", **pooled_params)
    )
    caplog.set_level(logging.INFO, logger=WORKER_LOGGER)
    async with app.open_async():
        async with running_worker(app, fetch_job_polling_interval=60) as worker:
            await wait_until_async(_listening(worker), what="the listener")
            assert "procrastinate_core-listener" in _bouncer_clients(pgbouncer, db_name)
            job_id = await app.configure_task("t").defer_async()
            await wait_status(
                app, job_id, "failed", timeout=10
            )  # woken by NOTIFY, not the 60 s poll
    [line] = [r.getMessage() for r in caplog.records if "wakes up by" in r.getMessage()]
    assert "LISTEN through the session pooler" in line
