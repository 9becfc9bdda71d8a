"""Flow control options of a task or job: concurrency limits, rate limits and unique jobs.

A job with a concurrency key waits (as 'limit', migration 0008) until fewer
than `concurrency_limit` jobs of its key run or are ready; a job with a unique
key is not inserted, or replaces the waiting one, when another job of that key
is in one of `unique_states`. Both are decided by the database at defer time
(pcq_defer_flow) and by its triggers afterwards, so they hold across every
worker and every process that defers. A job with a rate key waits (as 'rate',
migration 0012) until it is granted one of the `rate_limit` starts its key
may make per `rate_period` seconds, counted on the database clock; with both
limits, the grant first, then a slot (migration 0016). Pause and resume are JobManager
operations (they change no job option); see docs/flow-control.md.

This module only validates options and builds the defer payload; the SQL is
in queries.sql (job_defer_flow_many) and migrations 0008 and 0012.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import re
from collections.abc import Callable, Sequence
from typing import Any, Literal

from procrastinate_core import exceptions
from procrastinate_core.jobs import Job

OnConflict = Literal["raise", "ignore", "replace"]
#: a key, or a function of the job's keyword arguments returning the key
Key = str | Callable[..., str]

ON_CONFLICT = ("raise", "ignore", "replace")
UNIQUE_STATES = ("todo", "doing", "succeeded", "failed", "cancelled", "aborted")
FINISHED = ("succeeded", "failed", "cancelled", "aborted")
DEFAULT_UNIQUE_STATES = ("todo", "doing")
#: seconds per unit of a Celery-style rate string ("10/m")
RATE_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_RATE_RE = re.compile(r"^\s*(\d+)\s*/\s*(\d+(?:\.\d+)?)?\s*([smhd])\s*$")
#: rate_period when rate_limit is a number without one: per second, as Celery's
DEFAULT_RATE_PERIOD = 1.0


@dataclasses.dataclass(frozen=True)
class FlowOptions:
    """Validated flow-control options; `FlowOptions()` means none."""

    concurrency_key: Key | None = None
    concurrency_limit: int | None = None
    unique_key: Key | None = None
    unique_states: tuple[str, ...] = DEFAULT_UNIQUE_STATES
    #: seconds a finished job (of a state in unique_states) keeps its key; None: forever
    unique_for: float | None = None
    on_conflict: OnConflict = "raise"
    #: in batch_defer: one conflict (on_conflict="raise") inserts none of the batch
    all_or_nothing: bool = False
    rate_key: Key | None = None
    #: starts per rate_period allowed to the rate key (None: no rate limit)
    rate_limit: int | None = None
    #: seconds; None unless rate_limit is set
    rate_period: float | None = None

    @property
    def active(self) -> bool:
        return (
            self.concurrency_limit is not None
            or self.unique_key is not None
            or self.rate_limit is not None
        )

    def evolve(self, **changes: Any) -> FlowOptions:
        """These options with the given ones (None: keep) overridden, validated."""
        given = {k: v for k, v in changes.items() if v is not None}
        current = dataclasses.asdict(self)
        if "rate_limit" in given and "rate_period" not in given:
            current["rate_period"] = None  # "10/m", or a number per second, replaces both
        return build(**{**current, **given})


def _check_key(option: str, value: Any) -> Key | None:
    if value is None or callable(value):
        key: Key | None = value  # a function's results are checked when it is called (_resolve)
        return key
    if not isinstance(value, str) or not value:
        raise exceptions.ConfigurationError(
            f"{option}={value!r}: expected a non-empty string, or a function of the job's "
            "keyword arguments returning one (e.g. lambda customer_id, **_: "
            "f'customer:{customer_id}')"
        )
    return value


OPTION_NAMES = frozenset(
    {
        "concurrency_key",
        "concurrency_limit",
        "unique_key",
        "unique_states",
        "unique_for",
        "on_conflict",
        "all_or_nothing",
        "rate_key",
        "rate_limit",
        "rate_period",
    }
)


def build(
    **options: Any,
) -> FlowOptions:
    """FlowOptions from user input; a ConfigurationError names the bad option and the fix."""
    unknown = sorted(set(options) - OPTION_NAMES)
    if unknown:
        raise TypeError(
            f"unknown task option(s) {unknown}; flow-control options are {sorted(OPTION_NAMES)}"
        )
    return _build(**options)


def _build(
    *,
    concurrency_key: Any = None,
    concurrency_limit: Any = None,
    unique_key: Any = None,
    unique_states: Any = DEFAULT_UNIQUE_STATES,
    unique_for: Any = None,
    on_conflict: Any = "raise",
    all_or_nothing: Any = False,
    rate_key: Any = None,
    rate_limit: Any = None,
    rate_period: Any = None,
) -> FlowOptions:
    key = _check_key("concurrency_key", concurrency_key)
    if concurrency_limit is not None and (
        isinstance(concurrency_limit, bool)
        or not isinstance(concurrency_limit, int)
        or not 1 <= concurrency_limit < 2**31
    ):
        raise exceptions.ConfigurationError(
            f"concurrency_limit={concurrency_limit!r}: expected a whole number of jobs >= 1"
        )
    if key is not None and concurrency_limit is None:
        raise exceptions.ConfigurationError(
            f"concurrency_key={key!r} needs concurrency_limit=N (how many of its jobs may "
            "run at once)"
        )
    ukey = _check_key("unique_key", unique_key)
    states = tuple(unique_states) if not isinstance(unique_states, str) else (unique_states,)
    bad = [s for s in states if s not in UNIQUE_STATES]
    if bad or not states:
        raise exceptions.ConfigurationError(
            f"unique_states={unique_states!r}: expected some of {list(UNIQUE_STATES)}"
        )
    if isinstance(unique_for, datetime.timedelta):
        unique_for = unique_for.total_seconds()
    if unique_for is not None:
        if (
            isinstance(unique_for, bool)
            or not isinstance(unique_for, int | float)
            or not unique_for > 0
        ):
            raise exceptions.ConfigurationError(
                f"unique_for={unique_for!r}: expected a positive number of seconds or a timedelta"
            )
        if not set(states) & set(FINISHED):
            raise exceptions.ConfigurationError(
                f"unique_for={unique_for!r} bounds how long finished jobs keep their unique key, "
                f"but unique_states={states!r} has no finished state; add 'succeeded' (for example)"
            )
    if on_conflict not in ON_CONFLICT:
        raise exceptions.ConfigurationError(
            f"on_conflict={on_conflict!r}: expected one of {list(ON_CONFLICT)}"
        )
    if not isinstance(all_or_nothing, bool):
        raise exceptions.ConfigurationError(
            f"all_or_nothing={all_or_nothing!r}: expected True or False"
        )
    rkey = _check_key("rate_key", rate_key)
    limit, period = _check_rate(rate_limit, rate_period)
    if rkey is not None and limit is None:
        raise exceptions.ConfigurationError(
            f"rate_key={rkey!r} needs rate_limit=N (how many of its jobs may start per "
            "rate_period seconds), or a string such as rate_limit='10/m'"
        )
    return FlowOptions(
        concurrency_key=key,
        concurrency_limit=concurrency_limit,
        unique_key=ukey,
        unique_states=states,
        unique_for=None if unique_for is None else float(unique_for),
        on_conflict=on_conflict,
        all_or_nothing=all_or_nothing,
        rate_key=rkey,
        rate_limit=limit,
        rate_period=period,
    )


def _check_rate(rate_limit: Any, rate_period: Any) -> tuple[int | None, float | None]:
    """(starts, seconds) from an int and a period, or from Celery's "10/m" form."""
    if isinstance(rate_period, datetime.timedelta):
        rate_period = rate_period.total_seconds()
    if rate_period is not None and (
        isinstance(rate_period, bool)
        or not isinstance(rate_period, int | float)
        or not 0 < rate_period < 10**9
    ):
        raise exceptions.ConfigurationError(
            f"rate_period={rate_period!r}: expected a positive number of seconds or a timedelta"
        )
    if rate_limit is None:
        if rate_period is not None:
            raise exceptions.ConfigurationError(
                f"rate_period={rate_period!r} needs rate_limit=N (how many starts per period)"
            )
        return None, None
    if isinstance(rate_limit, str):
        match = _RATE_RE.match(rate_limit)
        if match is None:
            raise exceptions.ConfigurationError(
                f"rate_limit={rate_limit!r}: expected a whole number of starts, or a string "
                "'N/s', 'N/m', 'N/h', 'N/d' (per second, minute, hour, day) or 'N/10s'"
            )
        if rate_period is not None:
            raise exceptions.ConfigurationError(
                f"rate_limit={rate_limit!r} already says its period; drop "
                f"rate_period={rate_period!r} (or give rate_limit as a number)"
            )
        count = int(match.group(1))
        rate_period = float(match.group(2) or 1) * RATE_UNITS[match.group(3)]
        if not 0 < rate_period < 10**9:
            raise exceptions.ConfigurationError(
                f"rate_limit={rate_limit!r}: the period must be positive"
            )
        rate_limit = count
    if (
        isinstance(rate_limit, bool)
        or not isinstance(rate_limit, int)
        or not 1 <= rate_limit < 2**31
    ):
        raise exceptions.ConfigurationError(
            f"rate_limit={rate_limit!r}: expected a whole number of starts >= 1 "
            "(or a string such as '10/m')"
        )
    return rate_limit, float(DEFAULT_RATE_PERIOD if rate_period is None else rate_period)


def check_with_job(flow: FlowOptions, job: Job) -> None:
    """A lock excludes a concurrency limit (it is the ordered limit of 1) and a rate limit."""
    if flow.concurrency_limit is not None and job.lock is not None:
        raise exceptions.ConfigurationError(
            f"task {job.task_name!r}: lock={job.lock!r} and concurrency_limit="
            f"{flow.concurrency_limit} cannot be combined; a lock is a concurrency limit of 1 "
            "in order: use one or the other"
        )
    if flow.rate_limit is not None and job.lock is not None:
        raise exceptions.ConfigurationError(
            f"task {job.task_name!r}: lock={job.lock!r} and rate_limit={flow.rate_limit} "
            "cannot be combined (a lock keeps defer order, which rate grants cannot); for "
            "one at a time under a rate limit use concurrency_limit=1 (docs/flow-control.md)"
        )


def _resolve(option: str, key: Key | None, kwargs: dict[str, Any], task_name: str) -> str | None:
    if key is None or isinstance(key, str):
        return key
    value = key(**kwargs)
    if not isinstance(value, str) or not value:
        raise exceptions.ConfigurationError(
            f"task {task_name!r}: {option} function returned {value!r}; it must return a "
            "non-empty string"
        )
    return value


def limit_fields(
    flow: FlowOptions | None, task_name: str, kwargs: dict[str, Any]
) -> dict[str, Any]:
    """The concurrency and rate columns of one job; a limit without a key keys on the task."""
    if flow is None:
        flow = FlowOptions()
    concurrency_key = flow.concurrency_key
    if concurrency_key is None and flow.concurrency_limit is not None:
        concurrency_key = task_name
    rate_key = flow.rate_key
    if rate_key is None and flow.rate_limit is not None:
        rate_key = task_name
    return {
        "concurrency_key": _resolve("concurrency_key", concurrency_key, kwargs, task_name),
        "concurrency_limit": flow.concurrency_limit,
        "rate_key": _resolve("rate_key", rate_key, kwargs, task_name),
        "rate_limit": flow.rate_limit,
        "rate_period": flow.rate_period,
    }


def payload(
    template: Job,
    flow: FlowOptions,
    kwargs_list: Sequence[dict[str, Any]],
    args_json: Sequence[str],
) -> str:
    """job_defer_flow_many's JSON array: one object per job, its args as already-encoded text."""
    name = template.task_name
    common: dict[str, Any] = {
        "queue_name": template.queue,
        "task_name": name,
        "priority": template.priority,
        "lock": template.lock,
        "queueing_lock": template.queueing_lock,
        "scheduled_at": template.scheduled_at.isoformat() if template.scheduled_at else None,
        "schedule_in_seconds": template.schedule_in_seconds,
        "unique_states": list(flow.unique_states),
        "unique_seconds": flow.unique_for,
        "on_conflict": flow.on_conflict,
    }
    if template.trace_context is not None:  # traced defers (otel.py, migration 0010)
        common["trace_context"] = template.trace_context
    items = []
    for kwargs, args in zip(kwargs_list, args_json, strict=True):
        fields = {
            **common,
            **limit_fields(flow, name, kwargs),
            "unique_key": _resolve("unique_key", flow.unique_key, kwargs, name),
        }
        items.append('{"args":' + args + "," + json.dumps(fields)[1:])
    return "[" + ",".join(items) + "]"


@dataclasses.dataclass(frozen=True)
class DeferResult:
    """What became of one item of a flow-controlled defer."""

    #: the inserted job, or (outcome "ignored") the job already holding the key; None otherwise
    job_id: int | None
    outcome: Literal["inserted", "ignored", "replaced", "conflict", "skipped", "queueing_lock"]
    #: the job that conflicted (ignored, replaced or conflict)
    conflict_id: int | None


def parse_results(rows: list[dict[str, Any]]) -> list[DeferResult]:
    ordered = sorted(rows, key=lambda row: row["ord"])
    return [DeferResult(row["id"], row["outcome"], row["conflict_id"]) for row in ordered]


def ids_or_raise(task_name: str, results: list[DeferResult]) -> list[int]:
    """The ids to hand back; AlreadyEnqueued (UniqueJobConflict) if an item conflicted."""
    if any(r.outcome == "queueing_lock" for r in results):
        raise exceptions.AlreadyEnqueued(
            f"task {task_name!r}: a job with this queueing lock is already waiting to run; "
            "nothing was inserted. Catch AlreadyEnqueued to ignore it, or use another "
            "queueing_lock."
        )
    conflicts = [r for r in results if r.outcome == "conflict"]
    if conflicts:
        inserted = [r.job_id for r in results]
        nothing = all(r.outcome in ("conflict", "skipped") for r in results)
        raise exceptions.UniqueJobConflict(
            f"task {task_name!r}: {len(conflicts)} of {len(results)} job(s) conflict with a job "
            f"of the same unique key (job ids {[r.conflict_id for r in conflicts]}); "
            + ("nothing was inserted. " if nothing else "the others were inserted (see job_ids). ")
            + "Catch AlreadyEnqueued, or use on_conflict='ignore' or 'replace'.",
            job_ids=inserted,
            conflict_ids=[r.conflict_id for r in results],
        )
    return [r.job_id for r in results]  # type: ignore[misc]


__all__ = [
    "DeferResult",
    "FlowOptions",
    "OnConflict",
    "build",
    "check_with_job",
    "limit_fields",
    "payload",
]
