"""Names and options checked once, client-side, before any of them reaches SQL.

Every name the queue stores or uses as a key (queue, task, lock, queueing
lock, periodic id, a worker's queues) has one limit in `LIMITS`; defer,
configure, batch_defer, periodic declarations, worker options, the CLI, the
shell and the Django admin all call `check_name`, so a bad name is refused
with the same message everywhere and never aborts the caller's transaction
(nothing was sent). docs/tasks.md shows the same table (a unit test keeps it
in step with `LIMITS`).

Why these limits: PostgreSQL text cannot hold NUL, and UTF-8 cannot encode a
lone surrogate; control characters in a name are always a mistake (and break
logs). Queue names become NOTIFY channels `pcq_q_<queue>`, identifiers of at
most 63 bytes, hence 50 bytes (migration 0001 checks the same). Locks and
queueing locks are btree index keys: an index row over about 2.7 KB fails,
so they stop well below, at 1024 bytes (task names and periodic ids share
the periodic-ticks primary key: 1024 + 256 bytes).
"""

from __future__ import annotations

import dataclasses
import datetime
import math
from collections.abc import Iterable, Mapping
from typing import Any

from procrastinate_core import exceptions

#: Characters no name may contain: C0 controls (NUL among them), DEL and C1 controls.
_FORBIDDEN = frozenset(chr(c) for c in [*range(0x00, 0x20), *range(0x7F, 0xA0)])


@dataclasses.dataclass(frozen=True)
class NameLimit:
    """What one kind of name may be: its size in UTF-8 bytes and whether it may be empty."""

    field: str
    max_bytes: int
    allow_empty: bool
    #: Why the limit is what it is, and what to do instead (ends the error message).
    fix: str

    @property
    def min_bytes(self) -> int:
        return 0 if self.allow_empty else 1


LIMITS: dict[str, NameLimit] = {
    limit.field: limit
    for limit in (
        NameLimit(
            "queue",
            50,
            False,
            "queue names name PostgreSQL notification channels (pcq_q_<queue>, 63 bytes at "
            "most); use a shorter name",
        ),
        NameLimit("task", 1024, False, "use a shorter task name (name= on @app.task)"),
        NameLimit(
            "lock",
            1024,
            False,
            "locks are index keys; pass a short key, e.g. a hash of a long one "
            "(hashlib.sha256(key.encode()).hexdigest()), or None for no lock",
        ),
        NameLimit(
            "queueing_lock",
            1024,
            False,
            "queueing locks are index keys; pass a short key, e.g. a hash of a long one "
            "(hashlib.sha256(key.encode()).hexdigest()), or None for no queueing lock",
        ),
        NameLimit(
            "name",
            1024,
            True,
            "a worker's name is shown in logs, the admin and the shell; use a shorter "
            "name (or None: the worker is then known by its id)",
        ),
        NameLimit(
            "periodic_id",
            256,
            True,
            "periodic ids are part of a primary key; use a shorter id",
        ),
    )
}
#: The worker's `queues` option holds queue names: the same limit.
LIMITS["queues"] = dataclasses.replace(LIMITS["queue"], field="queues")

SHORTENED = 40


def shorten(value: str) -> str:
    """A name as shown in an error: its repr, cut in the middle when long."""
    text = repr(value)
    if len(text) <= SHORTENED:
        return text
    return f"{text[: SHORTENED // 2]}...{text[-SHORTENED // 2 :]} ({len(value)} characters)"


def _problem(value: str, limit: NameLimit) -> str | None:
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError as exc:
        return (
            f"it contains a lone surrogate ({value[exc.start]!r} at index {exc.start}), which "
            "UTF-8 cannot encode"
        )
    bad = next((char for char in value if char in _FORBIDDEN), None)
    if bad is not None:
        return f"it contains the control character {bad!r} at index {value.index(bad)}"
    if size > limit.max_bytes:
        return (
            f"it is {size} bytes long; {limit.field} names are limited to {limit.max_bytes} "
            "bytes of UTF-8"
        )
    if size < limit.min_bytes:
        return "it is empty"
    return None


def check_name(field: str, value: Any, *, where: str = "") -> str:
    """`value` if it is a valid `field` name (see LIMITS); ConfigurationError otherwise."""
    limit = LIMITS[field]
    prefix = f"{where}: " if where else ""
    if not isinstance(value, str):
        raise exceptions.ConfigurationError(
            f"{prefix}{field}={value!r}: expected a string ({_rule(limit)})"
        )
    problem = _problem(value, limit)
    if problem is not None:
        raise exceptions.ConfigurationError(
            f"{prefix}{field}={shorten(value)} is refused: {problem}. Allowed: "
            f"{_rule(limit)}; {limit.fix}."
        )
    return value


def check_optional_name(field: str, value: Any, *, where: str = "") -> str | None:
    """check_name, with None allowed (no lock, no queueing lock)."""
    return None if value is None else check_name(field, value, where=where)


def check_queues(value: Any, *, where: str = "") -> tuple[str, ...] | None:
    """A worker's `queues`: None (every queue) or queue names; a string alone is a mistake."""
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise exceptions.ConfigurationError(
            f"{where + ': ' if where else ''}queues={shorten(str(value))}: expected a list of "
            "queue names (or None for every queue), e.g. ['emails', 'reports']"
        )
    names = tuple(check_name("queues", name, where=where) for name in value)
    return names or None


def check_filter(field: str, value: Any, *, where: str = "") -> str | None:
    """A name used to look jobs up (shell, admin, list_jobs): None, or a valid name.

    A name that could not have been stored matches nothing, but must not reach SQL
    (a NUL would make the driver raise, and abort the caller's transaction).
    """
    if value is None:
        return None
    limit = LIMITS[field]
    if not isinstance(value, str) or _problem(value, dataclasses.replace(limit, allow_empty=True)):
        return check_name(field, value, where=where)
    return value


def text_problem(value: str) -> str | None:
    """Why `value` cannot be sent as text (a NUL, a lone surrogate), or None.

    For free text such as an admin search term, which has no size limit and may hold
    tabs or newlines: only what PostgreSQL cannot receive as text (NUL, lone surrogates).
    """
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"it contains a lone surrogate at index {exc.start}, which UTF-8 cannot encode"
    if "\x00" in value:
        return f"it contains the NUL character at index {value.index(chr(0))}"
    return None


def _rule(limit: NameLimit) -> str:
    size = f"{limit.min_bytes} to {limit.max_bytes} bytes of UTF-8"
    return f"{size}, no control characters (U+0000-U+001F, U+007F-U+009F), no lone surrogates"


# -- numbers -------------------------------------------------------------------
PRIORITY_MIN, PRIORITY_MAX = -(2**31), 2**31 - 1


def check_priority(value: Any, *, where: str = "") -> int:
    """A job priority: an int that fits PostgreSQL's integer (higher runs first)."""
    prefix = f"{where}: " if where else ""
    if isinstance(value, bool) or not isinstance(value, int):
        raise exceptions.ConfigurationError(
            f"{prefix}priority={value!r}: expected an int (higher runs first), e.g. priority=10"
        )
    if not PRIORITY_MIN <= value <= PRIORITY_MAX:
        raise exceptions.ConfigurationError(
            f"{prefix}priority={value}: must fit in 32 bits ({PRIORITY_MIN} to {PRIORITY_MAX})"
        )
    return value


BIGINT_MIN, BIGINT_MAX = -(2**63), 2**63 - 1


def check_optional_id(field: str, value: Any, *, where: str = "") -> int | None:
    """A row id filter (job, worker): None, or an int PostgreSQL's bigint can hold."""
    if value is None:
        return None
    prefix = f"{where}: " if where else ""
    if isinstance(value, bool) or not isinstance(value, int):
        raise exceptions.ConfigurationError(f"{prefix}{field}={value!r}: expected an int id")
    if not BIGINT_MIN <= value <= BIGINT_MAX:
        raise exceptions.ConfigurationError(
            f"{prefix}{field}={value}: ids are 64-bit integers ({BIGINT_MIN} to {BIGINT_MAX})"
        )
    return value


#: How far a delay may reach, either way (schedule_in, a retry's wait): far beyond any
#: real schedule, and well inside what PostgreSQL's timestamps hold (4713 BC to 294276 AD),
#: so that the database's now() + delay never overflows in a caller's transaction.
MAX_DELAY_YEARS = 1000
MAX_DELAY_SECONDS = MAX_DELAY_YEARS * 365.25 * 86400


def _finite_number(value: Any) -> bool:
    """An int or float that is not a bool, NaN or infinite."""
    return not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)


def check_seconds(
    field: str, value: Any, *, where: str = "", allow_zero: bool = True, why: str = ""
) -> float:
    """A finite number of seconds, >= 0 (or > 0), at most MAX_DELAY_SECONDS (a larger one
    overflows now() +/- interval in SQL); strings such as "soon" are refused."""
    prefix = f"{where}: " if where else ""
    low = ">= 0" if allow_zero else "> 0"
    if (
        not _finite_number(value)
        or not 0 <= value <= MAX_DELAY_SECONDS
        or (value == 0 and not allow_zero)
    ):
        raise exceptions.ConfigurationError(
            f"{prefix}{field}={value!r}: expected a number of seconds {low}"
            f"{f' ({why})' if why else ''}, at most {MAX_DELAY_SECONDS:,.0f} "
            f"({MAX_DELAY_YEARS:,} years), e.g. {field}=600"
        )
    return float(value)


def check_delay(field: str, spec: Any, *, where: str = "") -> float:
    """A delay given as timedelta keywords ({"hours": 1}), in seconds; finite and bounded."""
    prefix = f"{where}: " if where else ""
    bound = (
        f"a delay must be finite and within {MAX_DELAY_YEARS:,} years either way "
        f"({MAX_DELAY_SECONDS:,.0f} s); for a job that should not run on its own, defer it "
        "to a paused queue or cancel it instead"
    )
    try:
        seconds = datetime.timedelta(**spec).total_seconds()
    except TypeError as exc:
        raise exceptions.ConfigurationError(
            f"{prefix}{field}={spec!r}: {exc}; use timedelta keywords such as "
            '{"seconds": 30} or {"hours": 1}'
        ) from None
    except (ValueError, OverflowError) as exc:  # NaN, infinity, past timedelta's range
        raise exceptions.ConfigurationError(f"{prefix}{field}={spec!r} ({exc}): {bound}") from None
    if not math.isfinite(seconds) or abs(seconds) > MAX_DELAY_SECONDS:
        raise exceptions.ConfigurationError(
            f"{prefix}{field}={spec!r} is {seconds:g} seconds: {bound}"
        )
    return seconds


def check_aware(field: str, value: Any, *, where: str = "") -> datetime.datetime:
    """An aware datetime: a naive one would be read in the database session's time zone."""
    prefix = f"{where}: " if where else ""
    example = "(for example datetime.now(timezone.utc) + timedelta(minutes=5))"
    if not isinstance(value, datetime.datetime):
        raise exceptions.ConfigurationError(
            f"{prefix}{field}={value!r}: expected an aware datetime {example}"
        )
    if value.tzinfo is None:
        raise exceptions.ConfigurationError(
            f"{prefix}{field}={value!r} has no time zone; pass an aware datetime {example}"
        )
    return value


def check_age_hours(field: str, value: Any, *, where: str = "") -> float:
    """An age in hours (delete_old_jobs): finite, >= 0 and within MAX_DELAY_YEARS."""
    prefix = f"{where}: " if where else ""
    if not _finite_number(value) or not 0 <= value * 3600 <= MAX_DELAY_SECONDS:
        raise exceptions.ConfigurationError(
            f"{prefix}{field}={value!r}: expected a number of hours from 0 to "
            f"{MAX_DELAY_SECONDS / 3600:,.0f} ({MAX_DELAY_YEARS:,} years), e.g. {field}=72"
        )
    return float(value)


# -- app options -------------------------------------------------------------------
#: PostgreSQL's jsonb cannot hold a value over 255 MiB (268,435,455 bytes).
JSONB_MAX_BYTES = 268_435_455
#: Default largest JSON text of one job's arguments, under the jsonb limit with room to spare.
DEFAULT_MAX_PAYLOAD_BYTES = 200 * 1024 * 1024


def check_import_paths(value: Any, *, where: str = "import_paths") -> tuple[str, ...]:
    """Dotted module paths, e.g. ['shop.tasks']; a lone string is refused (a common slip)."""
    if value is None:
        return ()
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise exceptions.ConfigurationError(
            f"{where}: expected a list of module paths such as ['shop.tasks'], not "
            f"{'a string' if isinstance(value, str) else type(value).__name__}: {value!r}"
        )
    paths = tuple(value)
    for path in paths:
        if (
            not isinstance(path, str)
            or not path
            or not all(part.isidentifier() for part in path.split("."))
        ):
            raise exceptions.ConfigurationError(
                f"{where}: {path!r} is not a dotted module path; expected e.g. 'shop.tasks'"
            )
    return paths


@dataclasses.dataclass(frozen=True)
class PeriodicOptions:
    """`App(periodic_defaults=...)`, checked once at construction.

    `max_delay`: how far back (seconds, on the database's clock) a tick missed
    while no worker ran is still deferred, once, when a worker starts.
    """

    max_delay: float = 600.0

    def __post_init__(self) -> None:
        object.__setattr__(
            self,
            "max_delay",
            # 0 would make every tick late (the deferrer wakes just after it): refused.
            check_seconds("max_delay", self.max_delay, where="periodic_defaults", allow_zero=False),
        )

    @classmethod
    def build(cls, value: Mapping[str, Any] | PeriodicOptions | None) -> PeriodicOptions:
        if isinstance(value, PeriodicOptions):
            return value
        if value is None:
            return cls()
        if not isinstance(value, Mapping):
            raise exceptions.ConfigurationError(
                f"periodic_defaults: expected a dict such as {{'max_delay': 600}}, got {value!r}"
            )
        known = [field.name for field in dataclasses.fields(cls)]
        unknown = sorted(set(value) - set(known))
        if unknown:
            raise exceptions.ConfigurationError(
                f"periodic_defaults: unknown option(s) {unknown}; known: {known}"
            )
        return cls(**value)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def check_max_payload_bytes(value: Any) -> int:
    """The largest JSON text (in bytes) of one job's arguments that defer will send."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= JSONB_MAX_BYTES:
        raise exceptions.ConfigurationError(
            f"max_payload_bytes={value!r}: expected an int from 1 to {JSONB_MAX_BYTES} "
            f"(PostgreSQL's jsonb limit); the default is {DEFAULT_MAX_PAYLOAD_BYTES}"
        )
    return value
