"""docs/pgbouncer.md's examples run as written, through a private PgBouncer in transaction mode."""

from __future__ import annotations

import pytest

from tests.integration.connector_cases import url_of
from tests.integration.test_docs_examples import blocks
from tests.pgbouncer.bouncer import Bouncer


def test_pgbouncer_page_examples_run(
    pgbouncer: Bouncer,
    pooled_params: dict[str, str],
    direct_listen_dsn: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if pgbouncer.mode != "transaction":
        pytest.skip("the page's examples are written for transaction mode")
    found = blocks("pgbouncer.md")
    assert len(found) >= 3
    monkeypatch.setenv("DATABASE_URL", url_of(pooled_params))
    monkeypatch.setenv("DATABASE_DIRECT", direct_listen_dsn)
    namespace: dict[str, object] = {"__name__": "docs_pgbouncer_md"}
    for number, code in enumerate(found, 1):
        exec(compile(code, f"docs/pgbouncer.md (python block {number})", "exec"), namespace)  # noqa: S102
