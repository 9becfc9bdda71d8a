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


def test_the_nondurable_claim_is_the_claim_plus_its_setting():
    """job_fetch_many_nondurable must claim exactly what job_fetch_many claims."""
    gate = "\n      AND (SELECT set_config('synchronous_commit', 'off', true)) = 'off'"
    durable = sql.query("job_fetch_many")
    nondurable = sql.query("job_fetch_many_nondurable")
    assert nondurable.count(gate) == 1
    statement = nondurable[nondurable.index("WITH candidate") :].replace(gate, "")
    assert statement.strip() == durable[durable.index("WITH candidate") :].strip()
