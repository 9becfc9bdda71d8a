"""Service and Supervisor: the base every background service of a worker shares.

A service (outcome recorder, heartbeat, stalled-job sweeper, abort watcher,
listener, periodic deferrer) is built from what it needs (the job manager,
its own frozen config, callbacks), never from the Worker. It writes one
`step()`; this base runs it in a loop, retries a failing step with capped
backoff, logs, and offers `start()` / `stop()`. `stop()` is bounded: a
service whose task does not end within its bound (a driver that swallowed
the cancellation) is abandoned with an error log, so no stop ever hangs on
it. A Supervisor starts services in order and stops them in reverse.

Test signals: each service exposes `TestSignal`s (`stepped`, `failed`, and its
own, such as the listener's `listening`) that tests await instead of
polling private fields or sleeping.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Sequence

logger = logging.getLogger(__name__)

#: Longest a supervisor waits for its services to end after cancelling them.
SERVICE_STOP_TIMEOUT = 3.0


class TestSignal:
    """Counts occurrences of one event; a test awaits `wait()` for the next (or the n-th)."""

    __test__ = False  # not a test class, despite its name

    def __init__(self) -> None:
        self.count = 0
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []

    def emit(self) -> None:
        self.count += 1
        still: list[tuple[int, asyncio.Future[None]]] = []
        for target, future in self._waiters:
            if future.done():
                continue
            if self.count >= target:
                future.set_result(None)
            else:
                still.append((target, future))
        self._waiters = still

    async def wait(self, count: int | None = None) -> None:
        """Until the event happened `count` times in all (default: once more from now)."""
        target = self.count + 1 if count is None else count
        if self.count >= target:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((target, future))
        await future


@dataclasses.dataclass(frozen=True)
class Backoff:
    """Capped exponential delays between retries of a failing step."""

    initial: float = 0.1
    cap: float = 5.0

    def delay(self, failures: int) -> float:
        return min(self.cap, self.initial * 2.0 ** max(0, failures - 1))


class Service:
    """One background loop of a worker. Subclasses set `name` and write `step()`."""

    name = "service"
    #: how a failure is described in the log ("<what> failed (...); retrying in 1.0 s")
    what = "Worker service"
    backoff = Backoff()
    failure_level = logging.WARNING

    def __init__(self) -> None:
        self.task: asyncio.Task[None] | None = None
        #: a step ended well / failed (test signals)
        self.stepped = TestSignal()
        self.failed = TestSignal()
        self.failures = 0

    async def step(self) -> float:
        """Do one round of work; return how long to wait before the next one."""
        raise NotImplementedError

    async def run(self) -> None:
        """Run steps until cancelled; a failing step is logged and retried with backoff."""
        while True:
            try:
                delay = await self.step()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.failures += 1
                delay = self.backoff.delay(self.failures)
                logger.log(
                    self.failure_level,
                    "%s failed (%s: %s); retrying in %.1f s",
                    self.what,
                    type(exc).__name__,
                    exc,
                    delay,
                    extra={"action": "service_failed", "service": self.name, "delay": delay},
                )
                self.failed.emit()
            else:
                self.failures = 0
                self.stepped.emit()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                await asyncio.sleep(0)

    def start(self) -> None:
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self.run(), name=f"pcq-{self.name}")

    def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()

    async def stop(self, timeout: float = SERVICE_STOP_TIMEOUT) -> bool:
        """Cancel and wait at most `timeout` s; False if the task had to be abandoned."""
        task = self.task
        if task is None:
            return True
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=timeout)
        if not done:
            logger.error(
                "Worker service %s did not stop within %.1f s of its cancellation; abandoned",
                self.name,
                timeout,
                extra={"action": "service_abandoned", "service": self.name},
            )
            # Retrieve its end whenever it comes, so nothing is printed at exit.
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
            return False
        if not task.cancelled() and task.exception() is not None:
            logger.error(
                "Worker service %s ended with an error",
                self.name,
                exc_info=task.exception(),
                extra={"action": "service_crashed", "service": self.name},
            )
        self.task = None
        return True


class Supervisor:
    """Starts services in order, stops them in reverse, within one shared bound."""

    def __init__(self, services: Sequence[Service]) -> None:
        self.services = list(services)
        self.started: list[Service] = []

    def start(self) -> None:
        for service in self.services:
            service.start()
            self.started.append(service)

    async def stop(self, timeout: float = SERVICE_STOP_TIMEOUT) -> list[Service]:
        """Stop every started service, last started first; the ones abandoned.

        All of them together take at most `timeout` seconds (plus a moment per
        service when the bound is spent: each is still cancelled).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        abandoned: list[Service] = []
        while self.started:
            service = self.started.pop()
            if not await service.stop(max(0.05, deadline - loop.time())):
                abandoned.append(service)
        return abandoned
