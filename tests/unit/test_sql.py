import re
from importlib import resources

import pytest

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


@pytest.mark.parametrize(
    ("durable_name", "gate", "start"),
    [
        (
            "job_defer_many",
            "\nWHERE (SELECT set_config('synchronous_commit', 'off', true)) = 'off'",
            "SELECT id",
        ),
        (
            "job_insert_many",
            "\nWHERE (SELECT set_config('synchronous_commit', 'off', true)) = 'off'",
            "INSERT INTO",
        ),
        (
            "job_fetch_many",
            "\n      AND (SELECT set_config('synchronous_commit', 'off', true)) = 'off'",
            "WITH candidate",
        ),
    ],
)
def test_each_nondurable_query_is_its_durable_twin_plus_the_setting(durable_name, gate, start):
    """A _nondurable query must do exactly what its durable twin does (defer, claim)."""
    durable = sql.query(durable_name)
    nondurable = sql.query(f"{durable_name}_nondurable")
    assert nondurable.count(gate) == 1
    statement = nondurable[nondurable.index(start) :].replace(gate, "")
    assert statement.strip() == durable[durable.index(start) :].strip()


def test_the_plain_insert_is_the_one_of_pcq_insert_jobs():
    """job_insert_many inserts exactly what pcq_insert_jobs (migration 0011) inserts."""

    def insert(text: str) -> str:
        body = text[text.index("INSERT INTO pcq_jobs") : text.index("RETURNING id")]
        lines = [line.split("--")[0] for line in body.splitlines()]
        return " ".join(" ".join(lines).split()).replace("%(jobs)s::jsonb", "jobs")

    [migration] = [m for m in sql.migrations() if m.version == 11]
    assert insert(sql.query("job_insert_many")) == insert(migration.sql)
