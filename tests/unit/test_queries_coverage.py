"""Every named query is implemented by the in-memory connector and used by the package code.

A query added to queries.sql without an in-memory twin would make users'
unit tests fail in ways their production code does not; a query no code
names is dead SQL. Both fail here, naming the query and where to act.
"""

from __future__ import annotations

import ast
from pathlib import Path

from procrastinate_core import sql
from procrastinate_core.testing import InMemoryConnector

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("procrastinate_core", "procrastinate_django")
# The in-memory store names every query by definition; it does not count as a use.
NOT_A_USE = {Path("procrastinate_core/connectors/in_memory_store.py")}


def _string_constants() -> dict[str, set[Path]]:
    found: dict[str, set[Path]] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            relative = path.relative_to(ROOT)
            if relative in NOT_A_USE:
                continue
            for node in ast.walk(ast.parse(path.read_text("utf-8"), str(path))):
                if isinstance(node, ast.Constant) and isinstance(node.value, str):
                    found.setdefault(node.value, set()).add(relative)
    return found


def test_every_query_is_implemented_in_memory():
    missing = sorted(set(sql.queries()) - InMemoryConnector.implemented_queries())
    assert not missing, (
        f"queries.sql defines {missing} but InMemoryConnector does not implement them: add a "
        "method of that name to InMemoryStore (procrastinate_core/connectors/in_memory_store.py)"
    )


def test_in_memory_implements_no_query_that_does_not_exist():
    extra = sorted(InMemoryConnector.implemented_queries() - set(sql.queries()))
    assert not extra, f"InMemoryStore implements {extra}, which queries.sql does not define"


def test_every_query_is_used_by_the_package():
    constants = _string_constants()
    unused = sorted(name for name in sql.queries() if name not in constants)
    assert not unused, (
        f"queries.sql defines {unused} but no code in {PACKAGES} names them: "
        "use them or delete them"
    )


def test_the_checks_see_real_uses():
    # Guard against a scan that finds nothing (wrong root, parse failure): known uses are found.
    constants = _string_constants()
    assert Path("procrastinate_core/worker_operations.py") in constants["job_fetch_many"]
    assert Path("procrastinate_core/schema.py") in constants["schema_versions_applied"]
