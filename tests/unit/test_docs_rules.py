"""Rules the docs state, checked: a rule nothing checks drifts from the code.

- docs/worker.md's options table lists exactly the fields of `WorkerOptions`
  (read from the dataclass, so a new option fails here until it is documented);
- the Python version the README promises is the one pyproject requires and the
  one scripts/install looks for.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path

from procrastinate_core.options import WORKER_OPTIONS, WorkerOptions

ROOT = Path(__file__).resolve().parents[2]


def table_rows(markdown: str, header: str) -> list[list[str]]:
    """The cells of the Markdown table whose header row starts with `header`."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2 :]:  # header, then the |---| line
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def test_the_worker_options_table_lists_every_worker_option_once():
    rows = table_rows((ROOT / "docs/worker.md").read_text("utf-8"), "| option |")
    documented = [row[0].strip("`") for row in rows]
    declared = [field.name for field in dataclasses.fields(WorkerOptions)]
    assert sorted(documented) == sorted(set(documented)), (
        "an option appears twice in docs/worker.md"
    )
    assert set(documented) - set(declared) == set(), (
        "docs/worker.md documents options WorkerOptions lacks"
    )
    assert set(declared) - set(documented) == set(), (
        "options missing from the table of docs/worker.md"
    )
    assert all(meaning for _, meaning in rows), "every option in docs/worker.md says what it does"
    assert [field.name for field in WORKER_OPTIONS] == declared


def test_the_table_check_finds_a_missing_option():
    markdown = "| option | meaning |\n|---|---|\n| `queues` | q |\n| `name` | n |\n\nafter\n"
    assert [row[0] for row in table_rows(markdown, "| option |")] == ["`queues`", "`name`"]


def _minimum(text: str, pattern: str) -> tuple[int, int]:
    found = re.search(pattern, text)
    assert found, f"no Python version found by {pattern!r}"
    return int(found.group(1)), int(found.group(2))


def test_one_minimum_python_version_everywhere():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))
    required = _minimum(pyproject["project"]["requires-python"], r">=\s*(\d+)\.(\d+)")
    readme = _minimum((ROOT / "README.md").read_text("utf-8"), r"Python >= (\d+)\.(\d+)")
    install = (ROOT / "scripts/install").read_text("utf-8")
    looked_for = _minimum(install, r"sys\.version_info < \((\d+), (\d+)\)")
    assert readme == required == looked_for
    assert f"python{required[0]}.{required[1]}" in install
    target = pyproject["tool"]["ruff"]["target-version"]
    assert target == f"py{required[0]}{required[1]}"
    assert pyproject["tool"]["mypy"]["python_version"] == f"{required[0]}.{required[1]}"
