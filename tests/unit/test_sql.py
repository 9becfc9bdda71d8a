import re
from importlib import resources

from procrastinate_core import sql


def test_every_query_has_a_header_saying_what_it_returns():
    text = resources.files("procrastinate_core.sql").joinpath("queries.sql").read_text()
    for match in re.finditer(r"^-- name: ([a-z_]+)\n(.*)$", text, re.MULTILINE):
        assert match.group(2).startswith("-- "), f"{match.group(1)} lacks a description line"


def test_query_names_are_noun_verb_and_unique():
    names = list(sql.queries())
    assert len(names) == len(set(names))
    for name in names:
        assert re.fullmatch(r"[a-z]+(_[a-z]+)+", name), name


def test_queries_never_format_values():
    for name, text in sql.queries().items():
        assert "{" not in text and "%s" not in text, name


def test_migrations_are_numbered_and_record_themselves():
    migrations = sql.migrations()
    assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))
    for m in migrations:
        assert f"VALUES ({m.version}, '{m.name}')" in m.sql


def test_the_nondurable_defer_is_the_defer_plus_its_setting():
    """job_defer_many_nondurable must insert exactly what job_defer_many inserts."""
    gate = "\nWHERE (SELECT set_config('synchronous_commit', 'off', true)) = 'off'"
    durable = sql.query("job_defer_many")
    nondurable = sql.query("job_defer_many_nondurable")
    assert nondurable.count(gate) == 1
    statement = nondurable[nondurable.index("SELECT id") :].replace(gate, "")
    assert statement.strip() == durable[durable.index("SELECT id") :].strip()


def _waiting_reasons_of_the_schema() -> set[str]:
    """The reasons the latest migration's CHECK on pcq_jobs.waiting_for allows."""
    found: set[str] = set()
    for migration in sql.migrations():
        match = re.search(r"CHECK \(waiting_for IN \(([^)]*)\)\)", migration.sql)
        if match:
            found = set(re.findall(r"'(\w+)'", match.group(1)))
    return found


def test_queries_reading_waiting_jobs_by_reason_cover_every_reason():
    """Queries that read waiting jobs one reason at a time (one UNION branch per partial
    index) must have a branch for each reason, or the jobs of a new one go uncounted."""
    reasons = _waiting_reasons_of_the_schema()
    assert {"schedule", "lock", "limit", "rate", "pause"} <= reasons
    checked = 0
    for name, text in sql.queries().items():
        if "waiting_for IS NULL" not in text or "UNION ALL" not in text:
            continue
        branches = set(re.findall(r"waiting_for = '(\w+)'", text))
        if len(branches) < 2:
            continue
        checked += 1
        assert branches == reasons, f"{name}: branches {sorted(branches)}, schema {sorted(reasons)}"
    assert checked >= 2  # queue_stats and job_count_by_sampled at least
