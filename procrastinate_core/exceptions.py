"""Every public exception of procrastinate_core, in one hierarchy.

ProcrastinateException
├── ConfigurationError            bad option, setting or cron: names it and the fix
│   ├── SyncConnectorConfigurationError   async-only work asked of a sync connector
│   ├── InvalidCronExpression
│   ├── TaskAlreadyRegistered     a task name, alias or periodic schedule already taken
│   └── MiddlewareKindMismatch    a sync middleware on an async task (or the reverse)
├── MissingDriverError (also ImportError)  optional driver not installed: names the extra
├── ArgumentSerializationError (also TypeError)  job arguments that cannot be stored as JSON
├── TaskArgumentsError (also TypeError)  defer's keyword arguments do not fit the task's signature
├── AppNotOpen                    the app (its connector) must be opened first
├── ConnectorException            anything the database or driver raised, translated
│   ├── DatabaseConnectionError   cannot reach the server (never shows the password)
│   └── UniqueViolation           a unique constraint, with its name
├── AlreadyEnqueued               a job with this queueing lock is already waiting
│   └── UniqueJobConflict         a job with this unique key exists (flow.py, #13)
├── TaskNotFound                  no task of that name among the registered ones
├── JobNotFound (also LookupError)  no job with that id
├── LoadFromPathError             a dotted path that does not import
├── SchemaError                   the database is not at the code's schema version
│   └── SchemaNotInstalled        our tables are missing: names the command that creates them
├── UnboundTaskError              a Blueprint task used before the blueprint joins an App
├── JobError                      a job's task raised (wraps the cause)
├── JobAborted                    raised by a task (or for it) when its job is aborted
├── JobTimeout (also TimeoutError)  a job ran past its task's timeout
├── OutcomeRefused                an attempt's outcome the database cannot store
└── PoisonJob                     (error type only) its worker died running it too often
"""

from __future__ import annotations


class ProcrastinateException(Exception):
    """Base class of every exception raised on purpose by procrastinate_core."""


class ConfigurationError(ProcrastinateException):
    """An option, setting or declaration is invalid; the message names it and the fix."""


class SyncConnectorConfigurationError(ConfigurationError):
    """A sync connector was asked for async-only work such as running a worker."""


class InvalidCronExpression(ConfigurationError, ValueError):
    """A periodic task's cron expression cannot be parsed or never matches."""


class TaskAlreadyRegistered(ConfigurationError):
    """A task name (or alias, or periodic schedule) is already taken: procrastinate's name
    for this refusal, kept so that `except exceptions.TaskAlreadyRegistered` works here."""


class MiddlewareKindMismatch(ConfigurationError):
    """A middleware does not match what it wraps: sync tasks take `def` middleware, async
    tasks and the worker's worker_middleware take `async def` (as in procrastinate)."""


class MissingDriverError(ProcrastinateException, ImportError):
    """An optional database driver is missing; the message names the extra to install."""


class ArgumentSerializationError(ProcrastinateException, TypeError):
    """A job argument cannot be stored as JSON; nothing was written."""


class AppNotOpen(ProcrastinateException):
    """The app's connector was used before `app.open()` / `app.open_async()`."""


class ConnectorException(ProcrastinateException):
    """The database or its driver raised; the driver's exception is the __cause__."""


class DatabaseConnectionError(ConnectorException):
    """The server could not be reached with the given parameters."""


class UniqueViolation(ConnectorException):
    """A unique constraint was violated."""

    def __init__(self, message: str = "", constraint_name: str | None = None) -> None:
        super().__init__(message)
        self.constraint_name = constraint_name


class AlreadyEnqueued(ProcrastinateException):
    """A job with the same queueing lock is already waiting to run."""


class TaskNotFound(ProcrastinateException):
    """No task with that name is registered in the app."""


class JobNotFound(ProcrastinateException, LookupError):
    """No job has that id (it may have been deleted)."""


class LoadFromPathError(ProcrastinateException, ImportError):
    """A dotted path could not be imported or does not name the expected object."""


class SchemaError(ProcrastinateException):
    """The database schema is missing or older than this code expects."""


class UnboundTaskError(ProcrastinateException):
    """A task declared on a Blueprint was deferred before the blueprint joined an App."""


class JobError(ProcrastinateException):
    """A job's task raised; the task's exception is the __cause__."""

    def __init__(self, *args: object, retry_exception: BaseException | None = None) -> None:
        super().__init__(*args)
        self.retry_exception = retry_exception


class JobAborted(ProcrastinateException):
    """The job was asked to abort; raised by a task, it ends the job `aborted`, not failed."""


class TaskArgumentsError(ProcrastinateException, TypeError):
    """defer() got keyword arguments the task does not take, or lacks required ones;
    nothing was written."""


class SchemaNotInstalled(SchemaError):
    """A query met a missing table of ours: the schema was never applied to this database."""


class JobTimeout(ProcrastinateException, TimeoutError):
    """A job ran longer than its task's `timeout`; recorded as the attempt's error."""


class OutcomeRefused(ProcrastinateException):
    """The database would not store an attempt's outcome (e.g. a result over jsonb's size
    limit); recorded as that attempt's error, in place of the outcome."""


class PoisonJob(ProcrastinateException):
    """A job whose worker died while running it `max_stalled_recoveries` times; it ends
    failed with this error type (written by the database, never raised)."""


class UniqueJobConflict(AlreadyEnqueued):
    """A job with the same unique key is in one of the key's states (flow.py).

    `job_ids`: per deferred item, the id inserted, or None (conflicting or
    skipped); `conflict_ids`: per item, the job it conflicted with, or None.
    """

    def __init__(
        self,
        *args: object,
        job_ids: list[int | None] | None = None,
        conflict_ids: list[int | None] | None = None,
    ) -> None:
        super().__init__(*args)
        self.job_ids = list(job_ids or [])
        self.conflict_ids = list(conflict_ids or [])
