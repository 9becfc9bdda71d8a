"""The app the fault workers run: tasks that write the ledger, on the connector the test picks.

Environment: PCQ_FAULT_DSN (queue database), PCQ_FAULT_CONNECTOR (psycopg or
aiopg), PCQ_FAULT_ROLE (becomes application_name `fault-<role>`; the listener
gets `-listener` appended by the connector).
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import procrastinate_core as pc
from procrastinate_core.connectors.in_memory import InMemoryConnector
from procrastinate_core.exceptions import JobAborted
from procrastinate_core.job_context import JobContext
from tests.faults import ledger


def make_connector() -> Any:
    dsn = os.environ["PCQ_FAULT_DSN"]
    kind = os.environ.get("PCQ_FAULT_CONNECTOR", "psycopg")
    role = os.environ.get("PCQ_FAULT_ROLE", "worker")
    keepalive = float(os.environ.get("PCQ_FAULT_LISTEN_KEEPALIVE", "10"))
    if kind == "aiopg":
        from procrastinate_core.contrib.aiopg import AiopgConnector

        return AiopgConnector(
            dsn=dsn, application_name=f"fault-{role}", listen_keepalive=keepalive, maxsize=5
        )
    return pc.PsycopgConnector(
        conninfo=dsn,
        kwargs={"application_name": f"fault-{role}"},
        min_size=1,
        max_size=5,
        timeout=5,
        listen_keepalive=keepalive,
    )


app = pc.App(
    connector=make_connector() if "PCQ_FAULT_DSN" in os.environ else InMemoryConnector(),
    # F16: modules that fail to import, named by the test
    import_paths=[path for path in os.environ.get("PCQ_FAULT_IMPORT_PATHS", "").split(",") if path],
)

if os.environ.get("PCQ_FAULT_DEPLOYED"):
    # F15: "the deploy that registers it"

    @app.task(pass_context=True, name="nope.missing")
    def deployed(context: JobContext) -> None:
        row = ledger.start(context.job.id or 0, context.job.claims)
        ledger.finish(row, "success")


if os.environ.get("PCQ_FAULT_PERIODIC"):
    # F19: a valid seconds cron, every second

    @app.periodic(cron="* * * * * *")
    @app.task(name="every_second")
    def every_second(timestamp: int) -> None:
        return None


@app.task(pass_context=True, name="sleep_async")
async def sleep_async(
    context: JobContext, seconds: float = 0.0, retry_seconds: float | None = None
) -> str:
    """Sleeps `seconds` (`retry_seconds` from the second attempt on, when given)."""
    row = ledger.start(context.job.id or 0, context.job.claims)
    if retry_seconds is not None and context.job.claims > 1:
        seconds = retry_seconds
    await asyncio.sleep(seconds)
    ledger.finish(row, "success")
    return "ok"


@app.task(pass_context=True, name="sleep_sync")
def sleep_sync(context: JobContext, seconds: float = 0.0) -> str:
    row = ledger.start(context.job.id or 0, context.job.claims)
    time.sleep(seconds)
    ledger.finish(row, "success")
    return "ok"


@app.task(pass_context=True, name="cooperative")
def cooperative(context: JobContext, seconds: float = 60.0) -> str:
    """A sync task that checks should_abort() every 0.1 s and stops when told."""
    row = ledger.start(context.job.id or 0, context.job.claims)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if context.should_abort():
            ledger.finish(row, "aborted")
            raise JobAborted("stopped on request")
        time.sleep(0.1)
    ledger.finish(row, "success")
    return "ok"


@app.task(pass_context=True, name="blocking_async")
async def blocking_async(context: JobContext, seconds: float = 5.0) -> str:
    """Misbehaving: an async task that blocks the event loop."""
    row = ledger.start(context.job.id or 0, context.job.claims)
    time.sleep(seconds)
    ledger.finish(row, "success")
    return "ok"


@app.task(
    pass_context=True,
    name="always_fails",
    retry=pc.RetryStrategy(max_attempts=2, exponential_wait=1),
)
def always_fails(context: JobContext) -> None:
    row = ledger.start(context.job.id or 0, context.job.claims)
    ledger.finish(row, "error")
    raise OSError("always fails")


@app.task(
    pass_context=True,
    name="wrong_exception",
    retry=pc.RetryStrategy(max_attempts=2, retry_exceptions={IOError}),
)
def wrong_exception(context: JobContext) -> None:
    row = ledger.start(context.job.id or 0, context.job.claims)
    ledger.finish(row, "error")
    raise ValueError("not retried")


@app.task(pass_context=True, name="crash_then_fail", retry=pc.RetryStrategy(max_attempts=2))
async def crash_then_fail(context: JobContext, hang_on_attempt: int = 2) -> None:
    """Fails, except on `hang_on_attempt` where it hangs (the test kills the worker)."""
    row = ledger.start(context.job.id or 0, context.job.claims)
    if context.job.claims == hang_on_attempt:
        await asyncio.sleep(600)
    ledger.finish(row, "error")
    raise OSError("fails")


@app.task(pass_context=True, name="timed", timeout=1)
async def timed(context: JobContext, seconds: float = 30.0) -> None:
    row = ledger.start(context.job.id or 0, context.job.claims)
    await asyncio.sleep(seconds)
    ledger.finish(row, "success")


@app.task(pass_context=True, name="fail_after", retry=pc.RetryStrategy(max_attempts=2))
async def fail_after(context: JobContext, seconds: float = 1.0) -> None:
    row = ledger.start(context.job.id or 0, context.job.claims)
    await asyncio.sleep(seconds)
    ledger.finish(row, "error")
    raise OSError("fails after a while")


# F26: poison tasks (issue 11). Each raises a BaseException that is not an Exception,
# or kills its worker process, on the attempts the test chooses.
_POISON = {
    "SystemExit": SystemExit,
    "KeyboardInterrupt": KeyboardInterrupt,
    "GeneratorExit": GeneratorExit,
}


@app.task(pass_context=True, name="exits_sync", retry=pc.RetryStrategy(max_attempts=1))
def exits_sync(context: JobContext, raises: str = "SystemExit") -> None:
    row = ledger.start(context.job.id or 0, context.job.claims)
    ledger.finish(row, "error")
    if raises == "exit":
        import sys

        sys.exit(3)
    raise _POISON[raises]()


@app.task(pass_context=True, name="exits_async")
async def exits_async(context: JobContext, raises: str = "SystemExit") -> None:
    row = ledger.start(context.job.id or 0, context.job.claims)
    ledger.finish(row, "error")
    raise _POISON[raises]()


@app.task(pass_context=True, name="kills_worker")
def kills_worker(context: JobContext, until_attempt: int = 1000, how: str = "exit") -> str:
    """Kills its process on attempts before `until_attempt` (os._exit(1), or a real
    segfault with how="segfault"); then succeeds."""
    row = ledger.start(context.job.id or 0, context.job.claims)
    if context.job.claims < until_attempt:
        if how == "segfault":
            import ctypes

            ctypes.string_at(0)
        os._exit(1)
    ledger.finish(row, "success")
    return "ok"
