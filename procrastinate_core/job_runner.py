"""Running one claimed job: find its task, call it, and turn what happened into a JobOutcome.

Running a job is kept apart from recording its outcome (outcome_recorder.py),
so outcomes of many jobs can be written in one statement. Nothing here
touches the database.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import logging
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from asgiref.sync import SyncToAsync

from procrastinate_core import exceptions, middleware, serialization, validation
from procrastinate_core.job_context import AbortReason, JobContext
from procrastinate_core.jobs import DeleteJobCondition, Job, Status
from procrastinate_core.options import ShutdownTimeoutAction
from procrastinate_core.retry import RetryDecision
from procrastinate_core.tasks import check_queue_name
from procrastinate_core.worker_operations import JobOutcome

if TYPE_CHECKING:
    from procrastinate_core.tasks import Task
    from procrastinate_core.worker import Worker

logger = logging.getLogger(__name__)

#: Largest result (JSON text) a job may return; a bigger one fails the job, naming this limit.
#: PostgreSQL's jsonb stops at 256 MB, and a jsonb value can be several times its text.
MAX_RESULT_BYTES = 64 * 1024 * 1024


@dataclasses.dataclass
class RunningJob:
    """A job held by this worker: the claim it was run under, and whether it must stop."""

    job: Job
    worker_id: int
    task: asyncio.Task[Any] | None = None
    is_async: bool = True
    abort_reason: AbortReason | None = None
    #: set when the worker gave the job back itself (forced stop): no outcome from the run
    released: bool = False
    started: float = dataclasses.field(default_factory=time.monotonic)

    def request_abort(self, reason: AbortReason) -> None:
        """Ask the job to stop: async jobs are cancelled, sync ones see should_abort()."""
        if self.abort_reason is not None:
            return
        self.abort_reason = reason
        logger.info(
            "Asking job %s to stop (%s)",
            self.job.call_string,
            reason.value,
            extra={"action": "abort_job", "abort_reason": reason.value, **self.job.log_context()},
        )
        if self.is_async and self.task is not None and not self.task.done():
            self.task.cancel()


def _check_decision(decision: RetryDecision) -> float | None:
    """A decision the database will accept, or a ConfigurationError naming what is wrong;
    its wait in seconds (None with retry_at)."""
    if decision.queue is not None:
        check_queue_name(decision.queue)
    if decision.priority is not None:
        validation.check_priority(decision.priority, where="RetryDecision")
    validation.check_optional_name("lock", decision.lock, where="RetryDecision")
    if decision.retry_at is not None:
        validation.check_aware("retry_at", decision.retry_at, where="RetryDecision")
    return decision.retry_in_seconds()


_END_LEVELS = {
    "succeeded": logging.INFO,
    "requeued": logging.WARNING,
    "retry": logging.WARNING,
    "aborted": logging.WARNING,
}


def _log_extra(running: RunningJob) -> dict[str, Any]:
    """The job fields of a start/end log record."""
    job = running.job
    return {**job.log_context(), "attempt": job.claims, "worker_id": running.worker_id}


def error_record(exc: BaseException) -> dict[str, Any]:
    """{type, message, traceback}: how a failure is kept on the job."""
    cls = type(exc)
    name = (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )
    return {
        "type": name,
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(exc)),
    }


class JobRunner:
    """Executes jobs for one worker; every path ends in a JobOutcome (never raises)."""

    def __init__(self, worker: Worker, executor: ThreadPoolExecutor) -> None:
        self.worker = worker
        self.app = worker.app
        self.options = worker.options
        self.executor = executor

    # -- finding the task ----------------------------------------------------
    def resolve_task(self, task_name: str) -> Task[Any, Any, Any]:
        """The task for a job; imports the module its name suggests as a last resort.

        Raises TaskNotFound naming the task, the import paths tried, and the fix.
        """
        task = self.app.tasks.get(task_name)
        if task is not None:
            return task
        tried = list(self.app.import_paths)
        problems: list[str] = []
        module_path = task_name.rpartition(".")[0]
        if module_path and ":" not in task_name:
            tried.append(module_path)
            try:
                importlib.import_module(module_path)
            except Exception as exc:  # an import error in user code is reported, not raised
                problems.append(f"importing {module_path!r} failed: {type(exc).__name__}: {exc}")
            task = self.app.tasks.get(task_name)
            if task is not None:
                return task
        details = f" ({'; '.join(problems)})" if problems else ""
        raise exceptions.TaskNotFound(
            f"task {task_name!r} is not registered in this worker's app; import paths "
            f"tried: {tried}{details}. Add the module declaring it to the App's "
            "import_paths (or fix its import error), deploy, then retry the job "
            "(job_manager.retry_job_by_id or the CLI shell)."
        )

    # -- running -------------------------------------------------------------
    def make_context(self, running: RunningJob) -> JobContext:
        return JobContext(
            app=self.app,
            job=running.job,
            worker_name=self.options.name,
            worker_queues=self.options.queues,
            additional_context=dict(self.options.additional_context or {}),
            abort_reason=lambda: running.abort_reason,
        )

    async def execute(self, running: RunningJob) -> JobOutcome:
        """Run the job to its end and say how it ended; the outcome is not recorded here."""
        job = running.job
        # Messages and `extra` dicts are built only when the level is shown: at the
        # default level this was ~9% of a busy worker's CPU.
        if logger.isEnabledFor(logging.INFO):
            logger.info(
                "Starting job %s (attempt %d)",
                job.call_string,
                job.claims,
                extra={"action": "start_job", **_log_extra(running)},
            )
        timeout_handle: asyncio.TimerHandle | None = None
        error: BaseException | None = None
        try:
            task = self.resolve_task(job.task_name)
            running.is_async = task.is_async
            context = self.make_context(running)
            if task.timeout is not None:
                timeout_handle = asyncio.get_running_loop().call_later(
                    task.timeout, running.request_abort, AbortReason.TIMEOUT
                )
            result = await self._call(task, context)
        except asyncio.CancelledError as exc:
            outcome = self.interrupted(running, exc)
        except exceptions.JobAborted as exc:
            outcome = self.interrupted(running, exc)
        except BaseException as exc:  # noqa: BLE001 - SystemExit & co. are this job's failure
            # A task's SystemExit or KeyboardInterrupt (sys.exit(), exit()) ends its job,
            # never the worker: the worker's own signals arrive through its handlers.
            error = exc
            if running.abort_reason is AbortReason.TIMEOUT:
                outcome = self.interrupted(running, exc)
            elif running.abort_reason is AbortReason.USER_REQUEST:
                # Asked to abort, then raised: failed, and never retried.
                outcome = self._outcome(running, Status.FAILED, error=error_record(exc))
            else:
                outcome = self.failed(running, exc)
        else:
            if running.abort_reason is AbortReason.TIMEOUT:
                outcome = self.interrupted(running, None)
            else:
                outcome = self._succeeded(running, result)
        finally:
            if timeout_handle is not None:
                timeout_handle.cancel()
        self._log_end(running, outcome, error)
        return outcome

    async def _call(self, task: Task[Any, Any, Any], context: JobContext) -> Any:
        args: tuple[Any, ...] = (context,) if task.pass_context else ()
        kwargs = dict(context.job.task_kwargs)
        worker = self.worker
        chain = middleware.task_chain(
            self.options.task_middleware, task.task_middleware, task.is_async
        )

        if task.is_async:

            async def call_task() -> Any:
                return await task.func(*args, **kwargs)

            async def run_task() -> Any:
                return await middleware.compose(chain, call_task, context, worker)()

        else:

            def call_task_sync() -> Any:
                return task.func(*args, **kwargs)

            def run_in_thread() -> Any:
                return middleware.compose(chain, call_task_sync, context, worker)()

            async def run_task() -> Any:
                return await SyncToAsync(
                    run_in_thread, thread_sensitive=False, executor=self.executor
                )()

        return await middleware.compose(self.options.worker_middleware, run_task, context, worker)()

    # -- outcomes ------------------------------------------------------------
    def _outcome(self, running: RunningJob, status: Status, **fields: Any) -> JobOutcome:
        delete = self.options.delete_jobs is DeleteJobCondition.ALWAYS and status.is_final
        delete |= (
            self.options.delete_jobs is DeleteJobCondition.SUCCESSFUL and status is Status.SUCCEEDED
        )
        return JobOutcome(
            job_id=running.job.id or 0,
            worker_id=running.worker_id,
            attempt=running.job.claims,
            status=status,
            delete_job=delete,
            **fields,
        )

    def _succeeded(self, running: RunningJob, result: Any) -> JobOutcome:
        """A success, or a failure (never retried) if its result cannot be stored."""
        if result is None:
            return self._outcome(running, Status.SUCCEEDED)
        text = serialization.dumps_result(result, self.app.connector.json_dumps)
        problem = None
        if text is None:
            problem = (
                "it cannot be encoded as JSON that PostgreSQL's jsonb accepts (a type json_dumps "
                "does not handle, NaN/Infinity, or the NUL character)"
            )
        elif len(text) > MAX_RESULT_BYTES:
            problem = (
                f"its JSON is {len(text)} bytes, over the {MAX_RESULT_BYTES} bytes a worker "
                "stores as a job result (PostgreSQL's jsonb stops at 256 MB)"
            )
        if problem is not None:
            # Never retried: the task would return the same value again.
            message = (
                f"job {running.job.call_string} returned a {type(result).__name__} that cannot "
                f"be stored as its result: {problem}. Return a smaller, JSON-compatible value "
                "(store big data elsewhere and return a reference to it)."
            )
            logger.warning(
                message, extra={"action": "result_not_stored", **running.job.log_context()}
            )
            error = exceptions.OutcomeRefused(message)
            return self._outcome(running, Status.FAILED, error=error_record(error))
        return self._outcome(running, Status.SUCCEEDED, result=result, result_bytes=len(text or ""))

    def unrecordable(self, running: RunningJob, exc: BaseException) -> JobOutcome:
        """The last resort when computing an outcome raised (a bug on that path): the job
        ends failed with that error, built without calling any task or strategy code, so
        that no job stays `doing` under a live worker and no slot is lost."""
        error = {
            "type": f"{type(exc).__module__}.{type(exc).__qualname__}",
            "message": f"the worker could not compute this job's outcome: {exc!r}"[:2000],
            "traceback": "",
        }
        return self._outcome(running, Status.FAILED, error=error)

    def failed(self, running: RunningJob, exc: BaseException) -> JobOutcome:
        job = running.job
        task = self.app.tasks.get(job.task_name)
        decision = None
        retry_in = None
        if task is not None:
            try:
                decision = task.get_retry_decision(exc, job)
                if decision is not None:
                    retry_in = _check_decision(decision)
            except Exception as strategy_exc:
                logger.exception(
                    "Retry strategy of %s raised; the job is not retried",
                    job.task_name,
                    extra={"action": "retry_strategy_error", **job.log_context()},
                )
                exc = strategy_exc
                decision = None
        if decision is None:
            return self._outcome(running, Status.FAILED, error=error_record(exc))
        return self._outcome(
            running,
            Status.TODO,
            retry_at=decision.retry_at,
            retry_in=retry_in,
            priority=decision.priority,
            queue=decision.queue,
            lock=decision.lock,
            error=error_record(exc),
        )

    def interrupted(self, running: RunningJob, exc: BaseException | None) -> JobOutcome:
        """A job that stopped because it was asked to (abort, timeout, shutdown)."""
        reason = running.abort_reason
        task = self.app.tasks.get(running.job.task_name)
        if reason is AbortReason.TIMEOUT:
            timeout = exceptions.JobTimeout(
                f"job {running.job.call_string} exceeded the {task.timeout if task else '?'} s "
                "timeout of its task"
            )
            timeout.__cause__ = exc if not isinstance(exc, asyncio.CancelledError) else None
            return self.failed(running, timeout)
        if (
            reason is AbortReason.SHUTDOWN
            and not running.released
            and (self.options.shutdown_timeout_action is ShutdownTimeoutAction.ABORT)
        ):
            # Past the graceful timeout, procrastinate's way: the job ends aborted.
            return self._outcome(
                running,
                Status.ABORTED,
                error=error_record(exc) if isinstance(exc, exceptions.JobAborted) else None,
            )
        if reason is AbortReason.SHUTDOWN or (
            reason is None and isinstance(exc, asyncio.CancelledError)
        ):
            # The worker is stopping: give the job back to the queue (attempt counted).
            return self._outcome(running, Status.TODO)
        return self._outcome(
            running,
            Status.ABORTED,
            error=error_record(exc) if isinstance(exc, exceptions.JobAborted) else None,
        )

    def _log_end(
        self, running: RunningJob, outcome: JobOutcome, exc: BaseException | None = None
    ) -> None:
        if outcome.status is Status.TODO:
            label = "requeued" if outcome.error is None else "retry"
        else:
            label = Status(outcome.status).value
        level = _END_LEVELS.get(label, logging.ERROR)
        if not logger.isEnabledFor(level):
            return
        duration = time.monotonic() - running.started
        error = outcome.error or {}
        logger.log(
            level,
            "Job %s ended: %s after %.3f s%s",
            running.job.call_string,
            label,
            duration,
            f" ({error.get('type')}: {error.get('message')})" if error else "",
            # A failure carries its traceback, for handlers such as Sentry's.
            exc_info=exc if exc is not None and level >= logging.ERROR else None,
            extra={
                "action": "end_job",
                "outcome": label,
                "duration": duration,
                "retry_at": outcome.retry_at.isoformat() if outcome.retry_at else None,
                "error_type": error.get("type"),
                **_log_extra(running),
            },
        )
