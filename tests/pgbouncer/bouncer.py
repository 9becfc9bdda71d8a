"""A private PgBouncer for the tests: its own config and auth files, a free port, stopped at the
end.

Never touches a system PgBouncer service. PgBouncer refuses to run as root, so
as root it is started with `-u nobody` (it drops privileges itself; `-u` the
socket's owner for a server reached through a unix socket, such as the
embedded one) and its files are made readable by that user. It forwards every database name (`*`) to
the test server, which is how per-test databases are reached through it.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import socket
import subprocess
import tempfile
import time
from typing import Any

import psycopg

MODES = ("transaction", "session")


def pgbouncer_binary() -> str | None:
    """Debian installs it in /usr/sbin, which a non-root PATH may lack."""
    return shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin:/usr/local/sbin")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Bouncer:
    """One running PgBouncer in `mode` (transaction or session) in front of `server_params`."""

    def __init__(
        self,
        binary: str,
        mode: str,
        server_params: dict[str, str],
        check_every_server_connection: bool = False,
    ) -> None:
        self.mode = mode
        self.check_every_server_connection = check_every_server_connection
        self.server_params = dict(server_params)
        self.user = server_params.get("user") or getpass.getuser()
        self.port = _free_port()
        self.folder = tempfile.mkdtemp(prefix=f"pcq-pgbouncer-{mode}-")
        os.chmod(self.folder, 0o755)
        self.log_path = os.path.join(self.folder, "pgbouncer.log")
        self._write_config()
        command = [binary]
        if os.geteuid() == 0:
            command += ["-u", self._run_as()]
        command.append(os.path.join(self.folder, "pgbouncer.ini"))
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _run_as(self) -> str:
        """Who PgBouncer runs as under root: `nobody`, or the owner of the server's
        socket when the server is reached through one (the embedded server's
        socket is only open to its own user)."""
        host = self.server_params.get("host", "")
        if host.startswith("/"):
            import pwd

            socket_path = os.path.join(host, f".s.PGSQL.{self.server_params.get('port', '5432')}")
            with contextlib.suppress(OSError, KeyError):
                owner = pwd.getpwuid(os.stat(socket_path).st_uid).pw_name
                if owner != "root":
                    return owner
        return "nobody"

    def _write_config(self) -> None:
        server = self.server_params
        target = f"host={server.get('host', '127.0.0.1')} port={server.get('port', '5432')}"
        password = server.get("password", "")
        ini = "\n".join(
            [
                "[databases]",
                f"* = {target}",
                "[pgbouncer]",
                "listen_addr = 127.0.0.1",
                f"listen_port = {self.port}",
                "unix_socket_dir =",
                "auth_type = trust",
                f"auth_file = {os.path.join(self.folder, 'users.txt')}",
                f"pool_mode = {self.mode}",
                "max_client_conn = 500",
                "default_pool_size = 20",
                "ignore_startup_parameters = extra_float_digits",
                # Check every server connection before handing it out (PgBouncer's
                # default: only those idle for 30 s). For the tests: the harness's
                # reset ends every backend of the database after each test, the next
                # test starts within milliseconds, and a server connection the bouncer
                # had not yet seen die was handed to it: its SET failed with "invalid
                # server parameter" (a flake). The bench keeps the default.
                f"server_check_delay = {0 if self.check_every_server_connection else 30}",
                f"admin_users = {self.user}",
                "",
            ]
        )
        for name, text in (("pgbouncer.ini", ini), ("users.txt", f'"{self.user}" "{password}"\n')):
            path = os.path.join(self.folder, name)
            with open(path, "w") as file:
                file.write(text)
            os.chmod(path, 0o644)

    @property
    def params(self) -> dict[str, Any]:
        """libpq keywords that reach the test server through this bouncer (dbname: the server's)."""
        found = {"host": "127.0.0.1", "port": str(self.port), "user": self.user}
        if self.server_params.get("password"):
            found["password"] = self.server_params["password"]
        found["dbname"] = self.server_params.get("dbname", "postgres")
        return found

    def log(self) -> str:
        with open(self.log_path, errors="replace") as file:
            return file.read()

    def _wait_ready(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"pgbouncer exited with {self.process.returncode}:\n{self.log()}"
                )
            try:
                psycopg.connect(connect_timeout=2, **self.params).close()
                return
            except psycopg.OperationalError as exc:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"pgbouncer not answering after {timeout}s ({exc}):\n{self.log()}"
                    ) from exc
            time.sleep(0.05)

    def show(self, what: str) -> list[dict[str, Any]]:
        """`SHOW <what>` on the admin console (pools, servers, clients...), as dicts."""
        params = {**self.params, "dbname": "pgbouncer"}
        with psycopg.connect(**params, autocommit=True, prepare_threshold=None) as conn:
            cursor = conn.cursor()
            cursor.execute(f"SHOW {what}")  # the admin console takes no parameters
            columns = [column.name for column in cursor.description or []]
            return [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        with contextlib.suppress(Exception):
            self._log.close()
        shutil.rmtree(self.folder, ignore_errors=True)


class PooledServer:
    """A TestServer as the tests see it through a bouncer.

    `params` (what connectors under test use) go through the bouncer;
    databases are created, dropped and inspected directly (`conninfo()`,
    `admin()`), so assertions never depend on the pooler under test.
    """

    __test__ = False

    def __init__(self, direct: Any, bouncer: Bouncer) -> None:
        self.direct = direct
        self.bouncer = bouncer
        self.params = {k: v for k, v in bouncer.params.items() if k != "dbname"}
        self.params["dbname"] = direct.params.get("dbname", "postgres")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.direct, name)
