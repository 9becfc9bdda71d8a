"""`python -m bench.django_bench`: the Django scenario, ours against the Django-integrated peers.

A view (bench/django_site) writes an order and defers its job inside
`transaction.atomic()`: ours and procrastinate (procrastinate.contrib.django)
through Django's own connection, django-tasks-db by an ORM insert, Celery by
`delay_on_commit` (its Django pattern: published to RabbitMQ once the
transaction commits). N requests go through Django's test client (the full
request path, no network) one after another. Then the site's worker drains
them: `manage.py procrastinate worker --concurrency C` for ours and for
procrastinate, `celery -A bench.django_site.celery_app worker --pool threads
--concurrency C` for Celery, `manage.py db_worker` for django-tasks-db (one task
at a time per process, its only mode). Each job confirms its order (one ORM
UPDATE). The drain clock starts when the first job is done or leaves the queue
(so start-up is not counted) and stops when none is left. Repetitions are
interleaved and the order alternates.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from typing import Any

import psycopg

from bench.broker_runs import KILL_GRACE
from bench.server import find_server, proc_cpu_seconds, scalar
from bench.systems import Ours, Procrastinate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PENDING = {
    "ours": Ours.pending_count_sql,
    "procrastinate": Procrastinate.pending_count_sql,
    # Celery's queue lives in RabbitMQ: what is left is the orders not yet confirmed.
    "celery": "SELECT count(*) FROM benchapp_order WHERE NOT confirmed",
    "django-tasks-db": "SELECT count(*) FROM django_tasks_database_dbtaskresult"
    " WHERE status IN ('READY', 'RUNNING')",
}
SYSTEMS = ("ours", "procrastinate", "celery", "django-tasks-db")


class DjangoSite:
    """One of the two configurations of the site, as a system the Server can template."""

    def __init__(self, system: str) -> None:
        self.system = system
        self.name = f"django-{system}".replace("django-django", "django")

    def env(self, dsn: str) -> dict[str, str]:
        return {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "bench.django_site.settings",
            "BENCH_DJANGO_DSN": dsn,
            "BENCH_DJANGO_SYSTEM": self.system,
        }

    def manage(self, dsn: str, *args: str) -> list[str]:
        return [sys.executable, "-m", "bench.django_site.manage", *args]

    def install(self, dsn: str) -> None:
        subprocess.run(
            self.manage(dsn, "migrate", "-v", "0"), env=self.env(dsn), cwd=ROOT, check=True
        )

    def unavailable(self) -> str | None:
        """Why this site cannot run here (a missing package or broker), or None."""
        import importlib.util

        from bench.peers_broker import AMQP_HOST, AMQP_PORT, reachable

        package = {"procrastinate": "procrastinate", "celery": "celery"}.get(
            self.system, "django_tasks_db" if self.system == "django-tasks-db" else "django"
        )
        if importlib.util.find_spec(package) is None:
            return f"package {package!r} not installed (pip install -e '.[bench]')"
        if self.system == "celery" and not reachable(AMQP_HOST, AMQP_PORT):
            return f"RabbitMQ {AMQP_HOST}:{AMQP_PORT} not reachable"
        return None

    def worker_cmd(self, dsn: str, concurrency: int) -> list[str]:
        if self.system in ("ours", "procrastinate"):
            return self.manage(dsn, "procrastinate", "worker", "--concurrency", str(concurrency))
        if self.system == "celery":
            return [sys.executable, "-m", "celery", "-A", "bench.django_site.celery_app",
                    "worker", "--pool", "threads", "--concurrency", str(concurrency),
                    "--without-gossip", "--without-mingle", "--without-heartbeat",
                    "--loglevel", "WARNING"]  # fmt: skip
        return self.manage(dsn, "db_worker", "--interval", "0.1", "--no-startup-delay")

    def broker_queue(self, action: str) -> int:
        """Celery's queue in RabbitMQ: "count" its messages, "purge" or "delete" it."""
        import kombu

        from bench.django_site.settings import CELERY_QUEUE
        from bench.peers_broker import AMQP_URL

        with kombu.Connection(AMQP_URL) as conn:
            channel = conn.default_channel
            try:
                if action == "count":
                    return int(channel.queue_declare(CELERY_QUEUE, passive=True)[1])
                if action == "purge":
                    return int(channel.queue_purge(CELERY_QUEUE) or 0)
                channel.queue_delete(CELERY_QUEUE)
                channel.exchange_delete(CELERY_QUEUE)
            except Exception:  # not declared yet (a first purge): nothing to do
                if action == "count":
                    raise
        return 0


def _client_main(n: int) -> None:
    """In a child process with the site's settings: n requests, print seconds and CPU."""
    import django

    django.setup()
    from django.test import Client

    client = Client()
    first = client.get("/order/0")  # connect, warm caches
    if first.status_code != 200:
        raise SystemExit(f"view answered {first.status_code}: {first.content[:300]!r}")
    cpu = time.process_time()
    start = time.perf_counter()
    for i in range(1, n):
        response = client.get(f"/order/{i}")
        if response.status_code != 200:
            raise SystemExit(f"view answered {response.status_code}")
    seconds = time.perf_counter() - start
    print(f"{seconds} {time.process_time() - cpu}")


def run_once(server: Any, site: DjangoSite, n: int, concurrency: int) -> dict[str, float]:
    dbname = server.scratch(site)
    dsn = server.dsn(dbname)
    if site.system == "celery":
        site.broker_queue("purge")
    try:
        out = subprocess.run(
            [sys.executable, "-m", "bench.django_bench", "--client", str(n)],
            env=site.env(dsn), cwd=ROOT, capture_output=True, text=True,
        )  # fmt: skip
        if out.returncode:
            raise RuntimeError(f"{site.name} client failed:\n{out.stderr[-2000:]}")
        seconds, cpu = map(float, out.stdout.split())
        with psycopg.connect(dsn, autocommit=True) as conn:
            stored = scalar(conn, PENDING[site.system])
            if site.system == "celery":  # the messages must be in the broker, too
                stored = min(stored, site.broker_queue("count"))
            if stored != n:
                raise RuntimeError(f"{site.name}: {n} views ran but {stored} jobs stored")
            conn.execute("VACUUM ANALYZE")
            worker = subprocess.Popen(
                site.worker_cmd(dsn, concurrency), env=site.env(dsn), cwd=ROOT,
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            try:
                deadline = time.perf_counter() + 120 + n / 20
                while scalar(conn, PENDING[site.system]) >= n:
                    if worker.poll() is not None or time.perf_counter() > deadline:
                        raise RuntimeError(f"{site.name} worker did not start: {worker.stderr}")
                    time.sleep(0.005)
                start, cpu_start = time.perf_counter(), proc_cpu_seconds(worker.pid)
                while scalar(conn, PENDING[site.system]) > 0:
                    if worker.poll() is not None or time.perf_counter() > deadline:
                        raise RuntimeError(f"{site.name} worker stopped or too slow")
                    time.sleep(0.02)
                drain = time.perf_counter() - start
                worker_cpu = proc_cpu_seconds(worker.pid) - cpu_start
            finally:
                worker.terminate()
                try:  # the figures are taken: an idle Celery worker's warm shutdown takes ~10 s
                    worker.wait(timeout=KILL_GRACE)
                except subprocess.TimeoutExpired:
                    worker.kill()
                    worker.wait()
        return {
            "view_defers_per_s": (n - 1) / seconds,
            "view_cpu_ms_per_request": cpu * 1000 / (n - 1),
            "drain_jobs_per_s": (n - 1) / drain,
            "worker_cpu_ms_per_job": worker_cpu * 1000 / (n - 1),
        }
    finally:
        server.drop(dbname)
        if site.system == "celery":
            site.broker_queue("delete")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.django_bench", description=__doc__)
    parser.add_argument("--jobs", type=int, default=2000, help="requests, then jobs drained")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument(
        "--concurrency",
        type=int,
        default=10,
        help="the workers' concurrency (db_worker: one at a time)",
    )
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--dsn")
    parser.add_argument("--client", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.client:
        _client_main(args.client)
        return 0
    sites = []
    for name in (s.strip() for s in args.systems.split(",") if s.strip()):
        site = DjangoSite(name)
        reason = site.unavailable()
        if reason:
            print(f"# skipped {site.name}: {reason}")
        else:
            sites.append(site)
    server = find_server(args.dsn, False)
    results: dict[str, list[dict[str, float]]] = {site.name: [] for site in sites}
    print(
        f"# django scenario: {args.jobs} jobs, {args.reps} reps, workers at -c {args.concurrency}"
    )
    try:
        for rep in range(args.reps):
            order = sites if rep % 2 == 0 else sites[::-1]
            for site in order:
                row = run_once(server, site, args.jobs, args.concurrency)
                results[site.name].append(row)
                shown = ", ".join(f"{k} {v:,.2f}" for k, v in row.items())
                print(f"  rep {rep + 1} {site.name:16} {shown}", flush=True)
    finally:
        server.cleanup()
    keys = ["view_defers_per_s", "view_cpu_ms_per_request", "drain_jobs_per_s",
            "worker_cpu_ms_per_job"]  # fmt: skip
    print("\n| system | " + " | ".join(f"{k} median (min–max)" for k in keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for name, rows in results.items():
        cells = []
        for k in keys:
            values = [r[k] for r in rows]
            cells.append(
                f"{statistics.median(values):,.2f} ({min(values):,.2f}–{max(values):,.2f})"
            )
        print(f"| {name} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
