"""exceptions.py says it holds every public exception of procrastinate_core: checked.

- the tree drawn in its docstring names exactly the classes it defines;
- no other module of the package defines an exception class, except the few
  listed in INTERNAL, which never leave the code that raises them;
- every exception the package exports (procrastinate_core.__all__) is one of them.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import procrastinate_core
from procrastinate_core import exceptions

PACKAGE = Path(procrastinate_core.__file__).parent

#: Exception classes outside exceptions.py, each caught where it is raised.
INTERNAL = {
    # bad input to a CLI command, turned into the command's error message and exit code
    ("cli/commands.py", "CommandError"),
    # a shell command's parser refusing its arguments, printed with its usage
    ("cli/shell.py", "ShellUsageError"),
}


def exception_classes(source: str, known: set[str]) -> list[str]:
    """Classes of `source` deriving from an exception (by name: *Error, *Exception, known,
    or a class found before it in `source`)."""
    found: list[str] = []
    known = set(known)
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.ClassDef):
            continue
        for base in node.bases:
            name = base.attr if isinstance(base, ast.Attribute) else getattr(base, "id", "")
            if name in known or name.endswith(("Error", "Exception", "Exit", "Interrupt")):
                found.append(node.name)
                known.add(node.name)
                break
    return found


def test_the_docstring_tree_names_every_class_of_the_module():
    drawn = set(re.findall(r"^(?:[│ ]*[├└]── )?(\w+)", exceptions.__doc__ or "", re.M))
    defined = set(exception_classes(Path(exceptions.__file__).read_text("utf-8"), set()))
    assert defined - drawn == set(), "classes missing from the tree in exceptions.py's docstring"
    assert (drawn & {name for name in dir(exceptions) if name[0].isupper()}) == defined


def test_no_other_module_defines_an_exception():
    known = set(exception_classes(Path(exceptions.__file__).read_text("utf-8"), set()))
    elsewhere = {
        (path.relative_to(PACKAGE).as_posix(), name)
        for path in PACKAGE.rglob("*.py")
        if path.name != "exceptions.py" or path.parent != PACKAGE
        for name in exception_classes(path.read_text("utf-8"), known)
    }
    assert elsewhere - INTERNAL == set(), "move these to exceptions.py (or list them in INTERNAL)"
    assert INTERNAL - elsewhere == set(), "INTERNAL names classes that no longer exist"


def test_exported_exceptions_live_in_the_exceptions_module():
    exported = [getattr(procrastinate_core, name) for name in procrastinate_core.__all__]
    misplaced = [
        obj.__qualname__
        for obj in exported
        if isinstance(obj, type)
        and issubclass(obj, BaseException)
        and obj.__module__ != "procrastinate_core.exceptions"
    ]
    assert misplaced == []


def test_the_finder_sees_subclasses_of_known_exceptions():
    source = (
        "class A(exceptions.JobError): ...\nclass B(Base): ...\n"
        "class C(ValueError): ...\nclass D(C): ..."
    )
    assert exception_classes(source, {"JobError"}) == ["A", "C", "D"]
