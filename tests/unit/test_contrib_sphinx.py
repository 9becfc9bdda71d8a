"""procrastinate_core.contrib.sphinx: autodoc documents tasks, as procrastinate's extension."""

from __future__ import annotations

import importlib
import sys
import textwrap
from pathlib import Path

import pytest

from procrastinate_core import exceptions

MODULE = '''
"""Tasks of a project."""
import procrastinate_core as pc
from procrastinate_core.testing import InMemoryConnector

app = pc.App(connector=InMemoryConnector())


@app.task(queue="mail")
def send_mail(to: str, subject: str = "hi") -> None:
    """Send one mail to someone."""


@app.task
async def index_book(book_id: int) -> int:
    """Index a book for search."""
    return book_id


def plain(x: int) -> int:
    """A plain function."""
    return x
'''


def build_docs(tmp_path: Path, module_name: str, extensions: list[str]) -> str:
    sphinx_cmd = pytest.importorskip("sphinx.cmd.build")
    source = tmp_path / "source"
    source.mkdir()
    (source / f"{module_name}.py").write_text(MODULE)
    (source / "conf.py").write_text(
        f"import sys\nsys.path.insert(0, {str(source)!r})\nextensions = {extensions!r}\n"
    )
    (source / "index.rst").write_text(
        textwrap.dedent(f"""\
            Tasks
            =====

            .. automodule:: {module_name}
               :members:
            """)
    )
    out = tmp_path / "out"
    try:
        assert sphinx_cmd.build_main(["-q", "-b", "text", str(source), str(out)]) == 0
    finally:
        sys.modules.pop(module_name, None)
    return (out / "index.txt").read_text()


def test_tasks_are_documented_like_their_functions(tmp_path):
    text = build_docs(tmp_path, "w15_sphinx_tasks", ["procrastinate_core.contrib.sphinx"])
    assert "w15_sphinx_tasks.send_mail(to: str, subject: str = 'hi') -> None" in text
    assert "Send one mail to someone." in text
    assert "async w15_sphinx_tasks.index_book(book_id: int) -> int" in text
    assert "w15_sphinx_tasks.plain(x: int) -> int" in text


def test_without_the_extension_autodoc_leaves_tasks_out(tmp_path):
    text = build_docs(tmp_path, "w15_sphinx_plain", ["sphinx.ext.autodoc"])
    assert "plain(x: int)" in text and "send_mail" not in text


def test_without_sphinx_the_import_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "sphinx.application", None)
    monkeypatch.delitem(sys.modules, "procrastinate_core.contrib.sphinx", raising=False)
    with pytest.raises(exceptions.MissingDriverError, match=r"procrastinate-core\[sphinx\]"):
        importlib.import_module("procrastinate_core.contrib.sphinx")
    with pytest.raises(ImportError):  # MissingDriverError is an ImportError too
        importlib.import_module("procrastinate_core.contrib.sphinx")
