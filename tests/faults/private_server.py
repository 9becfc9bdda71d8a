"""A PostgreSQL cluster of one test process's own, for the faults that restart or stop the server.

`pg_createcluster` where Debian's wrappers are (as root), else an embedded
pgserver. Each test process has its own (its name carries the pid, its port
is free), so scenarios that restart or stop a server can run side by side.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

from tests.support.waiting import wait_until


def _free_port() -> int:
    """A TCP port nobody listens on (another run's cluster may hold the obvious one)."""
    import socket

    for port in range(5440 + os.getpid() % 50, 5600):
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) != 0:
                return port
    raise RuntimeError("no free port for a private PostgreSQL in 5440-5599")


class PrivateServer:
    """A cluster of our own: `pg_createcluster` when available, else an embedded pgserver."""

    def __init__(self) -> None:
        self.name = f"fault{os.getpid()}"
        self.port = _free_port()
        self.kind = (
            "debian" if shutil.which("pg_createcluster") and os.geteuid() == 0 else "pgserver"
        )
        self.version = "15"
        self.embedded: Any = None
        self.folder: str | None = None
        self.params: dict[str, str] = {}

    def start(self) -> None:
        if self.kind == "debian":
            versions = sorted(os.listdir("/usr/lib/postgresql"))
            self.version = versions[-1]
            subprocess.run(
                [
                    "pg_createcluster",
                    self.version,
                    self.name,
                    "--port",
                    str(self.port),
                    "--start",
                    "--",
                    "--auth-local=trust",
                    "--auth-host=trust",
                ],
                check=True,
                capture_output=True,
            )
            self.params = {
                "host": "127.0.0.1",
                "port": str(self.port),
                "user": "postgres",
                "dbname": "postgres",
            }
        else:  # pragma: no cover - used where Debian's wrappers are missing
            from pgserver.postgres_server import get_server  # what pgserver.get_server is

            from procrastinate_core.connectors.params import parse_dsn

            self.folder = tempfile.mkdtemp(prefix="pcq-fault-pg-")
            self.embedded = get_server(self.folder, cleanup_mode="stop")
            self.params = parse_dsn(self.embedded.get_uri())
        wait_until(self.reachable, timeout=30, interval=0.2, what="private server up")

    def _kill_processes(self) -> None:
        """Last resort when even an immediate stop hangs: SIGKILL this cluster's processes only."""
        marker = f"{self.version}/{self.name}"
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                cmdline = (
                    Path(f"/proc/{entry}/cmdline")
                    .read_bytes()
                    .replace(b"\0", b" ")
                    .decode(errors="replace")
                )
            except OSError:
                continue
            if marker in cmdline and ("postgres" in cmdline):
                try:
                    os.kill(int(entry), signal.SIGKILL)
                except ProcessLookupError:
                    pass
        wait_until(
            lambda: not self._running_processes(marker),
            timeout=10,
            what="private server processes gone",
        )

    @staticmethod
    def _running_processes(marker: str) -> bool:
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    if marker in Path(f"/proc/{entry}/cmdline").read_bytes().replace(
                        b"\0", b" "
                    ).decode(errors="replace"):
                        return True
                except OSError:
                    continue
        return False

    def _start(self) -> None:
        """Start the cluster, retrying: right after an immediate stop the start can fail.

        Seen once in CI: `pg_ctlcluster start` exited 1 straight after a `stop -m
        immediate` (a backend of the old postmaster still held its shared memory or
        port). The scenarios after it must still find a server, so retry for a while,
        clearing leftover processes, and fail with the server's own log when that is
        not enough.
        """
        marker = f"{self.version}/{self.name}"
        errors: list[str] = []
        for attempt in range(6):
            result = subprocess.run(
                ["pg_ctlcluster", self.version, self.name, "start"],
                capture_output=True,
                text=True,
                timeout=60,
            )
            if result.returncode == 0 or self.reachable():
                return
            errors.append(
                f"attempt {attempt + 1}: exit {result.returncode}: {result.stderr.strip()}"
            )
            if attempt >= 1 and self._running_processes(marker):
                self._kill_processes()
            time.sleep(1 + attempt)
        log = Path(f"/var/log/postgresql/postgresql-{self.version}-{self.name}.log")
        tail = (
            "\n".join(log.read_text(errors="replace").splitlines()[-30:])
            if log.exists()
            else "(no log)"
        )
        raise RuntimeError(
            "private server would not start:\n" + "\n".join(errors) + "\nserver log:\n" + tail
        )

    def dsn(self, dbname: str = "postgres") -> str:
        return psycopg.conninfo.make_conninfo(**{**self.params, "dbname": dbname})

    def reachable(self) -> bool:
        try:
            psycopg.connect(self.dsn(), connect_timeout=2).close()
        except psycopg.Error:
            return False
        return True

    def ctl(self, action: str, mode: str = "fast") -> None:
        if self.kind == "debian":
            if action == "restart":
                # A stop that hangs (seen now and then under load) must not leave the
                # server down for the following scenarios: escalate to immediate.
                self.ctl("stop", mode)
                self.ctl("start")
                return
            if action == "start":
                self._start()
                return
            args = ["pg_ctlcluster", self.version, self.name, action]
            if action == "stop":
                args += ["-m", mode, "--", "-t", "15" if mode == "fast" else "5"]
            try:
                subprocess.run(args, check=True, capture_output=True, timeout=30)
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
                if action != "stop":
                    raise
                if mode == "fast":
                    self.ctl("stop", "immediate")
                else:
                    self._kill_processes()
        else:  # pragma: no cover
            from pgserver._commands import POSTGRES_BIN_PATH

            args = [str(Path(POSTGRES_BIN_PATH) / "pg_ctl"), "-D", str(self.folder), action, "-w"]
            if action in ("stop", "restart"):
                args += ["-m", mode]
            subprocess.run(args, check=True, capture_output=True, timeout=60)

    def create_database(self, name: str) -> str:
        from procrastinate_core.schema import read_schema

        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
        with psycopg.connect(self.dsn(name), autocommit=True) as conn:
            conn.execute(read_schema())
        return self.dsn(name)

    def remove(self) -> None:
        if self.kind == "debian":
            # immediate: a fast stop waits for a checkpoint we do not need
            subprocess.run(
                ["pg_ctlcluster", self.version, self.name, "stop", "-m", "immediate"],
                capture_output=True,
            )
            subprocess.run(["pg_dropcluster", self.version, self.name], capture_output=True)
        elif self.embedded is not None:  # pragma: no cover
            self.embedded.cleanup()
            shutil.rmtree(self.folder or "", ignore_errors=True)
