"""`defer` decodes JSON_KWARGS with the app's connector `json_loads`, as procrastinate's
CLI does."""

from __future__ import annotations

import decimal
import functools
import json

import procrastinate_core as pc
from procrastinate_core.cli import main


def test_defer_decodes_the_arguments_with_the_connectors_json_loads(capsys, db_dsn, db_conn):
    connector = pc.PsycopgConnector(
        conninfo=db_dsn,
        min_size=1,
        max_size=2,
        json_loads=functools.partial(json.loads, parse_float=decimal.Decimal),
        json_dumps=functools.partial(json.dumps, default=str),
    )
    app = pc.App(connector=connector)

    @app.task(name="shop.charge")
    def charge(price):
        return None

    assert main(["defer", "shop.charge", '{"price": 1.10}'], app=app) == 0, capsys.readouterr()
    job_id = int(capsys.readouterr().out)
    [(price,)] = db_conn.execute("SELECT args->>'price' FROM pcq_jobs WHERE id = %s", [job_id])
    assert price == "1.10"  # a Decimal, kept as written; json.loads would have stored 1.1


def test_a_decoder_that_refuses_the_text_is_reported_as_bad_json(capsys, db_dsn):
    def strict(text):
        raise ValueError("no floats here")

    app = pc.App(connector=pc.PsycopgConnector(conninfo=db_dsn, json_loads=strict))

    @app.task(name="shop.charge")
    def charge(price):
        return None

    assert main(["defer", "shop.charge", '{"price": 1.10}'], app=app) == 1
    assert "JSON_KWARGS '{\"price\": 1.10}' is not valid JSON (no floats here)" in (
        capsys.readouterr().err
    )
