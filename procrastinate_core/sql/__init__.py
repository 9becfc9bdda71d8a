"""The SQL of the project: named queries and numbered migrations, read once from the package."""

from __future__ import annotations

import dataclasses
import functools
import re
from importlib import resources

_NAME_RE = re.compile(r"^-- name: ([a-z_]+)\s*$", re.MULTILINE)
_MIGRATION_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@functools.cache
def queries() -> dict[str, str]:
    """Every named query of queries.sql, by name (loaded once per process)."""
    text = resources.files(__package__).joinpath("queries.sql").read_text("utf-8")
    parts = _NAME_RE.split(text)
    # parts = [preamble, name1, body1, name2, body2, ...]
    found: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in found:
            raise RuntimeError(f"queries.sql defines {name!r} twice")
        found[name] = body.strip().rstrip(";")
    return found


def query(name: str) -> str:
    """The text of one named query; a missing name is a programming error."""
    try:
        return queries()[name]
    except KeyError:
        raise KeyError(f"no query named {name!r} in queries.sql") from None


@functools.cache
def migration_lock() -> str:
    """The statement each migration's transaction starts with (see migration_lock.sql)."""
    return resources.files(__package__).joinpath("migration_lock.sql").read_text("utf-8")


@dataclasses.dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


@functools.cache
def migrations() -> tuple[Migration, ...]:
    """The migrations, in version order; each records itself in pcq_migrations."""
    folder = resources.files(__package__).joinpath("migrations")
    found = []
    for entry in folder.iterdir():
        match = _MIGRATION_RE.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise RuntimeError(f"migration versions are not 1..n without gaps: {versions}")
    return tuple(found)
