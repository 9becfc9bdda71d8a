"""The linters the field expects, run as tests so CI enforces them.

ruff (lint, line length included) and `ruff format --check` over the repository;
mypy, strict on the packages and looser on the tests.
"""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _tool(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    assert found, f"{name} is not installed: it is part of the dev extra (bash scripts/install)"
    return found


def test_ruff_is_clean():
    result = subprocess.run([_tool("ruff"), "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format_leaves_every_file_as_it_is():
    result = subprocess.run(
        [_tool("ruff"), "format", "--check", "."], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, (
        result.stdout + result.stderr + "\nrun `.venv/bin/ruff format .` to format these files"
    )


def test_mypy_is_clean_on_the_packages_and_the_tests():
    """Strict on the packages, looser on tests/ (pyproject.toml, [tool.mypy])."""
    result = subprocess.run(
        [_tool("mypy"), "procrastinate_core", "procrastinate_django", "tests"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
