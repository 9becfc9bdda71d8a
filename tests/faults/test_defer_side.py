"""F12 (queueing_lock races) and F14 (non-JSON arguments), for every real connector.

The connectors are the contract suite's CASES (tests/integration/connector_cases.py):
PsycopgConnector, SyncPsycopgConnector, AiopgConnector, Psycopg2Connector,
SQLAlchemyPsycopg2Connector and the Django connector. F13 (Django rollback
after defer) is covered by tests/django/test_transactions.py (see docs/reliability.md).
"""

from __future__ import annotations

import asyncio
import datetime
import decimal
import json
import threading
from typing import Any

import psycopg
import pytest

import procrastinate_core as pc
from procrastinate_core import exceptions
from tests.integration.connector_cases import REAL, Case, url_of

THREADS = 10
DEFERS_PER_THREAD = 10


@pytest.fixture(params=REAL, ids=[case.name for case in REAL])
def case(request: pytest.FixtureRequest) -> Case:
    return request.param


def _app(case: Case, url: str, **hooks: Any) -> pc.App:
    app = pc.App(connector=case.build(url, **hooks))

    @app.task(name="noop", queueing_lock="the-lock")
    def noop(**kwargs: Any) -> None:
        return None

    @app.task(name="plain")
    def plain(**kwargs: Any) -> None:
        return None

    return app


def _race(case: Case, app: pc.App) -> list[BaseException | int]:
    """THREADS x DEFERS_PER_THREAD concurrent defers with the same queueing lock."""
    task = app.tasks["noop"]
    if case.kind == "async":

        async def run() -> list[BaseException | int]:
            async with app.open_async():
                return await asyncio.gather(
                    *(task.defer_async(n=n) for n in range(THREADS * DEFERS_PER_THREAD)),
                    return_exceptions=True,
                )

        return asyncio.run(run())
    results: list[BaseException | int] = []
    lock = threading.Lock()
    with app.open():

        def worker() -> None:
            for n in range(DEFERS_PER_THREAD):
                try:
                    outcome: BaseException | int = task.defer(n=n)
                except BaseException as exc:  # noqa: BLE001 - collected and asserted below
                    outcome = exc
                with lock:
                    results.append(outcome)

        threads = [threading.Thread(target=worker) for _ in range(THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    return results


def test_f12_queueing_lock_race(
    case: Case, db_params: dict[str, str], db_conn: psycopg.Connection[Any]
) -> None:
    results = _race(case, _app(case, url_of(db_params)))
    winners = [r for r in results if isinstance(r, int)]
    losers = [r for r in results if not isinstance(r, int)]
    assert len(winners) == 1, results[:5]
    assert len(losers) == THREADS * DEFERS_PER_THREAD - 1
    odd = [r for r in losers if not isinstance(r, exceptions.AlreadyEnqueued)]
    assert not odd, f"losers must get AlreadyEnqueued, got {odd[:3]!r}"
    assert "queueing lock" in str(losers[0])
    rows = db_conn.execute(
        "SELECT count(*) FROM pcq_jobs WHERE queueing_lock = 'the-lock' AND status = 'todo'"
    ).fetchone()
    assert rows == (1,)


def test_f12_retry_and_recovery_with_the_lock_taken(psycopg_harness: Any) -> None:
    """Variant (procrastinate 1446/1543): a failing job with the lock is retried while a new
    todo job holds the lock, and stalled recovery meets the same case: the worker keeps
    running and the old job ends `failed` (retry) or `cancelled` (recovery), no manual SQL."""
    harness = psycopg_harness
    # The retry case: job 1 fails and wants a retry; job 2 with the same lock waits.
    [first] = harness.defer("fail_after", queueing_lock="L", kwargs={"seconds": 1})
    w = harness.start_worker("A")
    harness.conn.execute("SELECT 1")
    from tests.support.waiting import wait_until

    wait_until(lambda: harness.starts(first) >= 1, what="first attempt")
    [waiting] = harness.defer(
        "sleep_async",
        queueing_lock="L",
        kwargs={"seconds": 0},
        scheduled_at="2100-01-01T00:00:00+00:00",
    )
    harness.wait_status([first], "failed", timeout=10)
    # The stalled-recovery case: a doing job of a dead worker, its lock held by a todo job.
    [stalled] = harness.defer("sleep_async", queueing_lock="M")
    harness.conn.execute(
        "UPDATE pcq_jobs SET status = 'doing', worker_id = 999999, attempts = 1 WHERE id = %s",
        (stalled,),
    )
    [holder] = harness.defer(
        "sleep_async", queueing_lock="M", scheduled_at="2100-01-01T00:00:00+00:00"
    )
    harness.wait_status([stalled], "cancelled", timeout=5)
    assert w.proc.poll() is None
    harness.stop_all()
    harness.check(
        allowed_todo=[waiting, holder], expected_tracebacks=(r"OSError: fails after a while",)
    )


BAD_VALUES: list[tuple[str, Any]] = [
    ("when", datetime.datetime(2024, 1, 1)),
    ("tags", {"a", "b"}),
    ("thing", object()),
    ("raw", b"bytes"),
    ("amount", decimal.Decimal("1.5")),
    ("ratio", float("nan")),
    ("text", "a\x00b"),
]


@pytest.mark.parametrize(("key", "value"), BAD_VALUES, ids=[k for k, _ in BAD_VALUES])
def test_f14_non_json_arguments_rejected_at_defer(
    case: Case, db_params: dict[str, str], db_conn: psycopg.Connection[Any], key: str, value: Any
) -> None:
    app = _app(case, url_of(db_params))
    task = app.tasks["noop"].configure(queueing_lock=None)

    def attempt() -> None:
        with pytest.raises(exceptions.ArgumentSerializationError) as error:
            task.defer(**{key: value})
        assert repr(key) in str(error.value) and type(value).__name__ in str(error.value)
        # The connection is not left in a failed state: a good defer works right after.
        assert isinstance(task.defer(ok=1), int)

    if case.kind == "async":

        async def run() -> None:
            async with app.open_async():
                with pytest.raises(exceptions.ArgumentSerializationError) as error:
                    await task.defer_async(**{key: value})
                assert repr(key) in str(error.value) and type(value).__name__ in str(error.value)
                assert isinstance(await task.defer_async(ok=1), int)

        asyncio.run(run())
    else:
        with app.open():
            attempt()
    assert db_conn.execute("SELECT count(*) FROM pcq_jobs").fetchone() == (1,)


def test_f14_bad_argument_leaves_callers_transaction_usable(
    case: Case, db_params: dict[str, str], db_conn: psycopg.Connection[Any]
) -> None:
    """Inside the caller's own transaction: the rejected defer aborts nothing;
    the commit keeps the good job."""
    if case.transaction is None:
        pytest.skip(f"{case.name} cannot join a caller's transaction")
    url = url_of(db_params)
    with _app(case, url).open() as app:
        with case.transaction(url, True) as connection:
            app.job_manager.defer_job(
                app.configure_task("plain").make_new_job(before=1), connection=connection
            )
            with pytest.raises(exceptions.ArgumentSerializationError):
                bad = app.configure_task("plain").make_new_job(ratio=float("nan"))
                app.job_manager.defer_job(bad, connection=connection)
            app.job_manager.defer_job(
                app.configure_task("plain").make_new_job(after=1), connection=connection
            )
    assert db_conn.execute("SELECT count(*) FROM pcq_jobs").fetchone() == (2,)


def test_f14_custom_json_round_trip(case: Case, db_params: dict[str, str]) -> None:
    def dumps(value: Any) -> str:
        return json.dumps(
            value,
            default=lambda v: {"__decimal__": str(v)} if isinstance(v, decimal.Decimal) else str(v),
        )

    def loads(text: str) -> Any:
        return json.loads(
            text,
            object_hook=lambda d: decimal.Decimal(d["__decimal__"]) if "__decimal__" in d else d,
        )

    app = _app(case, url_of(db_params), json_dumps=dumps, json_loads=loads)
    task = app.tasks["noop"].configure(queueing_lock=None)
    if case.kind == "async":

        async def run() -> Any:
            async with app.open_async():
                job_id = await task.defer_async(amount=decimal.Decimal("1.25"))
                return (await app.job_manager.list_jobs_async(id=job_id))[0]

        job = asyncio.run(run())
    else:
        with app.open():
            job_id = task.defer(amount=decimal.Decimal("1.25"))
            job = app.job_manager.list_jobs(id=job_id)[0]
    assert job.task_kwargs == {"amount": decimal.Decimal("1.25")}
