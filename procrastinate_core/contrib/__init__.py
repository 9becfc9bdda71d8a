"""Import paths that users of `procrastinate` expect (contrib.aiopg, contrib.psycopg2,
contrib.sqlalchemy).

Each module re-exports a connector; the optional driver is imported only when
the connector is built or opened.
"""
