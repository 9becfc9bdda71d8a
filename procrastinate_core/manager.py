"""JobManager: every queue operation, in a sync and an async form written once.

Each operation is a builder that returns an `Op` (which named query, its
parameters, how to read the rows); `plans.paired()` turns one builder into the
pair `name` / `name_async`. Sync forms run on `connector.get_sync_connector()`,
async forms on the connector itself.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from procrastinate_core import exceptions, flow, serialization, validation
from procrastinate_core.connectors.base import BaseConnector
from procrastinate_core.flow_manager import FlowOperations
from procrastinate_core.job_reads import JobReads
from procrastinate_core.jobs import Job, Status
from procrastinate_core.plans import HasConnector, Op, Plan, either_colour, first_column, paired
from procrastinate_core.worker_operations import JobOutcome, WorkerOperations

if TYPE_CHECKING:
    from procrastinate_core.deferrer import DeferHook

QUEUEING_LOCK_CONSTRAINT = "pcq_jobs_queueing_lock_uniq"
#: Finished jobs deleted per transaction by delete_old_jobs (and remove_old_jobs).
DELETE_OLD_JOBS_BATCH_SIZE = 10_000
#: A batch whose arguments' JSON text is larger is sent in several statements, so that
#: no jsonb array nears PostgreSQL's 255 MiB limit (each job alone may be up to
#: max_payload_bytes). Small batches, the common case, stay one statement.
DEFER_CHUNK_BYTES = 32 * 1024 * 1024


def _is_large(args_json: Sequence[str]) -> bool:
    """Whether a batch's arguments exceed one statement's budget (DEFER_CHUNK_BYTES)."""
    total = 0
    for text in args_json:
        total += serialization.text_bytes(text)
        if total > DEFER_CHUNK_BYTES:
            return True
    return False


def check_own_transaction(connection: Any, *, joins_caller_transaction: bool) -> None:
    """A non-durable defer only ever lowers the durability of its own commit."""
    if connection is None and not joins_caller_transaction:
        return
    where = "connection=" if connection is not None else "an open transaction.atomic() block"
    raise exceptions.ConfigurationError(
        f"durable=False cannot be used inside a transaction of yours ({where}): the "
        "job commits with your transaction, and turning synchronous_commit off there "
        "would weaken your own commit. Defer durably (drop durable=False), or defer "
        "after your commit (Django: transaction.on_commit(lambda: ...defer(...))); "
        "see docs/durability.md."
    )


def _sorted_ids(rows: list[dict[str, Any]]) -> list[int]:
    """Ids of inserted rows in insertion order (ids grow in the order rows were given).

    job_defer_many answers a held queueing lock with one row whose id is NULL
    (nothing was inserted, and the caller's transaction goes on): AlreadyEnqueued.
    """
    for row in rows:
        if row["id"] is None:
            raise _already_enqueued(row.get("conflict"))
    return sorted(row["id"] for row in rows)


def _already_enqueued(detail: Any) -> exceptions.AlreadyEnqueued:
    return exceptions.AlreadyEnqueued(
        f"a job with this queueing lock is already waiting to run ({detail}). "
        "Catch AlreadyEnqueued to ignore it, or use another queueing_lock."
    )


class JobManager(FlowOperations, WorkerOperations, JobReads, HasConnector):
    """Reads and changes jobs; the only code that knows which query does what.

    Mixins written the same way: flow control (#13) in flow_manager.py, the
    workers' side in worker_operations.py, reads in job_reads.py.
    """

    def __init__(
        self,
        connector: BaseConnector,
        max_payload_bytes: int = validation.DEFAULT_MAX_PAYLOAD_BYTES,
    ) -> None:
        self.connector = connector
        #: the largest JSON text of one job's arguments that defer sends (App(max_payload_bytes=))
        self.max_payload_bytes = max_payload_bytes
        #: set by otel.trace_defers(app): wraps every defer through this manager (None: off)
        self.defer_hook: DeferHook | None = None

    def wrap_error(self, exc: Exception) -> Exception:
        if (
            isinstance(exc, exceptions.UniqueViolation)
            and exc.constraint_name == QUEUEING_LOCK_CONSTRAINT
        ):
            return _already_enqueued(exc)
        return exc

    # -- deferring -----------------------------------------------------------
    # job_defer_many (and its non-durable twin) answer a held queueing lock with a
    # row instead of an error; a batch without one cannot conflict and goes
    # through job_insert_many, the same INSERT as a plain, plan-cached statement.
    def _batch_defer_jobs(
        self, jobs: Sequence[Job], connection: Any = None, args_json: Sequence[str] | None = None
    ) -> Op[list[Job]]:
        """Insert jobs in one statement; returns them with their ids.

        `args_json`: each job's task_kwargs as the connector's json_dumps wrote
        them (JobDeferrer already encoded them to check them), in job order.
        """
        payload = serialization.defer_payload(jobs, args_json, self.connector.json_dumps)

        def parse(rows: list[dict[str, Any]]) -> list[Job]:
            ids = _sorted_ids(rows)
            return [
                job.evolve(id=job_id, status=Status.TODO.value)
                for job, job_id in zip(jobs, ids, strict=True)
            ]

        query = _insert_query("job_defer_many", any(job.queueing_lock for job in jobs))
        return Op(query, {"jobs": payload}, "all", parse, connection)

    batch_defer_jobs, batch_defer_jobs_async = paired(_batch_defer_jobs)

    def _defer_from_template(
        self, template: Job, args_json: Sequence[str], connection: Any = None, query: str = ""
    ) -> Op[list[int]] | Plan[list[int]]:
        """Insert one job per argument text, all from one template; their ids in order.

        What task.defer and batch_defer need: no Job object per row is built on the
        way in or out, which is most of a large batch's client CPU. `query`:
        job_defer_many, or its non-durable twin (see defer_from_template).
        """
        if template.queueing_lock is not None and len(args_json) > 1:
            # Only one job per queueing lock may wait: such a batch always conflicts
            # with itself. Refused before SQL, so that a batch sent in several
            # chunks never leaves its first chunks in the caller's transaction.
            raise _already_enqueued(
                f"{len(args_json)} jobs in one batch share queueing_lock {template.queueing_lock!r}"
            )
        query = _insert_query(query or "job_defer_many", template.queueing_lock is not None)
        chunks = serialization.chunked(args_json, DEFER_CHUNK_BYTES)
        if len(chunks) == 1:
            payload = serialization.template_payload(template, args_json)
            return Op(query, {"jobs": payload}, "all", _sorted_ids, connection)
        return self._defer_chunks(template, chunks, connection, query)

    def _defer_chunks(
        self, template: Job, chunks: list[Sequence[str]], connection: Any, query: str
    ) -> Plan[list[int]]:
        """A batch too large for one jsonb array: one statement per chunk.

        All or nothing: the chunks run in one transaction, the caller's
        (`connection=`, or Django's connection inside `atomic()`) or else the
        connector's `transaction()` (see defer_from_template).
        """
        ids: list[int] = []
        for chunk in chunks:
            payload = serialization.template_payload(template, chunk)
            ids += yield Op(query, {"jobs": payload}, "all", _sorted_ids, connection)
        return ids

    _defer_template, _defer_template_async = paired(_defer_from_template)

    def defer_from_template(
        self,
        template: Job,
        args_json: Sequence[str],
        connection: Any = None,
        *,
        durable: bool = True,
    ) -> list[int]:
        """Insert one job per argument text, all from one template; their ids in order.

        A batch larger than DEFER_CHUNK_BYTES goes in several statements; without
        the caller's connection they share one transaction of the connector, so
        the batch stays all or nothing. `durable=False` (docs/durability.md) commits
        without waiting for the WAL flush; it is refused, before any SQL, where the
        insert would run in a transaction the caller opened (the setting would last
        until the caller's commit and weaken it).
        """
        sync = self.connector.get_sync_connector()
        query = "job_defer_many"
        if not durable:
            check_own_transaction(
                connection, joins_caller_transaction=sync.joins_caller_transaction()
            )
            query = "job_defer_many_nondurable"
        if connection is None and _is_large(args_json):
            with sync.transaction() as own:
                return self._defer_template(template, args_json, own, query)
        return self._defer_template(template, args_json, connection, query)

    async def defer_from_template_async(
        self,
        template: Job,
        args_json: Sequence[str],
        connection: Any = None,
        *,
        durable: bool = True,
    ) -> list[int]:
        query = "job_defer_many"
        if not durable:
            joins = await self.connector.joins_caller_transaction_async()
            check_own_transaction(connection, joins_caller_transaction=joins)
            query = "job_defer_many_nondurable"
        if connection is None and _is_large(args_json):
            async with self.connector.transaction_async() as own:
                return await self._defer_template_async(template, args_json, own, query)
        return await self._defer_template_async(template, args_json, connection, query)

    def defer_job(self, job: Job, connection: Any = None, args_json: str | None = None) -> Job:
        texts = None if args_json is None else [args_json]
        return self.batch_defer_jobs([job], connection=connection, args_json=texts)[0]

    async def defer_job_async(
        self, job: Job, connection: Any = None, args_json: str | None = None
    ) -> Job:
        texts = None if args_json is None else [args_json]
        return (await self.batch_defer_jobs_async([job], connection=connection, args_json=texts))[0]

    def _defer_periodic_job(
        self, job: Job, periodic_id: str, defer_timestamp: int, limits: dict[str, Any] | None = None
    ) -> Op[int | None]:
        """Defer one periodic tick unless any worker already did; the job id or None.

        `limits`: the task's concurrency and rate columns (flow.limit_fields)."""
        params = {
            **(limits or flow.limit_fields(None, job.task_name, {})),
            "task_name": job.task_name,
            "periodic_id": periodic_id,
            "defer_timestamp": defer_timestamp,
            "queue_name": job.queue,
            "priority": job.priority,
            "lock": job.lock,
            "queueing_lock": job.queueing_lock,
            "args": self.connector.json_dumps(job.task_kwargs),
        }
        return Op("periodic_defer", params, "one", first_column("id"))

    defer_periodic_job, defer_periodic_job_async = paired(_defer_periodic_job)

    def _prune_periodic_defers(self, before: int) -> Op[int]:
        """Forget periodic ticks older than `before` (Unix time)."""
        return Op("periodic_defers_prune", {"before": before}, "one", first_column("deleted"))

    prune_periodic_defers, prune_periodic_defers_async = paired(_prune_periodic_defers)

    # -- acting on jobs (reading them: job_reads.py) ---------------------------
    def _cancel_job_by_id(
        self, job_id: int, abort: bool = False, delete_job: bool = False, connection: Any = None
    ) -> Op[bool]:
        """Cancel a waiting job (or delete it); with abort=True, ask a running one to stop.

        True if the job was cancelled, deleted, or asked to abort; False if it
        was already finished (or running, without abort=True). `connection`: run
        on the caller's connection, so the change commits or rolls back with it.
        """
        if delete_job:
            return Op(
                "job_delete_waiting",
                {"job_id": job_id},
                "one",
                lambda row: row is not None,
                connection,
            )
        return Op(
            "job_cancel",
            {"job_id": job_id, "abort": abort},
            "one",
            lambda row: row is not None,
            connection,
        )

    cancel_job_by_id, cancel_job_by_id_async = paired(_cancel_job_by_id)

    def _delete_finished_job_by_id(self, job_id: int) -> Op[bool]:
        """Delete a finished job and its history; False if it is waiting or running (or gone)."""
        return Op("job_delete_finished", {"job_id": job_id}, "one", lambda row: row is not None)

    delete_finished_job_by_id, delete_finished_job_by_id_async = paired(_delete_finished_job_by_id)

    def _retry_job_by_id(
        self,
        job_id: int,
        retry_at: datetime.datetime | None = None,
        priority: int | None = None,
        queue: str | None = None,
        lock: str | None = None,
        statuses: Iterable[Status | str] | None = None,
    ) -> Op[bool]:
        """Put a finished job back in the queue; False if it is waiting or running.

        `statuses`: retry it only if it is in one of these (checked in the same
        statement, so a job that changes meanwhile is never retried by mistake); the
        shell and the admin pass jobs.RETRYABLE_STATUSES. Raises AlreadyEnqueued if
        its queueing lock is held by another waiting job.
        """
        params = {
            "job_id": job_id,
            "statuses": None if statuses is None else [Status(s).value for s in statuses],
            "retry_at": None if retry_at is None else validation.check_aware("retry_at", retry_at),
            "priority": None if priority is None else validation.check_priority(priority),
            "queue_name": None if queue is None else validation.check_name("queue", queue),
            "lock": validation.check_optional_name("lock", lock),
        }
        return Op("job_retry", params, "one", lambda row: row is not None)

    retry_job_by_id, retry_job_by_id_async = paired(_retry_job_by_id)

    def _delete_old_jobs(
        self,
        nb_hours: float,
        queue: str | None = None,
        include_failed: bool = False,
        include_cancelled: bool = False,
        include_aborted: bool = False,
        batch_size: int = DELETE_OLD_JOBS_BATCH_SIZE,
    ) -> Plan[int]:
        """Delete succeeded (and optionally failed/cancelled/aborted) jobs older than nb_hours.

        In batches of `batch_size` jobs, one short transaction each, until none
        is left: a table of millions of finished jobs is never locked or
        rewritten in one go. Returns how many were deleted in total.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(
                f"batch_size must be a positive integer (jobs deleted per transaction), "
                f"got {batch_size!r}; the default is {DELETE_OLD_JOBS_BATCH_SIZE}"
            )
        statuses = ["succeeded"]
        statuses += ["failed"] if include_failed else []
        statuses += ["cancelled"] if include_cancelled else []
        statuses += ["aborted"] if include_aborted else []
        params = {
            "nb_hours": validation.check_age_hours("nb_hours", nb_hours),
            "queue": validation.check_filter("queue", queue),
            "statuses": statuses,
            "batch_size": batch_size,
        }
        return self._delete_old_batches(params)

    @staticmethod
    def _delete_old_batches(params: dict[str, Any]) -> Plan[int]:
        total = 0
        while True:
            deleted: int = yield Op("job_delete_old", params, "one", first_column("deleted"))
            total += deleted
            if deleted < params["batch_size"]:
                return total

    delete_old_jobs, delete_old_jobs_async = paired(_delete_old_jobs)

    def _retry_job(
        self,
        job: Job,
        retry_at: datetime.datetime | None = None,
        priority: int | None = None,
        queue: str | None = None,
        lock: str | None = None,
    ) -> Op[bool]:
        """Put a running (typically stalled) job back in the queue, at `retry_at` (default:
        now); False if it is no longer running the claim `job` was read with.

        The requeue is the worker's own retry outcome, fenced on (job, worker, claim): a
        job that finished or was recovered meanwhile is left alone.
        """
        if job.id is None or job.worker_id is None:
            raise exceptions.ConfigurationError(
                f"retry_job({job!r}): expected a running job read from the database, "
                "e.g. from get_stalled_jobs() or list_jobs(status='doing')"
            )
        if retry_at is not None:
            validation.check_aware("retry_at", retry_at)
        outcome = JobOutcome(
            job_id=job.id,
            worker_id=job.worker_id,
            attempt=job.claims,
            status=Status.TODO,
            retry_at=retry_at,
            priority=priority,
            queue=queue,
            lock=lock,
        )
        finish = self._finish_jobs([outcome])
        return Op(
            finish.query, finish.params, finish.fetch, lambda rows: job.id in finish.parse(rows)
        )

    _retry_job_sync, retry_job_async = paired(_retry_job)
    retry_job = either_colour(_retry_job_sync, retry_job_async)


def _insert_query(query: str, has_queueing_lock: bool) -> str:
    """The statement for a batch: job_defer_many[_nondurable], or its plain twin."""
    if has_queueing_lock:
        return query
    return _PLAIN_INSERTS[query]


_PLAIN_INSERTS = {
    "job_defer_many": "job_insert_many",
    "job_defer_many_nondurable": "job_insert_many_nondurable",
}
