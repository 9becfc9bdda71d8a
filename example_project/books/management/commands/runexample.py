"""`manage.py runexample`: migrate, make a demo superuser if none, serve the site with a worker
beside it.

The worker is `manage.py procrastinate worker` in a child process, as it would
run in production. Ctrl-C (or SIGTERM) stops the web server, then the worker
gracefully (running jobs finish), then the embedded PostgreSQL if we use one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand

ROOT = Path(__file__).resolve().parents[4]
DEMO_USER = ("admin", "admin")


class Command(BaseCommand):
    help = "Run the example project: migrate, demo superuser, web server and a worker."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "addrport",
            nargs="?",
            default="127.0.0.1:8000",
            help="where to serve (default 127.0.0.1:8000)",
        )
        parser.add_argument(
            "--no-worker",
            action="store_true",
            help="serve only; run `manage.py procrastinate worker` yourself",
        )

    def handle(self, *args: Any, addrport: str, no_worker: bool, **options: Any) -> None:
        call_command("migrate", interactive=False, verbosity=0)
        self.stdout.write("Database migrated (the queue schema included).")
        self._ensure_superuser()
        worker = None if no_worker else self._start_worker()
        previous = signal.signal(signal.SIGTERM, _interrupt)
        try:
            self.stdout.write(
                f"Site: http://{addrport}/   admin: http://{addrport}/admin/   (Ctrl-C stops)"
            )
            self.stdout.flush()
            call_command("runserver", addrport, use_reloader=False, skip_checks=True)
        except (KeyboardInterrupt, SystemExit):  # runserver turns Ctrl-C into sys.exit(0)
            pass
        finally:
            signal.signal(signal.SIGTERM, previous)
            if worker is not None:
                self._stop_worker(worker)
        self.stdout.write("Stopped.")

    def _ensure_superuser(self) -> None:
        users = get_user_model().objects
        if users.filter(is_superuser=True).exists():
            self.stdout.write("Log into the admin with your existing superuser.")
            return
        username, password = DEMO_USER
        users.create_superuser(username, f"{username}@example.invalid", password)
        self.stdout.write(
            f"Created a demo superuser: username {username!r}, password {password!r}."
        )

    def _start_worker(self) -> subprocess.Popen[bytes]:
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": os.environ.get(
                "DJANGO_SETTINGS_MODULE", "example_project.settings"
            ),
        }
        command = [sys.executable, str(ROOT / "manage.py"), "procrastinate", "-v", "worker"]
        self.stdout.write("Starting a worker: " + " ".join(command[1:]))
        # Its own session: a Ctrl-C in the terminal reaches us only, and we stop it gracefully.
        return subprocess.Popen(command, cwd=ROOT, env=env, start_new_session=True)

    def _stop_worker(self, worker: subprocess.Popen[bytes]) -> None:
        if worker.poll() is not None:
            return
        self.stdout.write("Stopping the worker (running jobs finish first)...")
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=60)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt
