"""The admin's pages next to millions of finished jobs (#12 point 3).

`python -m bench.admin_pages --rows 10000000` creates a database (default
pcq_admin_10m), loads it with plain SQL (triggers off, as bench/backlog.py):
`--rows` finished jobs over 30 days, 20 queues and 40 tasks (90 % succeeded,
7 % failed with an error, 2 % cancelled, 1 % aborted), 5,000 waiting and 50
running jobs, and the history (3 events) of the newest 1,000,000 jobs. Then it
renders each admin page through Django's test client (the full request path,
as a superuser) `--reps` times (a search once) and prints the median and range
of each with the count the page shows, then two exact counts to compare.
`--keep` leaves the database for another run (`--no-load` reuses it); without
it the database is dropped. At 10,000,000 rows it takes about 2.3 GB.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import time
from typing import Any

import psycopg
from psycopg import sql

from bench.server import find_server, scalar

_LOAD = [
    "SET session_replication_role = replica",  # bulk load: no triggers
    "INSERT INTO pcq_jobs (queue_name, task_name, status, attempts, worker_id, args, created_at,"
    " started_at, finished_at, result, error, errors) "
    "SELECT 'q' || (g %% 20), 'app.tasks.t' || ((g / 7) %% 40), s.status, 1, 1 + g %% 10,"
    " jsonb_build_object('i', g), f.at - interval '2 s', f.at - interval '1 s', f.at,"
    " CASE WHEN s.status = 'succeeded' THEN '\"ok\"'::jsonb END,"
    " CASE WHEN s.status = 'failed' THEN e.error END,"
    " CASE WHEN s.status = 'failed' THEN jsonb_build_array(e.error || '{\"attempt\": 1}')"
    " ELSE '[]' END "
    "FROM generate_series(1, %(rows)s) AS g,"
    " LATERAL (SELECT CASE WHEN g %% 100 < 90 THEN 'succeeded' WHEN g %% 100 < 97 THEN 'failed'"
    "  WHEN g %% 100 < 99 THEN 'cancelled' ELSE 'aborted' END AS status) AS s,"
    " LATERAL (SELECT now() - (%(rows)s - g) * (interval '30 days' / %(rows)s) AS at) AS f,"
    " LATERAL (SELECT jsonb_build_object('type', 'ValueError', 'message', 'boom ' || g,"
    "  'traceback', 'Traceback (most recent call last): ...') AS error) AS e",
    "INSERT INTO pcq_events (job_id, type, attempt, at, worker_id) "
    "SELECT j.id, t.type, CASE WHEN t.n = 1 THEN 0 ELSE 1 END, j.finished_at, j.worker_id "
    "FROM pcq_jobs AS j, (VALUES (1, 'deferred'), (2, 'started'), (3, 'succeeded')) AS t(n, type) "
    "WHERE j.id > %(rows)s - 1000000 ORDER BY j.id, t.n",
    "INSERT INTO pcq_jobs (queue_name, task_name, args) "
    "SELECT 'q' || (g %% 20), 'app.tasks.t' || (g %% 40), jsonb_build_object('i', g) "
    "FROM generate_series(1, 5000) AS g",
    "INSERT INTO pcq_jobs (queue_name, task_name, status, attempts, worker_id, started_at) "
    "SELECT 'q' || (g %% 20), 'app.tasks.t' || (g %% 40), 'doing', 1, 1, now() "
    "FROM generate_series(1, 50) AS g",
    "SET session_replication_role = DEFAULT",
    "VACUUM ANALYZE pcq_jobs",
    "VACUUM ANALYZE pcq_events",
]


def __getattr__(name: str) -> Any:
    """This module is the bench site's URLconf too: the admin only."""
    if name != "urlpatterns":
        raise AttributeError(name)
    from django.contrib import admin
    from django.urls import path

    return [path("admin/", admin.site.urls)]


def configure_django(params: dict[str, Any]) -> None:
    import django
    from django.conf import settings

    settings.configure(
        SECRET_KEY="bench-only",
        DEBUG=False,
        USE_TZ=True,
        ALLOWED_HOSTS=["*"],
        ROOT_URLCONF="bench.admin_pages",
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        INSTALLED_APPS=[
            "django.contrib.admin",
            "django.contrib.auth",
            "django.contrib.contenttypes",
            "django.contrib.sessions",
            "django.contrib.messages",
            "procrastinate_django",
        ],
        MIDDLEWARE=[
            "django.contrib.sessions.middleware.SessionMiddleware",
            "django.middleware.csrf.CsrfViewMiddleware",
            "django.contrib.auth.middleware.AuthenticationMiddleware",
            "django.contrib.messages.middleware.MessageMiddleware",
        ],
        TEMPLATES=[
            {
                "BACKEND": "django.template.backends.django.DjangoTemplates",
                "APP_DIRS": True,
                "OPTIONS": {
                    "context_processors": [
                        "django.template.context_processors.request",
                        "django.contrib.auth.context_processors.auth",
                        "django.contrib.messages.context_processors.messages",
                    ]
                },
            }
        ],
        DATABASES={
            "default": {
                "ENGINE": "django.db.backends.postgresql",
                "NAME": params["dbname"],
                "HOST": params.get("host", ""),
                "PORT": params.get("port", ""),
                "USER": params.get("user", ""),
                "CONN_MAX_AGE": None,
            }
        },
        PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"],
        PROCRASTINATE_AUTODISCOVER_MODULE_NAME=None,
    )
    django.setup()


def measure(reps: int, newest: int) -> list[tuple[str, list[float], str]]:
    from django.contrib.auth.models import User
    from django.core.management import call_command
    from django.test import Client

    call_command("migrate", verbosity=0)
    user = User.objects.filter(username="bench").first() or User.objects.create_superuser(
        "bench", password="pw"
    )
    client = Client()
    client.force_login(user)
    base = "/admin/procrastinate_django/procrastinatejob/"
    pages = {
        "job list": base,
        "job list, status=failed": base + "?status__exact=failed",
        "job list, queue=q3": base + "?queue_name=q3",
        "job list, status=todo": base + "?status__exact=todo",
        "job page (with history)": f"{base}{newest}/change/",
        "summary": base + "summary/",
        "dashboard": base + "dashboard/?refresh=0",
    }
    pages["job list, page 100"] = base + "?p=100"
    pages["job list, search (reads the table)"] = base + "?q=app.tasks.t7"
    results = []
    for name, url in pages.items():
        times = []
        for _ in range(1 if "search" in name else reps):
            start = time.perf_counter()
            response = client.get(url)
            times.append((time.perf_counter() - start) * 1000)
        page = response.content.decode()
        found = re.search(r"(about )?(\d+) jobs\s*(</span>)?\s*(<a|</nav>)", page) or re.search(
            r"By status \((about )?(\d+) job", page
        )
        shown = f"{found.group(1) or ''}{int(found.group(2)):,}" if found else ""
        results.append((name, times, f"{response.status_code} {shown}"))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--database", default="pcq_admin_10m")
    parser.add_argument("--dsn", help="server (default: 127.0.0.1:5432)")
    parser.add_argument("--no-load", action="store_true", help="reuse the loaded database")
    parser.add_argument("--keep", action="store_true", help="do not drop the database")
    args = parser.parse_args()
    server = find_server(args.dsn, False)
    name = sql.Identifier(args.database)
    dsn = server.dsn(args.database)
    if not args.no_load:
        with server.admin() as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))
            admin.execute(sql.SQL("CREATE DATABASE {}").format(name))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "")
    configure_django(psycopg.conninfo.conninfo_to_dict(dsn))
    from django.core.management import call_command

    try:
        if not args.no_load:
            call_command("migrate", verbosity=0)  # the queue schema, and Django's own tables
            start = time.monotonic()
            with psycopg.connect(dsn, autocommit=True) as conn:
                for statement in _LOAD:
                    conn.execute(statement, {"rows": args.rows})
                if args.rows >= 1_000_000:
                    conn.execute("CHECKPOINT")  # flush the load now, not during the timings
                size = scalar(conn, "SELECT pg_database_size(current_database())")
            print(f"# loaded in {time.monotonic() - start:.0f} s, {size / 2**30:.2f} GiB")
        with psycopg.connect(dsn, autocommit=True) as conn:
            newest = scalar(conn, "SELECT max(job_id) FROM pcq_events")  # one with its history
        print(f"# {args.rows:,} finished jobs, median of {args.reps} (min-max), ms")
        for page, times, status in measure(args.reps, newest):
            print(
                f"| {page} | {statistics.median(times):.0f} | {min(times):.0f}-{max(times):.0f} |"
                f" {status} |"
            )
        with psycopg.connect(dsn, autocommit=True) as conn:
            for what, query in (
                ("all", "SELECT count(*) FROM pcq_jobs"),
                ("failed", "SELECT count(*) FROM pcq_jobs WHERE status = 'failed'"),
            ):
                print(f"# exact count, {what}: {scalar(conn, query):,}")
    finally:
        from django.db import connections

        connections.close_all()
        if not args.keep:
            server.drop(args.database)


if __name__ == "__main__":
    main()
