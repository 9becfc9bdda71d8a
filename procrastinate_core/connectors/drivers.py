"""Importing optional database drivers, or saying which extra installs them.

Optional drivers (aiopg, psycopg2, SQLAlchemy) are imported only when a
connector that needs them is built or opened, never at `import
procrastinate_core`, so users who do not need them do not install them.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from procrastinate_core import exceptions


def import_driver(module: str, *, extra: str, connector: str) -> ModuleType:
    """Import `module`; if it is missing, raise MissingDriverError naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise exceptions.MissingDriverError(
            f"{connector} needs the {module.split('.')[0]!r} package, which is not installed "
            f'({exc}). Install it with: pip install "procrastinate-core[{extra}]"'
        ) from exc
