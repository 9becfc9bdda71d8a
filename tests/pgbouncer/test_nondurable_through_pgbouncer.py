"""durable=False through PgBouncer (transaction and session mode): the tests of
tests/integration/test_nondurable_defer.py with every real connector rebuilt to
connect through the bouncer, as test_contract_through_pgbouncer.py does for the
contract. set_config(..., true) is transaction-scoped, so a transaction pooler
handing the server connection to someone else after the commit cannot leak it.
"""

from __future__ import annotations

import pytest

from tests.integration import test_nondurable_defer as nondurable
from tests.integration.connector_cases import (  # noqa: F401 - autouse fixture
    Harness,
    _forget_django_aliases,
    _make_harness,
)
from tests.integration.test_nondurable_defer import spy  # noqa: F401 - fixture
from tests.pgbouncer.test_contract_through_pgbouncer import (  # noqa: F401 - autouse fixtures
    POOLED,
    _this_bouncer,
)

_ALL = list(POOLED.values())
_CALLERS = [case for case in _ALL if case.transaction is not None]
_DJANGO = [case for case in _ALL if case.name == "django"]


@pytest.fixture(params=_ALL, ids=[case.name for case in _ALL])
def real_harness(request: pytest.FixtureRequest) -> Harness:
    return _make_harness(request)


@pytest.fixture(params=_CALLERS, ids=[case.name for case in _CALLERS])
def caller_harness(request: pytest.FixtureRequest) -> Harness:
    return _make_harness(request)


test_only_the_nondurable_defers_own_transaction_has_synchronous_commit_off = (
    nondurable.test_only_the_nondurable_defers_own_transaction_has_synchronous_commit_off
)
test_the_same_holds_for_the_async_forms = nondurable.test_the_same_holds_for_the_async_forms
test_a_batch_sent_in_several_statements_is_one_nondurable_transaction = (
    nondurable.test_a_batch_sent_in_several_statements_is_one_nondurable_transaction
)
test_refused_with_a_callers_connection_and_the_callers_transaction_is_untouched = (
    nondurable.test_refused_with_a_callers_connection_and_the_callers_transaction_is_untouched
)
