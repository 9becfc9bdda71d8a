import datetime

import pytest

from procrastinate_core import exceptions
from procrastinate_core.jobs import Job
from procrastinate_core.retry import (
    BaseRetryStrategy,
    RetryDecision,
    RetryStrategy,
    get_retry_strategy,
)


def job(attempts):
    return Job(queue="q", task_name="t", attempts=attempts)


def decision(strategy, attempts, exc=None):
    return strategy.get_retry_decision(exception=exc or ValueError(), job=job(attempts))


def test_max_attempts_is_the_number_of_retries_after_the_first_run():
    # procrastinate's counting: job.attempts is 0 during the first run
    strategy = RetryStrategy(max_attempts=3)
    assert decision(strategy, 0) is not None
    assert decision(strategy, 1) is not None
    assert decision(strategy, 2) is not None
    assert decision(strategy, 3) is None


def test_waits_follow_the_documented_formula():
    strategy = RetryStrategy(wait=2, linear_wait=3, exponential_wait=2)
    # p = job.attempts, the runs before the failing one: wait + linear * p + exp ** (p + 1)
    assert decision(strategy, 0).retry_in == {"seconds": 2 + 0 + 2}
    assert decision(strategy, 1).retry_in == {"seconds": 2 + 3 + 4}
    assert decision(strategy, 2).retry_in == {"seconds": 2 + 6 + 8}


def test_only_listed_exceptions_are_retried():
    strategy = RetryStrategy(retry_exceptions=[IOError])
    assert decision(strategy, 0, OSError()) is not None
    assert decision(strategy, 0, ValueError()) is None


def test_retry_values():
    assert get_retry_strategy(False) is None
    assert get_retry_strategy(0) is None
    assert get_retry_strategy(True) == RetryStrategy()
    # retry=N: N retries, N + 1 runs in all, as procrastinate's RetryStrategy(max_attempts=N)
    assert get_retry_strategy(2) == RetryStrategy(max_attempts=2)
    custom = RetryStrategy(wait=1)
    assert get_retry_strategy(custom) is custom


@pytest.mark.parametrize("value", ["3", 1.5, -1, object()])
def test_bad_retry_values_are_rejected(value):
    with pytest.raises(exceptions.ConfigurationError, match="retry="):
        get_retry_strategy(value)


def test_max_attempts_must_be_positive():
    with pytest.raises(exceptions.ConfigurationError, match="max_attempts=0"):
        RetryStrategy(max_attempts=0)


def test_custom_strategy_with_get_schedule_in_gets_previous_attempts():
    seen = []

    class Strategy(BaseRetryStrategy):
        def get_schedule_in(self, *, exception, attempts):
            seen.append(attempts)
            return 5

    assert decision(Strategy(), 0).retry_in == {"seconds": 5}
    assert decision(Strategy(), 3).retry_in == {"seconds": 5}
    assert seen == [0, 3]


def test_base_strategy_without_implementation_says_what_to_implement():
    with pytest.raises(NotImplementedError, match="get_retry_decision"):
        decision(BaseRetryStrategy(), 0)


def test_retry_decision_times():
    now = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
    assert RetryDecision(retry_in={"minutes": 1}).when(now) == now + datetime.timedelta(minutes=1)
    assert RetryDecision(retry_at=now).when(now) == now
    with pytest.raises(exceptions.ConfigurationError, match="not both"):
        RetryDecision(retry_at=now, retry_in={"seconds": 1})


@pytest.mark.parametrize(
    ("claims", "status", "attempts"),
    [
        (0, "todo", 0),
        (1, "doing", 0),
        (2, "doing", 1),
        (1, "todo", 1),
        (3, "failed", 2),
        (1, "succeeded", 0),
        (1, "aborted", 0),
        (0, "cancelled", 0),
        (2, "cancelled", 2),
    ],
)
def test_public_attempts_count_earlier_runs(claims, status, attempts):
    """The stored claim count (the outcome fence) maps to procrastinate's attempts in one place."""
    from procrastinate_core.jobs import public_attempts

    row = {
        "id": 1,
        "queue_name": "q",
        "task_name": "t",
        "priority": 0,
        "lock": None,
        "queueing_lock": None,
        "args": "{}",
        "status": status,
        "scheduled_at": None,
        "attempts": claims,
        "worker_id": None,
        "abort_requested": False,
    }
    built = Job.from_row(row)
    assert (built.attempts, built.claims) == (attempts, claims)
    assert public_attempts(claims, status) == attempts
