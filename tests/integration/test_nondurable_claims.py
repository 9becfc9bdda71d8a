"""durable_claims=False (docs/durability.md): the worker's claims commit with
synchronous_commit off in their own transaction, and nothing else of the worker's does.

What the setting was is read inside each transaction that changes a job: an AFTER
UPDATE trigger (added for the test) writes current_setting('synchronous_commit')
with the status the job moved to, so the claim ('doing') and the outcome
('succeeded', 'failed' or a retry back to 'todo') are seen apart.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

import procrastinate_core as pc
from procrastinate_core import exceptions, sql
from procrastinate_core.cli import build_parser
from procrastinate_core.cli.worker_flags import worker_options_from
from procrastinate_core.options import WorkerOptions

SPY = """
CREATE TABLE claim_spy (job_id bigint, status text, setting text);
CREATE FUNCTION claim_spy() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO claim_spy VALUES (NEW.id, NEW.status, current_setting('synchronous_commit'));
    RETURN NULL;
END $$;
CREATE TRIGGER claim_spy AFTER UPDATE OF status ON pcq_jobs
    FOR EACH ROW EXECUTE FUNCTION claim_spy();
"""
UNSPY = """
DROP TRIGGER IF EXISTS claim_spy ON pcq_jobs;
DROP FUNCTION IF EXISTS claim_spy();
DROP TABLE IF EXISTS claim_spy;
"""


@pytest.fixture
def spy(db_conn: psycopg.Connection[Any]) -> Iterator[psycopg.Connection[Any]]:
    db_conn.execute(SPY)
    try:
        yield db_conn
    finally:
        db_conn.execute(UNSPY)


def _settings(conn: psycopg.Connection[Any]) -> dict[str, set[str]]:
    seen: dict[str, set[str]] = {}
    for status, setting in conn.execute("SELECT status, setting FROM claim_spy"):
        seen.setdefault(status, set()).add(setting)
    return seen


def _register(app: pc.App) -> None:
    @app.task(name="fine")
    async def fine() -> None: ...

    @app.task(name="flaky", retry=1)
    async def flaky() -> None:
        raise RuntimeError("once more")


async def test_claims_commit_non_durably_and_outcomes_durably(async_app, spy):
    _register(async_app)
    ids = [await async_app.configure_task("fine").defer_async() for _ in range(3)]
    flaky = await async_app.configure_task("flaky").defer_async()
    await async_app.run_worker_async(wait=False, durable_claims=False, concurrency=2)
    for job_id in ids:
        assert await async_app.job_manager.get_job_status_async(job_id) == pc.Status.SUCCEEDED
    assert await async_app.job_manager.get_job_status_async(flaky) == pc.Status.FAILED
    # Four claims plus the retry's; the outcomes (success, retry, failure) stay durable.
    assert _settings(spy) == {
        "doing": {"off"},
        "succeeded": {"on"},
        "todo": {"on"},
        "failed": {"on"},
    }
    claims = spy.execute("SELECT count(*) FROM claim_spy WHERE status = 'doing'").fetchone()
    assert claims == (5,)


async def test_claims_are_durable_by_default(async_app, spy):
    _register(async_app)
    job_id = await async_app.configure_task("fine").defer_async()
    await async_app.run_worker_async(wait=False)
    assert await async_app.job_manager.get_job_status_async(job_id) == pc.Status.SUCCEEDED
    assert _settings(spy) == {"doing": {"on"}, "succeeded": {"on"}}


def test_the_setting_ends_with_the_claims_transaction(app, db_conn):
    """Off inside the claim's transaction only: the connection commits durably afterwards."""
    app.configure_task("fine").defer()
    [(worker_id,)] = db_conn.execute(
        sql.query("worker_register"), {"name": "w", "host": "h", "pid": 1}
    )
    params = {"worker_id": worker_id, "queues": None, "limit": 5}
    with db_conn.transaction():
        claimed = db_conn.execute(sql.query("job_fetch_many_nondurable"), params).fetchall()
        assert len(claimed) == 1
        assert db_conn.execute("SHOW synchronous_commit").fetchone() == ("off",)
    assert db_conn.execute("SHOW synchronous_commit").fetchone() == ("on",)


@pytest.mark.parametrize("bad", ["no", 0, None])
def test_a_bad_value_is_refused_before_any_sql(bad):
    with pytest.raises(exceptions.ConfigurationError, match="durable_claims"):
        WorkerOptions(durable_claims=bad)


def test_the_cli_flags():
    parser = build_parser(with_app_option=False)
    assert worker_options_from(parser.parse_args(["worker", "--no-durable-claims"])) == {
        "durable_claims": False
    }
    assert worker_options_from(parser.parse_args(["worker", "--durable-claims"])) == {
        "durable_claims": True
    }
