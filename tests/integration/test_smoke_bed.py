from procrastinate_core import sql


def test_each_test_database_has_every_migration(db_conn):
    versions = [r[0] for r in db_conn.execute("SELECT version FROM pcq_migrations ORDER BY 1")]
    assert versions == [m.version for m in sql.migrations()]
    assert db_conn.execute("SELECT count(*) FROM pcq_jobs").fetchone() == (0,)
