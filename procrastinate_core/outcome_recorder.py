"""OutcomeRecorder: writes finished jobs' outcomes in batches, one statement per batch.

Outcomes that arrive while a batch is being written form the next batch, so
under load many finishes share a transaction, and when idle an outcome is
written at once (latency is one round trip). A failed write is retried with
backoff and never dropped; an outcome refused by the fence (the job was
recovered from this worker) is logged as "lost ownership".
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable

from procrastinate_core import exceptions
from procrastinate_core.jobs import Status
from procrastinate_core.manager import JobManager, JobOutcome

logger = logging.getLogger(__name__)

MAX_BATCH = 500
MAX_BACKOFF = 5.0
SPLIT_AFTER = 3
#: refusals of one outcome written alone before it is replaced by a plain failure
MAX_REFUSALS = 3


class OutcomeRecorder:
    """Collects outcomes (`add`) and writes them from its own loop (`run`)."""

    def __init__(
        self, job_manager: JobManager, on_recorded: Callable[[], None] = lambda: None
    ) -> None:
        self.job_manager = job_manager
        self.on_recorded = on_recorded
        self._pending: list[JobOutcome] = []
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        #: consecutive failed writes; after SPLIT_AFTER, outcomes are written one by one
        #: so one bad outcome cannot hold back the others
        self._failures = 0
        self._refusals: dict[tuple[int, int], int] = {}
        #: outcomes of the batch being written, still unrecorded
        self._writing = 0

    def add(self, outcome: JobOutcome) -> None:
        self._pending.append(outcome)
        self._idle.clear()
        self._wake.set()

    @property
    def pending(self) -> int:
        """Outcomes not yet recorded, including those of a write in progress."""
        return len(self._pending) + self._writing

    async def wait_idle(self) -> None:
        """Return once every outcome added so far is written."""
        await self._idle.wait()

    def _refused(self, outcome: JobOutcome, exc: Exception) -> JobOutcome:
        key = (outcome.job_id, outcome.attempt)
        self._refusals[key] = self._refusals.get(key, 0) + 1
        if self._refusals[key] < MAX_REFUSALS:
            return outcome
        logger.error(
            "The database keeps refusing the outcome of job %d (%s); recording it as failed",
            outcome.job_id,
            exc,
            extra={
                "action": "outcome_refused",
                "job_id": outcome.job_id,
                "attempt": outcome.attempt,
            },
        )
        return dataclasses.replace(
            outcome,
            status=Status.FAILED,
            retry_at=None,
            priority=None,
            queue=None,
            lock=None,
            result=None,
            error={
                "type": "procrastinate_core.OutcomeRefused",
                "message": f"the database refused this attempt's outcome "
                f"({Status(outcome.status).value}): {exc}",
                "traceback": "",
            },
        )

    async def run(self) -> None:
        backoff = 0.05
        while True:
            await self._wake.wait()
            await asyncio.sleep(0)  # let jobs ending in the same loop turn join the batch
            self._wake.clear()
            size = 1 if self._failures >= SPLIT_AFTER else MAX_BATCH
            batch, self._pending = self._pending[:size], self._pending[size:]
            if not batch:
                self._idle.set()
                continue
            self._writing = len(batch)
            try:
                recorded = await self.job_manager.finish_jobs_async(batch)
            except asyncio.CancelledError:
                self._pending[:0] = batch
                raise
            except Exception as exc:
                self._writing = 0
                self._failures += 1
                if len(batch) == 1 and not isinstance(exc, exceptions.DatabaseConnectionError):
                    # Written alone and refused: not the connection, this outcome. Put
                    # it behind the others; after a few refusals record a plain failure.
                    self._pending.append(self._refused(batch[0], exc))
                else:
                    self._pending[:0] = batch
                logger.warning(
                    "Cannot record %d job outcome(s) (%s: %s); retrying in %.2f s",
                    len(batch),
                    type(exc).__name__,
                    exc,
                    backoff,
                    extra={"action": "record_outcomes_failed", "count": len(batch)},
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
                self._wake.set()
                continue
            finally:
                self._writing = 0
            backoff = 0.05
            self._failures = 0
            if self._refusals:  # written at last: forget how often it was refused
                for outcome in batch:
                    self._refusals.pop((outcome.job_id, outcome.attempt), None)
            for outcome in batch:
                if outcome.job_id not in recorded:
                    logger.warning(
                        "Outcome of job %d (attempt %d) refused: this worker lost ownership "
                        "of it (it was recovered as stalled); the other run's result stands",
                        outcome.job_id,
                        outcome.attempt,
                        extra={
                            "action": "lost_ownership",
                            "job_id": outcome.job_id,
                            "attempt": outcome.attempt,
                            "worker_id": outcome.worker_id,
                        },
                    )
            if self._pending:
                self._wake.set()
            else:
                self._idle.set()
            self.on_recorded()
