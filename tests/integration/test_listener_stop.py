"""Stopping a listener mid-call on a real psycopg connection stays silent.

CI saw a one-shot worker print psycopg's "query cancellation interrupted ...:
closing connection": the listener cancelled its in-flight call, then closed
the connection while psycopg was still cancelling the query server-side.
"""

from __future__ import annotations

import asyncio
import logging

import psycopg
import pytest

from procrastinate_core.connectors.listener import _bounded
from procrastinate_core.connectors.psycopg import _PsycopgListenSession
from tests.support.waiting import wait_until_async


async def test_cancelled_call_finishes_cancelling_before_the_connection_closes(
    db_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    conn = await psycopg.AsyncConnection.connect(db_dsn, autocommit=True)
    session = _PsycopgListenSession(conn)
    caplog.set_level(logging.WARNING, logger="psycopg")

    async def stopping_listener() -> None:
        try:
            await _bounded(conn.execute("SELECT pg_sleep(5)"), timeout=30)
        finally:
            await _bounded(session.close(), 1)  # as listen_forever closes it

    listener = asyncio.ensure_future(stopping_listener())
    pid = conn.info.backend_pid
    async with await psycopg.AsyncConnection.connect(db_dsn, autocommit=True) as observer:

        async def backends(state: str | None = None) -> int:
            query = "SELECT count(*) FROM pg_stat_activity WHERE pid = %s"
            cur = await observer.execute(
                query + (" AND state = %s" if state else ""), (pid, state) if state else (pid,)
            )
            return (await cur.fetchone())[0]

        await wait_until_async(
            lambda: backends("active"), timeout=5, interval=0.01, what="the query running"
        )
        listener.cancel()
        with pytest.raises(asyncio.CancelledError):
            await listener

        # The server has seen the connection close: whatever psycopg had to say, it said.
        async def gone() -> bool:
            return await backends() == 0

        await wait_until_async(gone, timeout=5, interval=0.01, what="the backend gone")
    assert [r.getMessage() for r in caplog.records if r.name.startswith("psycopg")] == []
    assert conn.closed
