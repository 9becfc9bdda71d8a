"""OutcomeRecorder: writes finished jobs' outcomes in batches, one statement per batch.

Outcomes that arrive while a batch is being written form the next batch, so
under load many finishes share a transaction, and when idle an outcome is
written at once (latency is one round trip). A batch holds at most MAX_BATCH
outcomes and MAX_BATCH_BYTES of results (the whole batch is one jsonb value,
and PostgreSQL's jsonb stops at 256 MB).

Poison outcomes are isolated: when the database refuses a batch for what it
contains (a data, integrity or size error, by SQLSTATE), the batch is split
in two and each half written on its own, so one bad outcome costs the others
a few extra round trips (log2 of the batch) and is never resent in a loop;
refused alone, it is replaced once by a `failed` outcome whose error
(OutcomeRefused) says why. A write that fails for any other reason (the
connection, a timeout, a deadlock) is retried with capped backoff and never
dropped: whole, except that a batch failing SPLIT_AFTER times in a row for a
reason other than the connection is split too. An outcome refused by the
fence (the job was recovered from this worker) is logged as "lost ownership".
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
from collections.abc import Callable

from procrastinate_core import exceptions
from procrastinate_core.connectors.errors import is_connection_error, sqlstate_of
from procrastinate_core.jobs import Status
from procrastinate_core.manager import JobManager
from procrastinate_core.service import Backoff, Service, TestSignal
from procrastinate_core.worker_operations import JobOutcome

logger = logging.getLogger(__name__)

MAX_BATCH = 500
#: Results (JSON bytes) written in one statement at most; a bigger single result
#: cannot happen: the runner refuses results over MAX_RESULT_BYTES.
MAX_BATCH_BYTES = 64 * 1024 * 1024
MAX_BACKOFF = 5.0
#: consecutive transient failures of a batch (not the connection) before it is split
SPLIT_AFTER = 3
#: SQLSTATE classes meaning "this statement's content is refused" (not the connection):
#: data exceptions, integrity constraints, program limits (jsonb too large), syntax/access.
_CONTENT_ERROR_CLASSES = ("22", "23", "54", "42")


def is_content_error(exc: BaseException) -> bool:
    """Whether the database refused what the statement carried (retrying it as is cannot help)."""
    if is_connection_error(exc):
        return False
    state = sqlstate_of(exc)
    return state is not None and state[:2] in _CONTENT_ERROR_CLASSES


def refused_outcome(outcome: JobOutcome, reason: str) -> JobOutcome:
    """The `failed` outcome recorded in place of one the database cannot store."""
    error = exceptions.OutcomeRefused(
        f"the database refused this attempt's outcome ({Status(outcome.status).value}): {reason}"
    )
    cls = type(error)
    return dataclasses.replace(
        outcome,
        status=Status.FAILED,
        retry_at=None,
        priority=None,
        queue=None,
        lock=None,
        result=None,
        result_bytes=0,
        error={
            "type": f"{cls.__module__}.{cls.__qualname__}",
            "message": str(error),
            "traceback": "",
        },
    )


class OutcomeRecorder(Service):
    """Collects outcomes (`add`) and writes them from its own loop (`run`)."""

    name = "outcome recorder"
    what = "Recording job outcomes"
    backoff = Backoff(initial=0.05, cap=MAX_BACKOFF)

    def __init__(
        self, job_manager: JobManager, on_recorded: Callable[[], None] = lambda: None
    ) -> None:
        super().__init__()
        self.job_manager = job_manager
        self.on_recorded = on_recorded
        #: batches to write, in order; the first may be a retried or split one
        self._pending: collections.deque[JobOutcome] = collections.deque()
        #: a part of a refused batch, written on its own before anything else
        self._parts: collections.deque[list[JobOutcome]] = collections.deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        #: outcomes of the batch being written, still unrecorded
        self._writing = 0
        #: test signal: a batch was written
        self.recorded = TestSignal()
        #: ids of outcomes replaced by a failure because the database refused them
        self.refused_ids: set[int] = set()

    def add(self, outcome: JobOutcome) -> None:
        self._pending.append(outcome)
        self._idle.clear()
        self._wake.set()

    @property
    def pending(self) -> int:
        """Outcomes not yet recorded, including those of a write in progress."""
        return len(self._pending) + sum(len(part) for part in self._parts) + self._writing

    async def wait_idle(self) -> None:
        """Return once every outcome added so far is written."""
        await self._idle.wait()

    def _next_batch(self) -> list[JobOutcome]:
        if self._parts:
            return self._parts.popleft()
        batch: list[JobOutcome] = []
        size = 0
        while self._pending and len(batch) < MAX_BATCH:
            outcome = self._pending[0]
            if batch and size + outcome.result_bytes > MAX_BATCH_BYTES:
                break
            batch.append(self._pending.popleft())
            size += outcome.result_bytes
        return batch

    def _give_back(self, batch: list[JobOutcome]) -> None:
        self._parts.appendleft(batch)

    async def step(self) -> float:
        await self._wake.wait()
        await asyncio.sleep(0)  # let jobs ending in the same loop turn join the batch
        self._wake.clear()
        batch = self._next_batch()
        if not batch:
            self._idle.set()
            return 0.0
        self._writing = len(batch)
        try:
            recorded = await self.job_manager.finish_jobs_async(batch)
        except asyncio.CancelledError:
            self._give_back(batch)
            raise
        except Exception as exc:
            self._wake.set()
            if not is_content_error(exc):
                if (
                    len(batch) > 1
                    and self.failures + 1 >= SPLIT_AFTER
                    and not is_connection_error(exc)
                ):
                    # Timeouts or deadlocks again and again: maybe one outcome's doing, so
                    # the others go on in halves. Alone, an outcome is retried as it is.
                    middle = len(batch) // 2
                    self._parts.appendleft(batch[middle:])
                    self._parts.appendleft(batch[:middle])
                else:
                    self._give_back(batch)  # the connection or a transient error: retry it whole
                raise
            self._refused(batch, exc)
            return 0.0
        finally:
            self._writing = 0
        self._log_lost(batch, recorded)
        if self._pending or self._parts:
            self._wake.set()
        else:
            self._idle.set()
        self.recorded.emit()
        self.on_recorded()
        return 0.0

    def _refused(self, batch: list[JobOutcome], exc: Exception) -> None:
        """The database refused the batch for its content: split it, or replace the culprit."""
        if len(batch) > 1:
            middle = len(batch) // 2
            logger.warning(
                "The database refused a batch of %d outcomes (%s: %s); writing it in two halves",
                len(batch),
                type(exc).__name__,
                exc,
                extra={"action": "record_outcomes_split", "count": len(batch)},
            )
            self._parts.appendleft(batch[middle:])
            self._parts.appendleft(batch[:middle])
            return
        [outcome] = batch
        if (
            outcome.job_id in self.refused_ids
            and outcome.result is None
            and outcome.status is Status.FAILED
        ):
            # Even the plain failure is refused: nothing more to try. The job stays
            # `doing` and is recovered as stalled once this worker is gone.
            logger.error(
                "The database refused the failure recorded for job %d (%s); giving up on it",
                outcome.job_id,
                exc,
                extra={
                    "action": "outcome_dropped",
                    "job_id": outcome.job_id,
                    "attempt": outcome.attempt,
                },
            )
            return
        logger.error(
            "The database refused the outcome of job %d (%s); recording it as failed",
            outcome.job_id,
            exc,
            extra={
                "action": "outcome_refused",
                "job_id": outcome.job_id,
                "attempt": outcome.attempt,
            },
        )
        self.refused_ids.add(outcome.job_id)
        self._parts.appendleft([refused_outcome(outcome, f"{type(exc).__name__}: {exc}")])

    def _log_lost(self, batch: list[JobOutcome], recorded: set[int]) -> None:
        for outcome in batch:
            self.refused_ids.discard(outcome.job_id)
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
