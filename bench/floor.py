"""The reference floor: the bare statements a queue needs, as plain SQL over psycopg.

One INSERT per defer, one claim UPDATE (FOR UPDATE SKIP LOCKED) and one finish
UPDATE per job, each its own transaction; and the batched forms. No task code,
no JSON handling, no events: every other figure reads as a fraction of this.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import psycopg

from bench.systems import AsyncDefer, System, _timed_batches, _timed_loop

SCHEMA = """
CREATE TABLE floor_jobs (
    id bigserial PRIMARY KEY,
    status text NOT NULL DEFAULT 'todo',
    args jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    started_at timestamptz,
    finished_at timestamptz
);
CREATE INDEX floor_jobs_todo ON floor_jobs (id) WHERE status = 'todo';
"""
INSERT = "INSERT INTO floor_jobs (args) VALUES (%s::jsonb) RETURNING id"
INSERT_MANY = "INSERT INTO floor_jobs (args) SELECT unnest(%s::jsonb[]) RETURNING id"
CLAIM = """
UPDATE floor_jobs SET status = 'doing', started_at = now()
WHERE id IN (SELECT id FROM floor_jobs WHERE status = 'todo' ORDER BY id
             LIMIT %s FOR UPDATE SKIP LOCKED)
RETURNING id
"""
FINISH = "UPDATE floor_jobs SET status = 'succeeded', finished_at = now() WHERE id = ANY(%s)"


class Floor(System):
    name = "sql-floor"
    pending_sql = "SELECT EXISTS (SELECT 1 FROM floor_jobs WHERE status IN ('todo', 'doing'))"
    pending_count_sql = "SELECT count(*) FROM floor_jobs WHERE status IN ('todo', 'doing')"
    runs_worker = False

    def install(self, dsn: str) -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(SCHEMA)

    def defer_sync(self, dsn: str, n: int) -> float:
        with psycopg.connect(dsn, autocommit=True) as conn:
            return _timed_loop(n, lambda i: conn.execute(INSERT, (f'{{"i": {i}}}',)).fetchone())

    @contextlib.asynccontextmanager
    async def async_deferrer(self, dsn: str, connections: int) -> AsyncIterator[AsyncDefer]:
        conns = [
            await psycopg.AsyncConnection.connect(dsn, autocommit=True) for _ in range(connections)
        ]
        free: asyncio.Queue[Any] = asyncio.Queue()
        for conn in conns:
            free.put_nowait(conn)

        async def defer(i: int) -> Any:
            conn = await free.get()
            try:
                cur = await conn.execute(INSERT, (f'{{"i": {i}}}',))
                return await cur.fetchone()
            finally:
                free.put_nowait(conn)

        try:
            yield defer
        finally:
            for conn in conns:
                await conn.close()

    async def batch_defer(self, dsn: str, n: int, batch: int) -> float:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:

            async def many(ids: range) -> None:
                cur = await conn.execute(INSERT_MANY, ([f'{{"i": {i}}}' for i in ids],))
                await cur.fetchall()

            return await _timed_batches(n, batch, many)

    async def drain(self, dsn: str, connections: int, batch: int = 1) -> float:
        """Seconds for `connections` loops of claim (batch) + finish, one transaction each."""

        async def loop(conn: Any) -> None:
            while True:
                cur = await conn.execute(CLAIM, (batch,))
                ids = [row[0] for row in await cur.fetchall()]
                if not ids:
                    return
                await conn.execute(FINISH, (ids,))

        conns = [
            await psycopg.AsyncConnection.connect(dsn, autocommit=True) for _ in range(connections)
        ]
        try:
            start = time.perf_counter()
            await asyncio.gather(*(loop(conn) for conn in conns))
            return time.perf_counter() - start
        finally:
            for conn in conns:
                await conn.close()
