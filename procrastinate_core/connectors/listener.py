"""The LISTEN loop shared by the async connectors: reconnect, re-LISTEN, detect half-open sockets.

A connector supplies `connect()`, returning a ListenSession over its own
driver; everything about surviving lost connections lives here, once.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, Protocol

from procrastinate_core.connectors.base import ListeningCallback, NotificationCallback

logger = logging.getLogger(__name__)

MAX_BACKOFF = 5.0


class ListenSession(Protocol):
    """One dedicated listening connection, as a driver offers it."""

    async def listen(self, channel: str) -> None:
        """LISTEN on one channel (the name quoted as an identifier)."""

    def notifications(self, window: float) -> AsyncIterator[tuple[str, str]]:
        """(channel, payload) of each notification arriving in the next `window` seconds.

        Ends when the window is over; must not drop notifications read together.
        """

    async def ping(self) -> None:
        """A round trip (SELECT 1) proving the connection is alive."""

    async def close(self) -> None: ...


async def _maybe_await(value: Any) -> None:
    if inspect.isawaitable(value):
        await value


ABANDON_GRACE = 1.0


async def _bounded(awaitable: Awaitable[Any], timeout: float) -> Any:
    """Like asyncio.wait_for, without waiting more than a moment for the cancelled call.

    On a blackholed socket a driver's cancellation can itself wait forever
    (aiopg waits for the connection to answer), so wait_for would hang too.
    """
    task = asyncio.ensure_future(awaitable)
    try:
        done, _ = await asyncio.wait({task}, timeout=timeout)
    except asyncio.CancelledError:  # the listener is stopping mid-call
        await _abandon(task)
        raise
    if not done:
        await _abandon(task)
        raise TimeoutError(f"no answer within {timeout} s")
    return task.result()


async def _abandon(task: asyncio.Future[Any]) -> None:
    """Cancel a call, give the driver ABANDON_GRACE seconds to cancel it server-side, retrieve its
    end.

    The connection is closed next. Closing it while psycopg is still cancelling
    the query makes psycopg warn "query cancellation interrupted", so a healthy
    server gets the moment it needs; a dead one does not hold us longer. An
    unretrieved failure would be printed as "Task exception was never
    retrieved" at exit.
    """
    task.cancel()
    task.add_done_callback(lambda t: t.cancelled() or t.exception())
    await asyncio.wait({task}, timeout=ABANDON_GRACE)


def _raise_if_cancelling() -> None:
    """A stop requested while we handled a lost connection must not be lost with it."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def listen_forever(
    connect: Callable[[], Awaitable[ListenSession]],
    channels: Iterable[str],
    on_notification: NotificationCallback,
    on_listening: ListeningCallback | None,
    keepalive: float,
) -> None:
    """Listen until cancelled. Never returns on a lost connection: reconnects with capped backoff.

    Every `keepalive` seconds a ping must answer within `keepalive` seconds, or
    the connection is taken as dead (half-open socket, frozen server) and
    replaced. `on_listening` runs after every (re)connection so the caller can
    look for what it missed while deaf.
    """
    channels = list(channels)
    backoff = 0.1
    while True:
        _raise_if_cancelling()
        try:
            session = await asyncio.wait_for(connect(), timeout=keepalive + 5)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.warning(
                "Listener cannot connect (%s); retrying in %.1f s",
                exc,
                backoff,
                extra={"action": "listen_reconnect_wait", "delay": backoff},
            )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)
            continue
        try:
            for channel in channels:
                await _bounded(session.listen(channel), keepalive)
            backoff = 0.1
            logger.debug("Listening on %s", channels, extra={"action": "listen_start"})
            if on_listening is not None:
                await _maybe_await(on_listening())
            while True:
                async for channel, payload in session.notifications(keepalive):
                    await _maybe_await(on_notification(channel, payload))
                # Every window, make sure the socket is not half-open.
                await _bounded(session.ping(), keepalive)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.warning(
                "Listener connection lost (%s); reconnecting",
                exc,
                extra={"action": "listen_connection_lost"},
            )
        finally:
            try:
                await _bounded(session.close(), 1)
            except Exception:  # a dead socket must not block us (_bounded bounds the wait)
                pass


#: Seconds between wake-ups when LISTEN cannot work (transaction pooler, no listen_dsn).
POOLER_POLL_INTERVAL = 1.0


async def poll_forever(
    channels: Iterable[str],
    on_notification: NotificationCallback,
    interval: float = POOLER_POLL_INTERVAL,
) -> None:
    """Stand-in for listen_forever where LISTEN cannot work: a wake-up every `interval` seconds.

    Behind a transaction pooler a LISTEN lands on whichever server connection
    the pooler picks and hears nothing afterwards. Rather than pretend, the
    connector does not LISTEN and calls `on_notification(channel, "")` for
    each job channel every `interval` seconds, so a worker looks for jobs that
    often. Abort requests (channel pcq_abort, whose payload is a job id) are
    left to the worker's own abort polling. `on_listening` is never called:
    nothing is listening.
    """
    job_channels = [channel for channel in channels if channel != "pcq_abort"]
    logger.debug(
        "Not listening (transaction pooler, no listen_dsn): waking up every %.1f s",
        interval,
        extra={"action": "listen_polling", "interval": interval},
    )
    while True:
        await asyncio.sleep(interval)
        for channel in job_channels:
            await _maybe_await(on_notification(channel, ""))
