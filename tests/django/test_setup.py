"""Settings checks, autodiscovery, migrate, and `manage.py procrastinate`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.core import checks
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection

from procrastinate_django import app
from procrastinate_django.checks import check_settings

ROOT = Path(__file__).resolve().parents[2]


def _messages() -> dict[str, str]:
    return {message.id: message.msg for message in check_settings()}


def test_default_settings_pass() -> None:
    assert check_settings() == []


@pytest.mark.parametrize(
    ("setting", "value", "expected"),
    [
        (
            "DATABASE_ALIAS",
            "missing",
            "PROCRASTINATE_DATABASE_ALIAS: 'missing' is not an alias of DATABASES",
        ),
        (
            "DATABASE_ALIAS",
            "other",
            "PROCRASTINATE_DATABASE_ALIAS: DATABASES['other'] uses ENGINE "
            "'django.db.backends.sqlite3'",
        ),
        ("CONNECTOR", "mysql", "PROCRASTINATE_CONNECTOR: 'mysql' is not a connector backend"),
        ("CONNECTOR_OPTIONS", ["max_size"], "PROCRASTINATE_CONNECTOR_OPTIONS: expected a dict"),
        (
            "AUTODISCOVER_MODULE_NAME",
            "my tasks",
            "PROCRASTINATE_AUTODISCOVER_MODULE_NAME: expected a module name",
        ),
        (
            "IMPORT_PATHS",
            "myapp.tasks",
            "PROCRASTINATE_IMPORT_PATHS: expected a list of module paths",
        ),
        (
            "WORKER_DEFAULTS",
            {"concurency": 2},
            "PROCRASTINATE_WORKER_DEFAULTS: unknown worker option 'concurency'",
        ),
        (
            "WORKER_DEFAULTS",
            {"concurrency": 0},
            "PROCRASTINATE_WORKER_DEFAULTS: concurrency=0: expected an int >= 1",
        ),
        (
            "PERIODIC_DEFAULTS",
            {"max_dealy": 1},
            "PROCRASTINATE_PERIODIC_DEFAULTS: unknown option(s) ['max_dealy']",
        ),
        (
            "PERIODIC_DEFAULTS",
            {"max_delay": "soon"},
            "PROCRASTINATE_PERIODIC_DEFAULTS: max_delay='soon': expected a number of seconds > 0",
        ),
        (
            "PERIODIC_DEFAULTS",
            {"max_delay": -5},
            "PROCRASTINATE_PERIODIC_DEFAULTS: max_delay=-5: expected a number of seconds > 0",
        ),
        (
            "IMPORT_PATHS",
            ["my app.tasks"],
            "PROCRASTINATE_IMPORT_PATHS: 'my app.tasks' is not a dotted module path",
        ),
        (
            "JSON_DUMPS",
            "nowhere.dumps",
            "PROCRASTINATE_JSON_DUMPS: 'nowhere.dumps' cannot be imported",
        ),
        ("JSON_LOADS", "json.decoder", "PROCRASTINATE_JSON_LOADS: 'json.decoder' is not callable"),
        ("ON_APP_READY", 3, "PROCRASTINATE_ON_APP_READY: expected a dotted path"),
        (
            "CLOSE_DB_CONNECTIONS",
            "yes",
            "PROCRASTINATE_CLOSE_DB_CONNECTIONS: expected True or False",
        ),
        ("READONLY_MODELS", "no", "PROCRASTINATE_READONLY_MODELS: expected True or False"),
    ],
)
@pytest.mark.filterwarnings("ignore:Overriding setting DATABASES")
def test_bad_settings_are_reported_by_name(
    settings: Any, setting: str, value: Any, expected: str
) -> None:
    if setting == "DATABASE_ALIAS":  # the check reads settings.DATABASES only
        settings.DATABASES = {
            **settings.DATABASES,
            "other": {"ENGINE": "django.db.backends.sqlite3"},
        }
    setattr(settings, f"PROCRASTINATE_{setting}", value)
    errors = check_settings()
    assert [m.level for m in errors] == [checks.ERROR]
    assert errors[0].msg.startswith(expected), errors[0].msg


def test_unknown_setting_is_a_warning(settings: Any) -> None:
    settings.PROCRASTINATE_WORKER_DEFAULT = {}
    [warning] = [m for m in check_settings() if m.id == "procrastinate_django.W001"]
    assert "PROCRASTINATE_WORKER_DEFAULT is not a setting" in warning.msg


def test_settings_reach_the_app(settings: Any) -> None:
    from procrastinate_django.procrastinate_app import build_app

    settings.PROCRASTINATE_WORKER_DEFAULTS = {"concurrency": 3}
    settings.PROCRASTINATE_JSON_DUMPS = "tests.django.testapp.json_hooks.dumps"
    settings.PROCRASTINATE_JSON_LOADS = "tests.django.testapp.json_hooks.loads"
    settings.PROCRASTINATE_IMPORT_PATHS = ["tests.django.testapp.more_tasks"]
    settings.PROCRASTINATE_CONNECTOR_OPTIONS = {"max_size": 3}
    built = build_app()
    assert built.worker_defaults["concurrency"] == 3
    assert built.connector.json_dumps.__module__ == "tests.django.testapp.json_hooks"
    assert built.import_paths == ["tests.django.testapp.more_tasks"]
    assert built.worker_connector_options == {"max_size": 3}


def test_tasks_modules_are_autodiscovered() -> None:
    assert "tests.django.testapp.tasks" in app.import_paths
    assert "tests.django.testapp.tasks.record" in app.tasks


@pytest.mark.django_db
def test_migrate_installed_the_current_schema() -> None:
    status = app.schema_manager.get_status()
    assert status.is_current and status.applied == status.expected
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pcq_migrations")
        assert cursor.fetchone()[0] == len(status.expected)


@pytest.mark.django_db
def test_post_migrate_applies_core_migrations_missing_from_django_migrations() -> None:
    """A core migration newer than our Django migrations is applied by the next `migrate`."""
    from procrastinate_django.apps import apply_missing_migrations

    last = max(app.schema_manager.get_status().applied)
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM pcq_migrations WHERE version = %s", [last])
        cursor.execute(
            "ALTER TABLE pcq_jobs DROP COLUMN result, DROP COLUMN error"
        ) if last == 2 else None
    assert not app.schema_manager.get_status().is_current
    apply_missing_migrations(using="default")
    assert app.schema_manager.get_status().is_current


@pytest.mark.django_db
def test_post_migrate_leaves_an_uninstalled_database_alone() -> None:
    from procrastinate_django.schema_migration import apply_schema

    with connection.cursor() as cursor:
        cursor.execute("DROP TABLE pcq_migrations CASCADE")
    assert apply_schema("default", only_if_installed=True) == []


@pytest.mark.django_db(transaction=True)
def test_manage_py_procrastinate_commands(live_db: None, capsys: Any) -> None:
    call_command("procrastinate", "schema", "--check")
    assert "schema is current" in capsys.readouterr().out
    call_command("procrastinate", "defer", "tests.django.testapp.tasks.record", '{"value": "cli"}')
    jobs = app.job_manager.list_jobs(task="tests.django.testapp.tasks.record")
    assert [job.task_kwargs for job in jobs] == [{"value": "cli"}]
    call_command("procrastinate", "worker", "--concurrency", "1", "--one-shot")
    assert [
        job.status for job in app.job_manager.list_jobs(task="tests.django.testapp.tasks.record")
    ] == ["succeeded"]


@pytest.mark.django_db(transaction=True)
def test_manage_py_procrastinate_reads_option_variables(
    live_db: None, monkeypatch: Any, capsys: Any
) -> None:
    """PROCRASTINATE_WORKER_WAIT=false makes the worker one-shot:
    without it this would not return."""
    from tests.django.testapp.tasks import record

    record.defer(value="from env")
    monkeypatch.setenv("PROCRASTINATE_WORKER_WAIT", "false")
    monkeypatch.setenv("PROCRASTINATE_WORKER_CONCURRENCY", "2")
    call_command("procrastinate", "worker")
    assert [j.status for j in app.job_manager.list_jobs(task=record.name)] == ["succeeded"]
    monkeypatch.setenv("PROCRASTINATE_WORKER_CONCURRENCY", "two")
    with pytest.raises(CommandError, match="exited with code 2"):
        call_command("procrastinate", "worker")
    assert "environment variable PROCRASTINATE_WORKER_CONCURRENCY='two'" in capsys.readouterr().err


def test_manage_py_procrastinate_failure_exits_non_zero() -> None:
    with pytest.raises(CommandError, match="exited with code 2"):
        call_command("procrastinate", "no-such-command")


def test_sync_backend_cannot_run_the_worker_and_says_which_setting(
    settings: Any, capsys: Any
) -> None:
    settings.PROCRASTINATE_CONNECTOR = "psycopg2"
    from procrastinate_core import exceptions
    from procrastinate_django.procrastinate_app import build_app

    with pytest.raises(
        exceptions.SyncConnectorConfigurationError, match="PROCRASTINATE_CONNECTOR='psycopg2'"
    ):
        build_app().worker_app()


def test_manage_py_subprocess_stops_on_bad_settings(tmp_path: Path) -> None:
    """Through the real manage.py: system checks run before the command, naming the setting."""
    settings_module = tmp_path / "bad_settings.py"
    settings_module.write_text(
        "from tests.django.settings import *\nPROCRASTINATE_WORKER_DEFAULTS = "
        "{'concurrency': 'ten'}\n"
    )
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "bad_settings",
        "PYTHONPATH": f"{tmp_path}:{ROOT}",
    }
    result = subprocess.run(
        [sys.executable, "-m", "django", "procrastinate", "healthchecks"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "PROCRASTINATE_WORKER_DEFAULTS: concurrency='ten': expected an int >= 1" in result.stderr
    # Printed as Django prints it, not "SystemCheckError: SystemCheckError: ..."
    assert result.stderr.startswith("SystemCheckError: System check identified"), result.stderr
    assert "SystemCheckError: SystemCheckError" not in result.stderr


@pytest.mark.django_db(transaction=True)
def test_manage_py_procrastinate_healthchecks_and_shell(live_db: None, capsys: Any) -> None:
    call_command("procrastinate", "healthchecks")
    out = capsys.readouterr().out
    assert "schema is current" in out
    from tests.django.testapp.tasks import record

    job_id = record.defer(value="for the shell")
    call_command("procrastinate", "shell", "list_jobs")
    out = capsys.readouterr().out
    assert str(job_id) in out and "tests.django.testapp.tasks.record" in out, out


@pytest.mark.django_db
def test_models_are_read_only() -> None:
    from procrastinate_django.models import ProcrastinateJob, ReadOnlyError
    from tests.django.testapp.tasks import record

    job_id = record.defer(value="x")
    job = ProcrastinateJob.objects.get(pk=job_id)
    assert job.status == "todo" and job.args == {"value": "x"}
    assert [event.type for event in job.events.all()] == ["deferred"]
    with pytest.raises(ReadOnlyError, match="app.job_manager"):
        job.save()
    with pytest.raises(ReadOnlyError, match="app.job_manager"):
        job.delete()


@pytest.mark.django_db
def test_tests_can_make_the_models_writable(settings: Any) -> None:
    """PROCRASTINATE_READONLY_MODELS = False, as in procrastinate: fixtures through the ORM."""
    from django.utils import timezone

    from procrastinate_django import app
    from procrastinate_django.models import ProcrastinateJob

    settings.PROCRASTINATE_READONLY_MODELS = False
    job = ProcrastinateJob.objects.create(
        queue_name="default", task_name="made.by.a.fixture", priority=0, args={"n": 1},
        status="failed", attempts=1, abort_requested=False, created_at=timezone.now(),
    )  # fmt: skip
    [seen] = app.job_manager.list_jobs(id=job.id)
    assert (seen.task_name, seen.status, seen.task_kwargs) == (
        "made.by.a.fixture",
        "failed",
        {"n": 1},
    )
    job.status = "succeeded"
    job.save()
    assert app.job_manager.get_job_status(job.id) == "succeeded"
    assert [event.type for event in job.events.all()] == ["deferred", "succeeded"]
    job.delete()
    assert not ProcrastinateJob.objects.filter(pk=job.id).exists()


def test_on_app_ready_receives_the_app(settings: Any) -> None:
    from django.apps import apps

    from tests.django.testapp import json_hooks

    settings.PROCRASTINATE_ON_APP_READY = "tests.django.testapp.json_hooks.on_ready"
    apps.get_app_config("procrastinate_django").ready()
    assert json_hooks.READY_CALLS == [app._wrapped]  # type: ignore[attr-defined]  # behind the lazy object
