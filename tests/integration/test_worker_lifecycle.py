"""Every stop of a worker is bounded, wherever it lands (issue 11, F28).

Each phase is reached deterministically: a listener held at its connection by
a gate (`GatedConnector`, a real PsycopgConnector whose listen_notify waits on
an event first), a claim or an outcome write held by a real lock taken from
another connection, the worker's test signals. Never a guessed sleep. Each
stop (stop(), wait=False draining, cancelling the task) must return within
STOP_BOUND, leave no worker row and nothing `doing`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

import procrastinate_core as pc
from procrastinate_core.options import WorkerOptions
from procrastinate_core.worker import Worker
from procrastinate_core.worker_stop import STOP_BOUND
from tests.integration.worker_support import FAST
from tests.support.waiting import wait_until, wait_until_async


class GatedConnector(pc.PsycopgConnector):
    """A real connector whose listener waits at `gate` before connecting.

    With `deaf=True` the wait ignores cancellation, like a driver that swallows it.
    """

    def __init__(self, *args: Any, deaf: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.deaf = deaf
        self.gate: asyncio.Event | None = None
        self.at_gate: asyncio.Event | None = None

    def _events(self) -> tuple[asyncio.Event, asyncio.Event]:
        if self.gate is None or self.at_gate is None:
            self.gate, self.at_gate = asyncio.Event(), asyncio.Event()
        return self.gate, self.at_gate

    async def listen_notify(
        self, channels: Any, on_notification: Any, on_listening: Any = None
    ) -> None:
        gate, at_gate = self._events()
        at_gate.set()
        swallowed = False
        while True:
            try:
                await gate.wait()
                break
            except asyncio.CancelledError:
                if not self.deaf:
                    raise
                swallowed = True  # go on "connecting"
        if swallowed:
            raise asyncio.CancelledError  # the gate opened at the test's end: leave quietly
        await super().listen_notify(channels, on_notification, on_listening)


@pytest.fixture
def gated_app(db_dsn: str) -> Iterator[pc.App]:
    yield pc.App(connector=GatedConnector(conninfo=db_dsn, min_size=1, max_size=4, timeout=5))


def _worker(app: pc.App, **options: Any) -> Worker:
    return Worker(app, WorkerOptions.build(FAST, options))


async def _leftovers(app: pc.App) -> tuple[int, int]:
    workers = await app.job_manager.list_workers_async()
    doing = await app.job_manager.list_jobs_async(status="doing")
    return len(workers), len(doing)


def _stop(worker: Worker, task: asyncio.Task[None], how: str) -> None:
    if how == "stop":
        worker.stop()
    else:
        task.cancel()


async def _returns_within_bound(task: asyncio.Task[None], how: str) -> None:
    done, _ = await asyncio.wait({task}, timeout=STOP_BOUND)
    assert done, f"the worker did not return within STOP_BOUND={STOP_BOUND} s"
    if how == "cancel":
        assert task.cancelled() or isinstance(task.exception(), asyncio.CancelledError)
    else:
        task.result()


# -- before / while the listener connects ----------------------------------------


@pytest.mark.parametrize("how", ["stop", "cancel"])
@pytest.mark.parametrize(
    "deaf", [False, True], ids=["listener-cancellable", "listener-swallows-cancel"]
)
async def test_stop_while_the_listener_connects(
    gated_app: pc.App, how: str, deaf: bool, caplog
) -> None:
    gated_app.connector.deaf = deaf  # type: ignore[attr-defined]
    async with gated_app.open_async():
        worker = _worker(gated_app)
        task = asyncio.create_task(worker.run())
        await worker.signals.services_started.wait(1)
        await gated_app.connector._events()[1].wait()  # type: ignore[attr-defined]
        assert not worker.listening
        _stop(worker, task, how)
        await _returns_within_bound(task, how)
        assert await _leftovers(gated_app) == (0, 0)
        abandoned = "Worker service listener did not stop" in caplog.text
        assert abandoned is deaf
        gated_app.connector.deaf = False  # type: ignore[attr-defined]
        gated_app.connector._events()[0].set()  # type: ignore[attr-defined]


async def test_one_shot_run_returns_while_the_listener_is_still_connecting(
    gated_app: pc.App,
) -> None:
    """The fetch loop finds the queue empty before the listener is up (wait=False)."""
    gated_app.connector.deaf = True  # type: ignore[attr-defined]

    @gated_app.task
    async def noop() -> None:
        return None

    async with gated_app.open_async():
        job_id = await noop.defer_async()
        worker = _worker(gated_app, wait=False)
        task = asyncio.create_task(worker.run())
        await _returns_within_bound(task, "drain")
        assert await gated_app.job_manager.get_job_status_async(job_id) == "succeeded"
        assert await _leftovers(gated_app) == (0, 0)
        gated_app.connector.deaf = False  # type: ignore[attr-defined]
        gated_app.connector._events()[0].set()  # type: ignore[attr-defined]


async def test_one_shot_run_whose_listener_comes_up_as_the_queue_is_found_empty(
    gated_app: pc.App,
) -> None:
    """The hang of issue 11: the listener connects in the same loop turn as the drain."""
    async with gated_app.open_async():
        worker = _worker(gated_app, wait=False)
        task = asyncio.create_task(worker.run())
        await worker.signals.fetched.wait(1)  # the first claim found nothing
        gated_app.connector._events()[0].set()  # type: ignore[attr-defined]
        await _returns_within_bound(task, "drain")
        assert await _leftovers(gated_app) == (0, 0)


async def test_stop_while_the_listener_reconnects(async_app: pc.App, db_dsn: str) -> None:
    worker = _worker(async_app)
    task = asyncio.create_task(worker.run())
    await worker.signals.services_started.wait(1)
    assert worker.listener is not None
    await worker.listener.connected.wait(1)
    with psycopg.connect(db_dsn, autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND query LIKE 'LISTEN%%' AND pid <> "
            "pg_backend_pid()"
        )
    worker.stop()  # lands while the listener handles the loss / reconnects
    await _returns_within_bound(task, "stop")
    assert await _leftovers(async_app) == (0, 0)


# -- mid-claim and mid-write (the database holds the statement) ------------------


def _lock_waiters(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as observer:
        row = observer.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND "
            "wait_event_type = 'Lock'"
        ).fetchone()
    return int(row[0]) if row else 0


@pytest.mark.parametrize("how", ["stop", "cancel"])
async def test_stop_mid_claim_on_a_locked_table(
    async_app: pc.App, db_dsn: str, how: str, caplog
) -> None:
    worker = _worker(async_app, listen_notify=False, fetch_job_polling_interval=0.05)
    task = asyncio.create_task(worker.run())
    await worker.signals.fetched.wait(1)
    with psycopg.connect(db_dsn) as locker:
        locker.execute("LOCK TABLE pcq_jobs IN ACCESS EXCLUSIVE MODE")
        await asyncio.get_running_loop().run_in_executor(
            None,
            lambda: wait_until(
                lambda: _lock_waiters(db_dsn) >= 1, what="a claim waiting on the lock"
            ),
        )
        _stop(worker, task, how)
        await _returns_within_bound(task, how)
        locker.rollback()
    assert "Claiming jobs did not finish" in caplog.text
    # The abandoned claim was cancelled (or, had it committed, is recovered): nothing doing.
    await async_app.job_manager.recover_stalled_jobs_async(1)
    assert await _leftovers(async_app) == (0, 0)


async def test_stop_mid_write_of_an_outcome(async_app: pc.App, db_dsn: str, caplog) -> None:
    release = asyncio.Event()

    @async_app.task
    async def held() -> str:
        await release.wait()
        return "done"

    job_id = await held.defer_async()
    with psycopg.connect(db_dsn) as blocker:
        worker = _worker(async_app)
        task = asyncio.create_task(worker.run())
        await wait_until_async(
            lambda: async_app.job_manager.list_jobs_async(id=job_id, status="doing"), what="claimed"
        )
        # Hold the job's row, then let the job end: its outcome's write waits on the row.
        blocker.execute("SELECT 1 FROM pcq_jobs WHERE id = %s FOR UPDATE", (job_id,))
        release.set()
        await asyncio.get_running_loop().run_in_executor(
            None,
            lambda: wait_until(
                lambda: _lock_waiters(db_dsn) >= 1, what="the write waiting on the row"
            ),
        )
        worker.stop()
        await _returns_within_bound(task, "stop")
        blocker.rollback()
    assert "Could not record 1 outcome(s)" in caplog.text


# -- start-up errors -------------------------------------------------------------


async def test_a_start_up_error_leaks_neither_the_worker_row_nor_the_thread_pool(connector) -> None:
    import threading

    with pytest.raises(pc.exceptions.ConfigurationError, match="max_delay"):
        app = pc.App(connector=connector, periodic_defaults={"max_delay": "soon"})

        @app.periodic(cron="* * * * *")
        @app.task
        async def tick(timestamp: int) -> None:
            return None

        async with app.open_async():
            try:
                await app.run_worker_async(install_signal_handlers=False)
            finally:
                assert await app.job_manager.list_workers_async() == []
    assert not [t for t in threading.enumerate() if t.name.startswith("pcq-job")]


async def test_cancelled_right_after_registration_unregisters(async_app: pc.App) -> None:
    worker = _worker(async_app)
    task = asyncio.create_task(worker.run())
    await worker.signals.registered.wait(1)
    task.cancel()
    await _returns_within_bound(task, "cancel")
    assert await _leftovers(async_app) == (0, 0)


# -- 300 one-shot runs under CPU load ---------------------------------------------


@pytest.fixture
def cpu_load() -> Iterator[None]:
    """A busy-loop subprocess competing for the CPU for the test's duration."""
    import subprocess
    import sys

    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        yield
    finally:
        busy.kill()
        busy.wait(5)


async def test_300_one_shot_runs_with_the_listener_on_never_exceed_the_bound(
    async_app: pc.App, cpu_load
) -> None:
    """The issue's scene: a sync task defers another through the compat layer, then a
    wait=False run on the same App; 300 times in a row, each within STOP_BOUND."""

    @async_app.task(name="lifecycle_child")
    def child() -> None:
        return None

    @async_app.task(name="lifecycle_parent")
    def parent() -> None:
        child.defer()  # a sync defer from the job's thread: the compat layer

    @async_app.task(name="lifecycle_pause")
    async def pause(ms: int) -> None:
        await asyncio.sleep(ms / 1000)

    options = {**FAST, "wait": False, "concurrency": 2}
    for run in range(300):
        if run % 2 == 0:
            await parent.defer_async()
        else:
            # Sweep the moment the queue is found empty across the listener's connection.
            await pause.defer_async(ms=run % 40)
        task = asyncio.create_task(async_app.run_worker_async(**options))
        done, _ = await asyncio.wait({task}, timeout=STOP_BOUND)
        assert done, f"one-shot run {run} did not return within STOP_BOUND={STOP_BOUND} s"
        task.result()
    assert await _leftovers(async_app) == (0, 0)
    counts = {row["name"]: row for row in await async_app.job_manager.list_tasks_async()}
    assert counts["lifecycle_parent"]["succeeded"] == 150
    assert counts["lifecycle_child"]["succeeded"] == 150
