"""`procrastinate_core.contrib.sphinx`: a Sphinx extension that lets autodoc document tasks.

`@app.task` replaces a function by a Task object, which autodoc does not take
for a function, so `automodule:: myproject.tasks` with `:members:` leaves the
tasks out. Add `"procrastinate_core.contrib.sphinx"` to `extensions` in
conf.py and they are documented as the functions they wrap (signature from
the function, docstring, module order).

Sphinx >= 9 rewrote autodoc without a way for extensions to add object
kinds; as procrastinate's extension does, this one turns on autodoc's
`autodoc_use_legacy_class_based` setting, which keeps the documenter classes.
Sphinx is optional: installing it (the `sphinx` extra) is only needed where
the documentation is built.
"""

from __future__ import annotations

from typing import Any

from procrastinate_core import exceptions
from procrastinate_core.tasks import Task

try:
    from sphinx.application import Sphinx
    from sphinx.config import Config
    from sphinx.ext.autodoc import FunctionDocumenter
except ImportError as exc:  # pragma: no cover - exercised where sphinx is absent
    raise exceptions.MissingDriverError(
        "procrastinate_core.contrib.sphinx is a Sphinx extension and needs the 'sphinx' "
        f"package, which is not installed ({exc}). Install it where you build your docs: "
        'pip install "procrastinate-core[sphinx]"'
    ) from exc

__all__ = ["TaskDocumenter", "setup"]

#: Runs before autodoc's own config-inited handler (priority 500), which reads the flag.
_BEFORE_AUTODOC = 400


class TaskDocumenter(FunctionDocumenter):
    """Documents a Task like the function it wraps (`.. autoprocrastinate_task::` too)."""

    objtype = "procrastinate_task"
    directivetype = "function"
    member_order = 40  # among functions

    @classmethod
    def can_document_member(cls, member: Any, membername: str, isattr: bool, parent: Any) -> bool:
        return isinstance(member, Task)

    def add_directive_header(self, sig: str) -> None:
        super().add_directive_header(sig)
        if isinstance(self.object, Task) and self.object.is_async:
            # autodoc asks the Task, not its function, whether it is a coroutine function
            self.add_line("   :async:", self.get_sourcename())


def _use_class_based_autodoc(app: Sphinx, config: Config) -> None:
    if hasattr(config, "autodoc_use_legacy_class_based"):
        config.autodoc_use_legacy_class_based = True


def setup(app: Sphinx) -> dict[str, Any]:
    """Sphinx's entry point: needs autodoc, adds the task documenter."""
    app.setup_extension("sphinx.ext.autodoc")
    app.connect("config-inited", _use_class_based_autodoc, priority=_BEFORE_AUTODOC)
    app.add_autodocumenter(TaskDocumenter)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
