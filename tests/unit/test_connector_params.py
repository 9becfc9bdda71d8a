"""Arguments of the optional connectors, without a database: what is accepted, refused, derived."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import procrastinate_core as pc
from procrastinate_core import exceptions
from procrastinate_core.connectors.connection_settings import ConnectionSettings
from procrastinate_core.contrib.aiopg import AiopgConnector
from procrastinate_core.contrib.psycopg2 import Psycopg2Connector
from procrastinate_core.contrib.sqlalchemy import SQLAlchemyPsycopg2Connector


@pytest.mark.parametrize("cls", [AiopgConnector, Psycopg2Connector])
def test_unknown_argument_is_a_type_error_naming_it(cls):
    with pytest.raises(TypeError, match=r"got unexpected argument\(s\) 'hots'.*libpq"):
        cls(hots="db")


def test_unknown_sqlalchemy_argument_is_a_type_error_naming_it():
    with pytest.raises(TypeError, match="pool_sise"):
        SQLAlchemyPsycopg2Connector(dsn="postgresql://h/db", pool_sise=3)


def test_libpq_keywords_at_top_level_are_connection_parameters():
    connector = Psycopg2Connector(host="db.example", port=6543, dbname="shop", maxconn=3)
    assert connector._settings.connection == {"host": "db.example", "port": 6543, "dbname": "shop"}
    assert connector.maxconn == 3 and connector.minconn == 1
    aiopg = AiopgConnector(
        host="db.example", sslmode="require", maxsize=7, timeout=5, pool_recycle=30
    )
    assert aiopg._settings.connection == {"host": "db.example", "sslmode": "require"}
    assert aiopg._settings.pool_arguments == {"maxsize": 7, "timeout": 5, "pool_recycle": 30}


def test_sqlalchemy_sorts_libpq_keywords_into_connect_args():
    connector = SQLAlchemyPsycopg2Connector(
        dsn="host=h1 dbname=d1", sslmode="prefer", pool_size=3, connect_args={"connect_timeout": 4}
    )
    assert connector._url == "postgresql+psycopg2://"
    assert connector._engine_arguments["pool_size"] == 3
    assert connector._engine_arguments["connect_args"] == {
        "connect_timeout": 4,
        "host": "h1",
        "dbname": "d1",
        "sslmode": "prefer",
        "application_name": "procrastinate_core",
    }
    assert SQLAlchemyPsycopg2Connector(dsn="postgres://u@h/d")._url == "postgresql+psycopg2://u@h/d"


def test_sqlalchemy_refuses_another_driver_with_the_fix():
    with pytest.raises(exceptions.ConfigurationError, match="PsycopgConnector"):
        SQLAlchemyPsycopg2Connector(dsn="mysql://h/db")


def test_bad_pool_bounds_are_refused():
    with pytest.raises(exceptions.ConfigurationError, match="minconn <= maxconn"):
        Psycopg2Connector(minconn=5, maxconn=2)
    with pytest.raises(TypeError, match="dsn"):
        Psycopg2Connector(dsn=42)


def test_application_name_default_user_value_and_listener_suffix():
    settings = ConnectionSettings("X", {"dsn": "host=h"})
    assert settings.connect_kwargs()["application_name"] == "procrastinate_core"
    assert settings.connect_kwargs("-listener")["application_name"] == "procrastinate_core-listener"
    mine = ConnectionSettings("X", {"application_name": "shop"})
    assert mine.connect_kwargs("-listener")["application_name"] == "shop-listener"
    in_dsn = ConnectionSettings("X", {"dsn": "postgresql://h/d?application_name=web"})
    assert "application_name" not in in_dsn.connect_kwargs()
    assert in_dsn.connect_kwargs("-listener")["application_name"] == "web-listener"


def test_target_names_host_port_dbname_and_never_the_password(monkeypatch):
    for name in ("PGPORT", "PGDATABASE", "PGUSER"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PGHOST", "env-host")
    monkeypatch.setenv("PGPASSWORD", "env-secret")
    settings = ConnectionSettings(
        "X", {"dsn": "postgresql://u:dsn-secret@h:5433/d", "password": "kw-secret"}
    )
    target = settings.target()
    assert target == "host=h port=5433 dbname=d user=u"
    env_only = ConnectionSettings("X", {"dbname": "d"}).target()
    assert env_only.startswith("host=env-host") and "secret" not in env_only


def test_aiopg_sync_counterpart_has_the_same_parameters_and_hooks():
    dumps = json.dumps
    connector = AiopgConnector(
        dsn="postgresql://u@h/d",
        sslmode="require",
        minsize=2,
        maxsize=6,
        timeout=3,
        json_dumps=dumps,
    )
    counterpart = connector.get_sync_connector()
    assert isinstance(counterpart, Psycopg2Connector)
    assert counterpart._settings.dsn == "postgresql://u@h/d"
    assert counterpart._settings.connection == {"sslmode": "require"}
    assert (counterpart.minconn, counterpart.maxconn) == (2, 6)
    assert counterpart.json_dumps is dumps and counterpart.json_loads is connector.json_loads
    assert connector.get_sync_connector() is counterpart  # one counterpart, reused


def test_every_connector_importable_from_the_package_and_contrib():
    assert pc.AiopgConnector is AiopgConnector
    assert pc.Psycopg2Connector is Psycopg2Connector
    assert pc.SQLAlchemyPsycopg2Connector is SQLAlchemyPsycopg2Connector


MISSING = """
import sys
for name in {blocked!r}:
    sys.modules[name] = None  # importing it now raises ImportError
import procrastinate_core as pc
import procrastinate_core.contrib.aiopg, procrastinate_core.contrib.psycopg2
import procrastinate_core.contrib.sqlalchemy
from procrastinate_core import exceptions
try:
    {action}
except exceptions.MissingDriverError as exc:
    print("MISSING:", exc)
else:
    print("NO ERROR")
"""


@pytest.mark.parametrize(
    ("blocked", "action", "extra"),
    [
        (["aiopg"], "import asyncio; asyncio.run(pc.AiopgConnector().open_async())", "aiopg"),
        (["psycopg2"], "pc.Psycopg2Connector().open()", "psycopg2"),
        (["sqlalchemy"], "pc.SQLAlchemyPsycopg2Connector()", "sqlalchemy"),
    ],
)
def test_missing_driver_names_the_extra_but_imports_work(blocked, action, extra):
    code = MISSING.format(blocked=blocked, action=action)
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert f'pip install "procrastinate-core[{extra}]"' in result.stdout, result.stdout


def test_sqlalchemy_target_includes_the_environment_never_the_password(monkeypatch):
    for name in ("PGPORT", "PGDATABASE", "PGUSER"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PGHOST", "env-host")
    connector = SQLAlchemyPsycopg2Connector(dsn="postgresql://u:pw-secret@/shop")
    assert connector._target() == "host=env-host dbname=shop user=u"
    keywords = SQLAlchemyPsycopg2Connector(host="h", port=5433, password="kw-secret")
    assert keywords._target() == "host=h port=5433"


def test_error_target_is_described_only_when_an_error_is_raised():
    """Describing the target parses the DSN; queries that succeed must not pay for it."""
    from procrastinate_core import exceptions
    from procrastinate_core.connectors import errors

    calls = []

    def target():
        calls.append(1)
        return "host=db port=5432 dbname=app"

    with errors.translated(target):
        pass
    assert calls == []

    class OperationalError(Exception):
        pass

    with pytest.raises(
        exceptions.DatabaseConnectionError, match=r"\(host=db port=5432 dbname=app\): gone"
    ):
        with errors.translated(target):
            raise OperationalError("gone")
    assert calls == [1]
    with pytest.raises(exceptions.DatabaseConnectionError, match=r"\(host=h port=1 dbname=d\)"):
        with errors.translated("host=h port=1 dbname=d"):
            raise OperationalError("gone")


# -- one ConnectionSettings for every connector (issue #15's drift) -----------------
ALL_FIVE = [
    lambda **kw: pc.PsycopgConnector(conninfo=kw.pop("dsn", ""), **kw),
    lambda **kw: pc.SyncPsycopgConnector(conninfo=kw.pop("dsn", ""), **kw),
    lambda **kw: AiopgConnector(**kw),
    lambda **kw: Psycopg2Connector(**kw),
    lambda **kw: SQLAlchemyPsycopg2Connector(**kw),
]
FIVE_IDS = ["psycopg", "sync_psycopg", "aiopg", "psycopg2", "sqlalchemy"]


@pytest.mark.parametrize("build", ALL_FIVE, ids=FIVE_IDS)
def test_every_connector_names_the_same_target_with_pghost_set(build, monkeypatch):
    for name in ("PGPORT", "PGDATABASE", "PGUSER"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PGHOST", "env-host")
    connector = build(dbname="shop", password="kw-secret")
    assert connector._settings.target() == "host=env-host dbname=shop"


@pytest.mark.parametrize("build", ALL_FIVE[:2] + ALL_FIVE[2:3], ids=FIVE_IDS[:3])
def test_listener_keeps_the_dsn_application_name_with_its_suffix(build):
    connector = build(dsn="postgresql://u@h/d?application_name=web")
    assert connector._settings.listener_kwargs()["application_name"] == "web-listener"
    assert "application_name" not in connector._settings.connect_kwargs()  # the DSN's stays


@pytest.mark.parametrize("build", ALL_FIVE, ids=FIVE_IDS)
def test_pooler_is_validated_by_every_connector(build):
    with pytest.raises(exceptions.ConfigurationError, match=r"pooler='pgbouncer'.*'transaction'"):
        build(pooler="pgbouncer")
    assert build(pooler="transaction")._settings.pooler == "transaction"


def test_listen_dsn_is_for_async_connectors_and_adds_to_the_main_parameters():
    connector = pc.PsycopgConnector(
        conninfo="host=bouncer port=6432 dbname=app user=u",
        pooler="transaction",
        listen_dsn="postgresql://db.internal:5432",
    )
    assert connector._settings.listener_kwargs() == {
        "application_name": "procrastinate_core-listener",
        "host": "db.internal",
        "port": "5432",
    }
    assert connector._settings.listener_target() == "host=db.internal port=5432 dbname=app user=u"
    counterpart = connector.get_sync_connector()  # the sync twin keeps the pooler, not the listener
    assert isinstance(counterpart, pc.SyncPsycopgConnector)
    assert counterpart._settings.pooler == "transaction"
    assert counterpart._settings.connection_kwargs()["prepare_threshold"] is None
    for sync in (pc.SyncPsycopgConnector, Psycopg2Connector):
        with pytest.raises(TypeError, match="'listen_dsn'"):
            sync(listen_dsn="host=db")


def test_pool_factory_builds_the_pool_and_its_sync_twin_is_the_null_pool():
    import psycopg_pool

    connector = pc.PsycopgConnector(pool_factory=psycopg_pool.AsyncNullConnectionPool, max_size=3)
    assert connector.pool_factory is psycopg_pool.AsyncNullConnectionPool
    sync = connector.get_sync_connector()
    assert isinstance(sync, pc.SyncPsycopgConnector)
    assert sync.pool_factory is psycopg_pool.NullConnectionPool
    with pytest.raises(TypeError, match="pool_factory"):
        pc.PsycopgConnector(pool_factory="psycopg_pool.AsyncNullConnectionPool")  # type: ignore[arg-type]  # the wrong type is the point
