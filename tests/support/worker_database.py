"""Each test process's database with the schema applied, emptied between tests.

Each test process (each xdist worker) owns one database cloned from the
template (`WorkerDatabase`), emptied after every test: deleting the rows is far
cheaper than creating and dropping a database (or truncating its tables). The
server and the template come from tests/support/database.py.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from tests.support.database import TestServer

# What a database is made of, one text row per object, for comparing a used
# database with the template it was cloned from. Rows of a table's parts carry
# the table's name first (`owner`), so tables a test added can be told apart.
_CATALOG = """
WITH rel AS (
    SELECT c.oid, c.relname, c.relkind, n.nspname,
           coalesce(idx.indrelid, dep.refobjid, c.oid)::regclass::text AS owner
    FROM pg_class AS c
    JOIN pg_namespace AS n ON n.oid = c.relnamespace
    LEFT JOIN pg_index AS idx ON idx.indexrelid = c.oid
    LEFT JOIN pg_depend AS dep ON c.relkind = 'S' AND dep.objid = c.oid
        AND dep.classid = 'pg_class'::regclass AND dep.deptype IN ('a', 'i')
    WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
      AND n.nspname NOT LIKE 'pg_temp%' AND n.nspname NOT LIKE 'pg_toast_temp%'
)
SELECT owner, 'relation ' || nspname || '.' || relname || ' ' || relkind::text FROM rel
UNION ALL
SELECT rel.owner, 'column ' || rel.relname || '.' || a.attname || ' '
       || format_type(a.atttypid, a.atttypmod)
       || ' ' || a.attnotnull::text || ' ' || coalesce(pg_get_expr(d.adbin, d.adrelid), '')
FROM rel JOIN pg_attribute AS a ON a.attrelid = rel.oid AND a.attnum > 0 AND NOT a.attisdropped
LEFT JOIN pg_attrdef AS d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
UNION ALL
SELECT rel.owner, 'index ' || pg_get_indexdef(rel.oid) FROM rel WHERE rel.relkind IN ('i', 'I')
UNION ALL
SELECT rel.owner, 'constraint ' || con.conname || ' ' || pg_get_constraintdef(con.oid)
FROM rel JOIN pg_constraint AS con ON con.conrelid = rel.oid
UNION ALL
SELECT rel.owner, 'trigger ' || pg_get_triggerdef(t.oid) || ' ' || t.tgenabled::text
FROM rel JOIN pg_trigger AS t ON t.tgrelid = rel.oid AND NOT t.tgisinternal
UNION ALL
SELECT rel.owner, 'rule ' || r.rulename || ' ' || md5(pg_get_ruledef(r.oid))
FROM rel JOIN pg_rewrite AS r ON r.ev_class = rel.oid
UNION ALL
SELECT NULL, 'function ' || p.oid::regprocedure::text || ' ' || md5(coalesce(p.prosrc, ''))
       || ' ' || array_to_string(coalesce(p.proconfig, '{}'), ',')
FROM pg_proc AS p JOIN pg_namespace AS n ON n.oid = p.pronamespace
WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
UNION ALL
SELECT NULL, 'type ' || t.oid::regtype::text || ' ' || t.typtype::text
FROM pg_type AS t JOIN pg_namespace AS n ON n.oid = t.typnamespace
WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
  AND n.nspname NOT LIKE 'pg_temp%' AND n.nspname NOT LIKE 'pg_toast_temp%'
  AND t.typtype IN ('e', 'd', 'r', 'm')
UNION ALL
SELECT NULL, 'schema ' || nspname FROM pg_namespace
WHERE nspname NOT LIKE 'pg_%' AND nspname <> 'information_schema'
UNION ALL
SELECT NULL, 'extension ' || extname || ' ' || extversion FROM pg_extension
UNION ALL
SELECT NULL, 'event trigger ' || evtname || ' ' || evtenabled::text FROM pg_event_trigger
UNION ALL
SELECT NULL, 'setting ' || array_to_string(setconfig, ',') FROM pg_db_role_setting
WHERE setdatabase = (SELECT oid FROM pg_database WHERE datname = current_database())
UNION ALL
SELECT NULL, 'prepared transaction ' || gid FROM pg_prepared_xacts
WHERE database = current_database()
UNION ALL
SELECT NULL, 'publication ' || pubname FROM pg_publication
"""

#: The application_name of the harness's own connection to a worker database.
HARNESS_APPLICATION = "pcq-test-harness"

#: Kept by the reset: the schema's own record of its migrations.
_KEPT_TABLES = {"public.pcq_migrations"}

# A cheap stand-in for _CATALOG: the row count and the sum of the row versions'
# xmin of each catalog _CATALOG reads (temporary objects left out, as there).
# Any DDL inserts, deletes or replaces rows in one of them, and a replaced row
# carries a new transaction id: larger than every xmin of a state seen before,
# so no mix of changes adds up to the same sum. When this differs from the
# last state _CATALOG found pristine, the full comparison runs (and may find
# nothing: a TRUNCATE rewrites pg_class rows too). About 1 ms of server time,
# against 10-20 ms for _CATALOG on a fresh connection, after every test.
#: Each catalog's rows counted: (FROM clause, its alias). `rel` is pg_class less temporary objects.
_FINGERPRINTED = [
    ("rel", "rel"),
    ("pg_attribute AS a JOIN rel ON rel.oid = a.attrelid", "a"),
    ("pg_attrdef AS d JOIN rel ON rel.oid = d.adrelid", "d"),
    ("pg_index AS i JOIN rel ON rel.oid = i.indexrelid", "i"),
    ("pg_constraint AS c WHERE c.connamespace NOT IN (SELECT oid FROM temp_ns)", "c"),
    ("pg_trigger AS t JOIN rel ON rel.oid = t.tgrelid", "t"),
    ("pg_rewrite AS r JOIN rel ON rel.oid = r.ev_class", "r"),
    ("pg_proc AS p WHERE p.pronamespace NOT IN (SELECT oid FROM temp_ns)", "p"),
    ("pg_type AS y WHERE y.typnamespace NOT IN (SELECT oid FROM temp_ns)", "y"),
    ("pg_namespace AS n WHERE n.oid NOT IN (SELECT oid FROM temp_ns)", "n"),
    ("pg_extension AS x", "x"),
    ("pg_event_trigger AS e", "e"),
    ("pg_publication AS u", "u"),
    (
        "pg_db_role_setting AS s "
        "WHERE s.setdatabase = (SELECT oid FROM pg_database WHERE datname = current_database())",
        "s",
    ),
]
_FINGERPRINT = (
    "WITH temp_ns AS (SELECT oid FROM pg_namespace "
    "WHERE nspname LIKE 'pg_temp%' OR nspname LIKE 'pg_toast_temp%'), "
    "rel AS (SELECT oid, xmin FROM pg_class WHERE relnamespace NOT IN (SELECT oid FROM temp_ns)) "
    "SELECT concat_ws(' ', "
    + ", ".join(
        f"(SELECT count(*) || ':' || coalesce(sum({alias}.xmin::text::bigint), 0) FROM {source})"
        for source, alias in _FINGERPRINTED
    )
    + ", (SELECT count(*) FROM pg_prepared_xacts WHERE database = current_database()))"
)


def catalog(conn: psycopg.Connection[Any]) -> set[tuple[str | None, str]]:
    """Every object of the connection's database (see _CATALOG), plus the migrations applied."""
    rows = {(owner, text) for owner, text in conn.execute(_CATALOG).fetchall()}
    if conn.execute("SELECT to_regclass('public.pcq_migrations')").fetchone() != (None,):
        rows.add((None, _migrations(conn)))
    return rows


def _migrations(conn: psycopg.Connection[Any]) -> str:
    versions = conn.execute("SELECT version FROM pcq_migrations ORDER BY version").fetchall()
    return f"migrations {[version for (version,) in versions]}"


def fingerprint(conn: psycopg.Connection[Any]) -> str:
    """_FINGERPRINT of the connection's database: equal fingerprints mean an unchanged catalog."""
    row = conn.execute(_FINGERPRINT).fetchone()
    assert row is not None
    return str(row[0])


class WorkerDatabase:
    """This process's database with the schema applied, reset between tests.

    The reset after a test ends the test's leftover connections, drops the
    tables the test created (a ledger, say), and empties every other table but
    pcq_migrations, restarting identities: the next test sees the template's
    schema with no rows and ids starting at 1 again. When the test changed
    anything else (dropped or altered a table, installed a trigger or a
    function, applied a migration) or the reset fails, the database is dropped
    and cloned from the template again. Most tests change no schema: their
    reset compares a fingerprint of the catalog (_FINGERPRINT) and the
    migrations recorded, and reads the whole catalog only when one differs.
    """

    def __init__(self, server: TestServer) -> None:
        self.server = server
        self.name = self.name_on(server)
        self.template = server.ensure_template()
        self.server.drop_database(self.name)
        self.server.create_named_database(self.name, self.template)
        with psycopg.connect(server.conninfo(self.template), autocommit=True) as conn:
            self.pristine = catalog(conn)
        #: How many times the database was cloned again (see recreate), for the curious.
        self.recreated = 0
        #: How many resets read the whole catalog (the fingerprint had changed).
        self.full_checks = 0
        #: The fingerprint, migrations and tables of the last state found pristine.
        self._clean: tuple[str, str, list[str]] | None = None
        self._conn: psycopg.Connection[Any] | None = None

    @staticmethod
    def name_on(server: TestServer) -> str:
        """This process's database name on server (a bouncer in front shares it)."""
        return f"{server.prefix}_worker"

    def reset(self) -> None:
        try:
            if self._empty():
                return
        except psycopg.Error:
            pass
        self.recreate()

    def recreate(self) -> None:
        self.recreated += 1
        self._clean = None
        self._close()
        self.server.drop_database(self.name)
        self.server.create_named_database(self.name, self.template)

    def drop(self) -> None:
        self._clean = None
        self._close()
        self.server.drop_database(self.name)

    def _connection(self) -> psycopg.Connection[Any]:
        """The harness's own connection to the database, kept open from one reset to the next.

        A new backend per reset cost the server ~6 ms of CPU (fork, caches
        filled again), some 2,000 times a run. Tests that count the database's
        backends leave it out by its application_name (HARNESS_APPLICATION).
        """
        conn = self._conn
        if conn is None or conn.closed or conn.broken:
            conn = psycopg.connect(
                self.server.conninfo(self.name, application_name=HARNESS_APPLICATION),
                autocommit=True,
            )
            conn.execute("SET lock_timeout = '5s'")
            self._conn = conn
        return conn

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _empty(self) -> bool:
        """Empties the database in place; False when only a fresh clone will do."""
        conn = self._connection()
        try:
            return self._empty_on(conn)
        except psycopg.Error:
            self._close()
            if not conn.broken:
                raise
        # A test ended every other backend of the database, ours too: once more, anew.
        try:
            return self._empty_on(self._connection())
        except psycopg.Error:
            self._close()
            raise

    def _empty_on(self, conn: psycopg.Connection[Any]) -> bool:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        clean = self._clean
        if clean is not None and (fingerprint(conn), _migrations(conn)) == clean[:2]:
            tables = clean[2]
        else:
            self._clean = None
            if not self._as_pristine(conn):
                return False
            tables = _tables(conn)
            self._clean = (fingerprint(conn), _migrations(conn), tables)
        if tables:
            _clear(conn, tables)
        return True

    def _as_pristine(self, conn: psycopg.Connection[Any]) -> bool:
        """Drops the tables the test added; False if it changed anything else."""
        self.full_checks += 1
        current = catalog(conn)
        if current == self.pristine:
            return True
        known = {owner for owner, _ in self.pristine if owner}
        missing = self.pristine - current
        added = current - self.pristine
        if missing or any(owner is None or owner in known for owner, _ in added):
            return False  # the test changed the template's own objects
        tables = sorted({owner for owner, _ in added if owner})
        conn.execute(
            sql.SQL("DROP TABLE IF EXISTS {} CASCADE").format(
                sql.SQL(", ").join(sql.SQL(table) for table in tables)  # regclass text, quoted
            )
        )
        return catalog(conn) == self.pristine


def _tables(conn: psycopg.Connection[Any]) -> list[str]:
    """The tables the reset empties: all of the database's but pcq_migrations."""
    return [
        table
        for (table,) in conn.execute(
            "SELECT c.oid::regclass::text FROM pg_class AS c "
            "JOIN pg_namespace AS n ON n.oid = c.relnamespace "
            "WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', "
            "'information_schema') "
            "AND n.nspname NOT LIKE 'pg_temp%%' AND n.nspname NOT LIKE 'pg_toast%%' "
            "AND format('%%s.%%s', n.nspname, c.relname) <> ALL(%s)",
            [sorted(_KEPT_TABLES)],
        ).fetchall()
    ]


#: Tables whose heap is larger than this are truncated, the others emptied by DELETE.
_DELETE_AT_MOST = 4 * 1024 * 1024


def _clear(conn: psycopg.Connection[Any], tables: list[str]) -> None:
    """Empties the tables and restarts their identities, as TRUNCATE ... RESTART IDENTITY would.

    A TRUNCATE gives every table and index a new file and makes the commit wait
    for them: about 0.1-0.3 s here for our six tables, after each of some 1,800
    tests. A DELETE of the few rows a test leaves takes milliseconds. It runs
    with triggers off (session_replication_role, superuser only: else TRUNCATE)
    and after a lock that waits for writers still in flight, as TRUNCATE's did;
    a table a test filled (bench) is still truncated, and that resets the dead
    rows the DELETEs left too.
    """
    big = [
        table
        for table, size in conn.execute(
            "SELECT t, pg_relation_size(t::regclass) FROM unnest(%s::text[]) AS t", [tables]
        ).fetchall()
        if size > _DELETE_AT_MOST
    ]
    superuser = conn.execute("SELECT current_setting('is_superuser') = 'on'").fetchone()
    names = sql.SQL(", ").join(sql.SQL(table) for table in tables)  # regclass text, quoted
    if big or superuser != (True,):
        conn.execute(sql.SQL("TRUNCATE {} RESTART IDENTITY CASCADE").format(names))
        return
    with conn.transaction():
        conn.execute("SET LOCAL session_replication_role = replica")
        conn.execute(sql.SQL("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE").format(names))
        for table in tables:
            conn.execute(sql.SQL("DELETE FROM {}").format(sql.SQL(table)))
        conn.execute(
            "SELECT setval(s.seqrelid, s.seqstart, false) FROM pg_sequence AS s "
            "JOIN pg_depend AS d ON d.classid = 'pg_class'::regclass AND d.objid = s.seqrelid "
            "AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i') "
            "WHERE d.refobjid = ANY(%s::regclass[])",
            [tables],
        )
