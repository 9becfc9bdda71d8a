# ruff: noqa: F811  (fixtures from connector_cases are imported, then requested by name)
"""Rate limits (#13 point 2, migration 0012) on every connector, then PostgreSQL-only checks.

A job's readiness is checked the way a worker sees it: by what a claim
returns. Checks that a window holds use an hour-long period (nothing expires
during the test, however slow the machine); checks that time frees a window
use a short one and wait for the stager's pass, never a guessed sleep.
"""

from __future__ import annotations

import datetime
import threading
from typing import Any

import psycopg
import pytest

import procrastinate_core as pc
from procrastinate_core import exceptions
from procrastinate_core.periodic_deferrer import PeriodicDeferrer
from procrastinate_core.stager import Stager, StagerConfig
from procrastinate_core.testing import InMemoryConnector
from procrastinate_core.worker_operations import JobOutcome
from tests.integration.connector_cases import (  # noqa: F401 - fixtures
    _forget_django_aliases,
    every_connector,
)
from tests.integration.test_flow_control_contract import claim, finish
from tests.support.waiting import wait_until, wait_until_async

UTC = datetime.timezone.utc
HOUR = 3600


async def test_a_key_starts_at_most_n_per_period_whatever_happens_to_the_jobs(every_connector):
    app = every_connector.app()
    async with app.open_async():
        m = app.job_manager
        w = await m.register_worker_async("w")
        limited = app.configure_task("t", rate_limit=2, rate_period=HOUR)
        ids = [await limited.defer_async(n=i) for i in range(6)]
        free = await app.configure_task("free").defer_async()
        assert await claim(m, w) == [ids[0], ids[1], free]
        assert await claim(m, w) == []  # two started this hour: the rest wait
        # Finishing does not give a start back (a concurrency limit would).
        await finish(m, w, ids[0], "succeeded")
        await finish(m, w, ids[1], "todo")  # a retry starts again only when granted
        assert await claim(m, w) == []
        assert await m.promote_rate_limited_async() == (0, 0)  # nothing due for an hour
        assert [j.status for j in await m.list_jobs_async(id=ids[1])] == [pc.Status.TODO]
        types = [e["type"] for e in await m.list_job_events_async(ids[2])]
        assert types == ["deferred"]  # waiting for a grant is not an event
        # the queue's stats count the rate-held jobs as waiting (todo)
        [stats] = await m.get_queue_stats_async()
        assert (stats.todo, stats.doing) == (5, 1)  # ids[1] (retried), ids[2:]; `free` runs

        # A granted job cancelled (or deleted) before it starts gives its grant back.
        other = app.configure_task("u", rate_limit=1, rate_period=HOUR)
        o1, o2, o3 = [await other.defer_async() for _ in range(3)]
        assert await m.cancel_job_by_id_async(o1)  # granted, not claimed: o2 is granted
        assert await m.cancel_job_by_id_async(o2, delete_job=True)  # deleted: o3 is
        assert await claim(m, w) == [o3]
        assert await claim(m, w) == []


async def test_time_frees_the_window_through_the_stager(every_connector):
    app = every_connector.app()
    async with app.open_async():
        m = app.job_manager
        w = await m.register_worker_async("w")
        period = 0.4
        ids = await app.configure_task(
            "t", rate_key="api", rate_limit=1, rate_period=period
        ).batch_defer_async({}, {}, {})
        claimed: list[int] = []
        stager = Stager(m)

        async def one_more() -> bool:
            await stager.stage()
            claimed.extend(await claim(m, w))
            return len(claimed) == 3

        await wait_until_async(one_more, timeout=30, what="three starts, one per period")
        assert claimed == ids  # in defer order
        starts = sorted(j.started_at for j in await m.list_jobs_async() if j.started_at)
        gaps = [(b - a).total_seconds() for a, b in zip(starts, starts[1:], strict=False)]
        assert all(gap >= period for gap in gaps), gaps  # one start per period, on the db clock


async def test_the_stager_wakes_when_a_window_frees(every_connector):
    """Not at its next pass a whole interval later: "N/s" would run at half its rate."""
    app = every_connector.app()
    async with app.open_async():
        m = app.job_manager
        w = await m.register_worker_async("w")
        stager = Stager(m, StagerConfig(interval=30))
        assert await stager.step() == 30  # no rate key waits
        await app.configure_task("t", rate_limit=1, rate_period=5).batch_defer_async({}, {})
        assert len(await claim(m, w)) == 1
        wait = await stager.step()
        assert stager.config.min_rate_wait <= wait <= 5  # when the first start expires


async def test_keys_string_form_and_priority(every_connector):
    app = every_connector.app()
    async with app.open_async():
        m = app.job_manager
        w = await m.register_worker_async()

        @app.task(
            name="call_api", rate_limit="1/h", rate_key=lambda account, **_: f"acct:{account}"
        )
        def call_api(account: int) -> None: ...

        a1, a2, b1 = await call_api.batch_defer_async(
            {"account": 1}, {"account": 1}, {"account": 2}
        )
        assert await claim(m, w) == [a1, b1]  # each key has its own window
        assert await claim(m, w) == []
        # configure() overrides the limit for one defer: a new key, 2 per hour
        c = call_api.configure(rate_limit=2, rate_period=HOUR, rate_key="acct:3")
        c1, c2, _ = await c.batch_defer_async({"account": 3}, {"account": 3}, {"account": 3})
        assert await claim(m, w) == [c1, c2]
        # the best waiting job is granted first: priority, then defer order
        d = {"rate_limit": 1, "rate_period": HOUR, "rate_key": "acct:4"}
        d0 = await call_api.configure(**d).defer_async(account=4)  # granted at once
        await call_api.configure(**d).defer_async(account=4)
        d2 = await call_api.configure(**d, priority=9).defer_async(account=4)
        assert await m.cancel_job_by_id_async(d0)  # gives its grant back
        assert await claim(m, w) == [d2]
        assert a2


async def test_a_scheduled_job_waits_for_its_grant_and_its_slot(every_connector):
    """A due job goes through its rate limit (and its concurrency limit) like any other."""
    app = every_connector.app()
    async with app.open_async():
        m = app.job_manager
        w = await m.register_worker_async()
        soon = {"seconds": 0.05}
        rated = app.configure_task("r", rate_limit=1, rate_period=HOUR)
        limited = app.configure_task("c", concurrency_limit=1)
        r1 = await rated.defer_async()
        r2 = await app.configure_task(
            "r", rate_limit=1, rate_period=HOUR, schedule_in=soon
        ).defer_async()
        c1 = await limited.defer_async()
        c2 = await app.configure_task("c", concurrency_limit=1, schedule_in=soon).defer_async()
        promoted = 0

        async def both_promoted() -> bool:
            nonlocal promoted
            promoted += await m.promote_due_jobs_async()
            return promoted == 2

        await wait_until_async(both_promoted, timeout=30, what="the two schedules to come due")
        assert await claim(m, w) == [r1, c1]  # r2 and c2 are due, but held
        await finish(m, w, c1, "succeeded")
        assert await claim(m, w) == [c2]  # c1's slot
        await finish(m, w, r1, "succeeded")
        assert await claim(m, w) == []  # r1's start still counts this hour
        assert r2


async def test_a_granted_job_of_a_paused_queue_keeps_its_grant(every_connector):
    app = every_connector.app()
    async with app.open_async():
        m = app.job_manager
        w = await m.register_worker_async()
        await m.pause_queue_async("q")
        rated = app.configure_task("t", queue="q", rate_limit=1, rate_period=HOUR)
        j1, j2 = await rated.batch_defer_async({}, {})
        assert await claim(m, w) == []
        assert await m.resume_queue_async("q") == 1  # j1, granted while paused
        assert await claim(m, w) == [j1]
        assert await claim(m, w) == []
        assert j2


def test_rate_options_are_checked_before_any_sql():
    app = pc.App(connector=InMemoryConnector())
    plain = app.task(name="plain")(lambda: None)
    for bad in (0, -1, True, 1.5, "ten", "10/", "10/w", "/s", "0/s"):
        with pytest.raises(exceptions.ConfigurationError, match="rate_limit="):
            plain.configure(rate_limit=bad)
    for bad in (0, -2, "1", True):
        with pytest.raises(exceptions.ConfigurationError, match="rate_period="):
            plain.configure(rate_limit=3, rate_period=bad)
    with pytest.raises(exceptions.ConfigurationError, match="already says its period"):
        plain.configure(rate_limit="3/m", rate_period=60)
    with pytest.raises(exceptions.ConfigurationError, match="needs rate_limit=N"):
        plain.configure(rate_key="K")
    with pytest.raises(exceptions.ConfigurationError, match="needs rate_limit=N"):
        plain.configure(rate_period=5)
    with pytest.raises(exceptions.ConfigurationError, match="rate_key="):
        plain.configure(rate_key="", rate_limit=1)
    with pytest.raises(exceptions.ConfigurationError, match="lock='L' and rate_limit=1"):
        app.task(name="both", lock="L", rate_limit=1)(lambda: None)
    with pytest.raises(exceptions.ConfigurationError, match="cannot be combined"):
        plain.configure(lock="L", rate_limit=1)
    with pytest.raises(exceptions.ConfigurationError, match="function returned 7"):
        plain.configure(rate_key=lambda **_: 7, rate_limit=1).defer()
    assert app.connector.jobs == {}  # type: ignore[attr-defined]
    # The forms that are accepted, as (starts, seconds).
    forms: list[tuple[dict[str, Any], tuple[int, float]]] = [
        ({"rate_limit": 5}, (5, 1.0)),
        ({"rate_limit": "10/m"}, (10, 60.0)),
        ({"rate_limit": "100/h"}, (100, 3600.0)),
        ({"rate_limit": "2/d"}, (2, 86400.0)),
        ({"rate_limit": "3/10s"}, (3, 10.0)),
        ({"rate_limit": 4, "rate_period": datetime.timedelta(minutes=2)}, (4, 120.0)),
    ]
    for given, expected in forms:
        flow = plain.configure(**given).flow
        assert (flow.rate_limit, flow.rate_period) == expected
    # configure(rate_limit="...") on a task with a period replaces both
    task = app.task(name="per_minute", rate_limit=5, rate_period=60)(lambda: None)
    assert (task.configure(rate_limit="1/s").flow.rate_limit, 1.0) == (
        1,
        task.configure(rate_limit="1/s").flow.rate_period,
    )


# -- PostgreSQL only -----------------------------------------------------------------
def test_concurrent_claimers_never_start_more_than_n_per_window(app, db_dsn):
    """Claimers, deferrers and stagers in many transactions at once: at most 3 starts
    per 0.5 s window of the database clock, over every start recorded."""
    m = app.job_manager
    stop = threading.Event()
    errors: list[BaseException] = []
    period, limit, total = 0.5, 3, 24

    def deferrer() -> None:
        try:
            for _ in range(total // 2):
                app.configure_task("t", rate_key="K", rate_limit=limit, rate_period=period).defer()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def runner() -> None:
        try:
            w = m.register_worker()
            while not stop.is_set():
                m.promote_rate_limited(10)
                for job in m.fetch_jobs(w, None, 2):
                    m.finish_jobs([JobOutcome(job.id, w, job.claims, pc.Status.SUCCEEDED)])  # type: ignore[arg-type]
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=deferrer) for _ in range(2)]
    helpers = [threading.Thread(target=runner) for _ in range(3)]
    for thread in threads + helpers:
        thread.start()
    for thread in threads:
        thread.join(60)
    try:
        wait_until(
            lambda: len(m.list_jobs(status="succeeded")) == total,
            timeout=90,
            what="every job run",
        )
    finally:
        stop.set()
        for thread in helpers:
            thread.join(30)
    assert errors == []
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        starts = [row[0] for row in conn.execute("SELECT started_at FROM pcq_jobs ORDER BY 1")]
        recorded = conn.execute("SELECT count(*) FROM pcq_rate_starts").fetchone()
    assert recorded is not None and recorded[0] <= total
    worst = max(
        sum(1 for s in starts if a <= s < a + datetime.timedelta(seconds=period)) for a in starts
    )
    assert worst <= limit, (worst, starts)


def test_a_defer_holding_the_key_does_not_stall_the_stager(app, db_dsn):
    """A caller's open transaction that deferred a rate job holds the key's lock: the
    stager skips that key (it stays due) instead of waiting for the commit."""
    m = app.job_manager
    app.configure_task("t", rate_key="K", rate_limit=1, rate_period=0.2).batch_defer({}, {})
    app.configure_task("t", rate_key="K2", rate_limit=1, rate_period=0.2).batch_defer({}, {})
    w = m.register_worker()
    assert len(m.fetch_jobs(w, None, 10)) == 2  # one of each key
    with psycopg.connect(db_dsn) as conn:  # a transaction left open, holding key K
        app.configure_task(
            "t", rate_key="K", rate_limit=1, rate_period=0.2, connection=conn
        ).defer()
        got: list[Any] = []

        def granted() -> list[Any]:
            m.promote_rate_limited(10)
            got.extend(job.task_name for job in m.fetch_jobs(w, None, 10))
            return got

        wait_until(
            granted, timeout=30, what="key K2's second job granted past the open transaction"
        )
        conn.rollback()
    [k2_rows] = [[j for j in m.list_jobs() if j.status == pc.Status.DOING]]
    assert len(k2_rows) == 3  # K's first, K2's two; K's second still waits (its key was skipped)


async def test_periodic_jobs_carry_their_tasks_limits(every_connector):
    """A periodic task's concurrency limit and rate limit hold for its ticks' jobs."""
    app = every_connector.app()
    for name, options in (("every_tick_one_at_a_time", {"concurrency_limit": 1}),
                          ("every_tick_once_an_hour", {"rate_limit": "1/h"})):  # fmt: skip

        async def tick(timestamp: int) -> int:
            return timestamp

        app.periodic(cron="* * * * * *", periodic_id=name)(app.task(name=name, **options)(tick))
    async with app.open_async():
        m = app.job_manager
        w = await m.register_worker_async()
        start = float(int(datetime.datetime.now(UTC).timestamp()))
        clock = [start]
        deferrer = PeriodicDeferrer.from_app(app, clock=lambda: clock[0])
        for second in range(3):
            clock[0] = start + second
            assert await deferrer.defer_due() == 2
        claimed = await m.fetch_jobs_async(w, None, 10)
        assert sorted(job.task_name for job in claimed) == [
            "every_tick_once_an_hour",
            "every_tick_one_at_a_time",
        ]
        assert len(await m.list_jobs_async(status="todo")) == 4  # held by their limits
