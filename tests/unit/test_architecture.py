"""The layers of docs/architecture.md, enforced: import-linter's contract is that list.

The doc's "Layers" block names one layer per unindented line, lowest first; the
consecutive lines marked `service:` are one layer of independent modules. The
contract in pyproject.toml lists the same layers highest first, and every module
of procrastinate_core is on the list (a module left off would be checked by
nothing).
"""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

import procrastinate_core
from tests.unit.test_code_quality import ROOT, _tool

PACKAGE = Path(procrastinate_core.__file__).parent


def documented_layers(markdown: str) -> list[frozenset[str]]:
    """The layers of the doc's first code block after "## Layers", lowest first."""
    section = markdown.split("## Layers", 1)[1]
    block = section.split("```", 2)[1]
    layers: list[frozenset[str]] = []
    in_services = False
    for line in block.splitlines()[1:]:  # the first is what follows the opening fence
        if not line or line[0].isspace():
            continue
        name, _, meaning = line.partition(" ")
        module = re.sub(r"(\.py|/)$", "", name)
        is_service = meaning.strip().startswith("service:")
        if is_service and in_services:
            layers[-1] = layers[-1] | {module}
        else:
            layers.append(frozenset({module}))
        in_services = is_service
    return layers


def contract_layers() -> list[frozenset[str]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))
    [contract] = [
        c
        for c in config["tool"]["importlinter"]["contracts"]
        if c["type"] == "layers" and c["containers"] == ["procrastinate_core"]
    ]
    return [frozenset(part.strip() for part in layer.split("|")) for layer in contract["layers"]]


def test_the_contract_lists_the_layers_of_the_doc():
    documented = documented_layers((ROOT / "docs/architecture.md").read_text("utf-8"))
    assert list(reversed(contract_layers())) == documented


def test_every_module_of_the_package_is_on_a_layer():
    modules = {
        path.stem if path.is_file() else path.name
        for path in PACKAGE.iterdir()
        if (path.suffix == ".py" and path.stem != "__init__")
        or (path.is_dir() and (path / "__init__.py").exists())
    }
    on_a_layer = set().union(*contract_layers())
    assert modules - on_a_layer == set(), "add these to docs/architecture.md and the contract"
    assert on_a_layer - modules == set(), "the contract names modules that do not exist"


def test_the_layer_reader_groups_services_and_skips_continuations():
    markdown = (
        "## Layers\n\n```\nlow.py     base\n           more about low\n"
        "a.py       service: one\nb.py       service: two\nsub/       above the services\n```\n"
    )
    assert documented_layers(markdown) == [
        frozenset({"low"}),
        frozenset({"a", "b"}),
        frozenset({"sub"}),
    ]


def test_import_linter_keeps_every_contract():
    result = subprocess.run(
        [_tool("lint-imports"), "--no-cache"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
