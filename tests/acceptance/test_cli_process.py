"""The CLI as a real process: entry points, PROCRASTINATE_APP, exit codes and log lines."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

from tests.acceptance import cli_app

REPO = pathlib.Path(__file__).resolve().parents[2]
APP_PATH = "tests.acceptance.cli_app.app"


def cli_env(dsn: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PROCRASTINATE_APP"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env[cli_app.DSN_ENV_VAR] = dsn
    env.update(extra)
    return env


def run_cli(
    env: dict[str, str], *argv: str, command: list[str] | None = None
) -> subprocess.CompletedProcess[str]:
    command = command or [sys.executable, "-m", "procrastinate_core"]
    return subprocess.run(
        [*command, *argv], env=env, cwd=REPO, capture_output=True, text=True, timeout=60
    )


def test_console_script_and_module_agree(db_dsn):
    script = pathlib.Path(sys.executable).with_name("procrastinate-core")
    assert script.exists(), f"console script missing next to {sys.executable}: install the project"
    by_script = run_cli(cli_env(db_dsn), "--version", command=[str(script)])
    by_module = run_cli(cli_env(db_dsn), "--version")
    assert by_script.returncode == by_module.returncode == 0
    assert by_script.stdout.startswith("procrastinate-core ")
    assert by_module.stdout.split()[-1] == by_script.stdout.split()[-1]
    assert by_module.stdout.startswith("python -m procrastinate_core ")


def test_defer_and_list_through_the_env_var(db_dsn, db_conn):
    env = cli_env(db_dsn, PROCRASTINATE_APP=APP_PATH)
    done = run_cli(env, "defer", "tests.acceptance.cli_app.add", '{"a": 1, "b": 2}')
    assert done.returncode == 0, done.stderr
    job_id = int(done.stdout)
    assert db_conn.execute(
        "SELECT task_name FROM pcq_jobs WHERE id = %s", (job_id,)
    ).fetchone() == ("tests.acceptance.cli_app.add",)
    listed = run_cli(env, "shell", "list_jobs")
    assert (listed.returncode, listed.stdout) == (
        0,
        f"#{job_id} tests.acceptance.cli_app.add on maths - [todo]\n",
    )


def test_errors_exit_non_zero_with_one_line(db_dsn):
    env = cli_env(db_dsn)
    missing = run_cli(env, "schema", "--check")
    assert missing.returncode == 1
    assert missing.stderr == (
        "Error: no app given: pass --app=dotted.path.to.app (e.g. --app=myproject.tasks.app) "
        "or set PROCRASTINATE_APP\n"
    )
    bad = run_cli(env, "--app", APP_PATH, "defer", "nope.task")
    assert bad.returncode == 1 and bad.stdout == ""
    assert bad.stderr.startswith("Error: task 'nope.task' is not registered in this app")
    usage = run_cli(env, "--app", APP_PATH, "defer")
    assert usage.returncode == 2 and "the following arguments are required: TASK" in usage.stderr


def test_verbose_gives_structured_log_lines(pg_server, empty_db_name):
    env = cli_env(pg_server.conninfo(empty_db_name))
    quiet = run_cli(env, "--app", APP_PATH, "schema", "--check")
    assert quiet.returncode == 1
    applied = run_cli(env, "--app", APP_PATH, "-v", "schema", "--apply")
    assert applied.returncode == 0, applied.stderr
    lines = applied.stderr.splitlines()
    first = next(line for line in lines if "Applied migration 0001" in line)
    stamp, level, logger, *rest = first.split(" ")
    assert stamp.endswith("Z") and "T" in stamp
    assert (level, logger) == ("INFO", "procrastinate_core.schema")
    assert first.endswith("Applied migration 0001_initial action=apply_migration version=1")
    assert "DEBUG" not in applied.stderr


def test_json_log_format_and_debug_level(db_dsn):
    env = cli_env(db_dsn)
    done = run_cli(env, "--app", APP_PATH, "-vv", "--log-format", "json", "worker", "--one-shot")
    assert done.returncode == 0, done.stderr
    records = []
    for line in done.stderr.splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            pytest.fail(
                f"a stderr line is not a JSON record: {line!r}\nwhole stderr:\n{done.stderr}"
            )
    assert records, "expected log records at -vv"
    assert {"time", "level", "logger", "message"} <= set(records[0])
    assert any(r["level"] == "DEBUG" for r in records)
    assert any(r.get("action") == "imported_tasks" for r in records)


def test_quiet_by_default(db_dsn):
    env = cli_env(db_dsn)
    quiet = run_cli(env, "--app", APP_PATH, "worker", "--one-shot")
    loud = run_cli(env, "--app", APP_PATH, "-v", "worker", "--one-shot")
    assert quiet.returncode == loud.returncode == 0
    assert quiet.stderr == ""
    assert " INFO procrastinate_core.worker " in loud.stderr
