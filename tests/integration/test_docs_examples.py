"""The documentation's examples run as written, against a fresh test database.

Every ```python block of a page listed in PAGES runs, in order, in one
namespace per page (so a block may use what an earlier one defined). The
page's examples read DATABASE_URL and the PG* variables, which point at the
test database here. To have a page checked, make all of its python blocks
runnable and add it to PAGES.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.integration.connector_cases import url_of

DOCS = Path(__file__).resolve().parents[2] / "docs"
PAGES = [
    "connectors.md",
    "observability.md",
    "migrating-from-procrastinate.md",
    "flow-control.md",
    "durability.md",
]
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)
ENVIRONMENT = {
    "host": "PGHOST",
    "port": "PGPORT",
    "dbname": "PGDATABASE",
    "user": "PGUSER",
    "password": "PGPASSWORD",
}


def blocks(page: str) -> list[str]:
    return _BLOCK.findall((DOCS / page).read_text("utf-8"))


@pytest.mark.parametrize("page", PAGES)
def test_page_examples_run(page, db_params, monkeypatch):
    found = blocks(page)
    assert found, f"docs/{page} has no ```python block"
    monkeypatch.setenv("DATABASE_URL", url_of(db_params))
    for key, variable in ENVIRONMENT.items():
        if key in db_params:
            monkeypatch.setenv(variable, db_params[key])
        else:
            monkeypatch.delenv(variable, raising=False)
    namespace: dict[str, object] = {"__name__": f"docs_{page.replace('.', '_')}"}
    for number, code in enumerate(found, 1):
        compiled = compile(code, f"docs/{page} (python block {number})", "exec")
        exec(compiled, namespace)  # noqa: S102 - running our own documentation


def test_a_broken_example_fails():
    with pytest.raises(AssertionError):
        exec(compile("assert 1 == 2", "example", "exec"), {})  # noqa: S102
    assert len(blocks("connectors.md")) >= 6  # the extraction finds the page's examples
