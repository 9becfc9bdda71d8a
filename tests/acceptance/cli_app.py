"""An App for CLI tests run as subprocesses: `--app tests.acceptance.cli_app.app`.

Its connection string comes from PROCRASTINATE_TEST_DSN_FOR_APP, which the test
sets to its fresh database; PROCRASTINATE_TEST_IMPORT_PATHS (comma-separated)
sets the app's import_paths, to test import failures.
"""

from __future__ import annotations

import os
import pathlib

import procrastinate_core as pc
from tests.support.waiting import wait_until

DSN_ENV_VAR = "PROCRASTINATE_TEST_DSN_FOR_APP"
IMPORT_PATHS_ENV_VAR = "PROCRASTINATE_TEST_IMPORT_PATHS"

app = pc.App(
    connector=pc.PsycopgConnector(conninfo=os.environ.get(DSN_ENV_VAR, ""), min_size=1, max_size=4),
    import_paths=[p for p in os.environ.get(IMPORT_PATHS_ENV_VAR, "").split(",") if p],
)


@app.task(queue="maths")
def add(a: int, b: int) -> int:
    return a + b


@app.task
async def echo(text: str) -> str:
    return text


@app.task
def hold(marker_dir: str, timeout: float = 60.0) -> str:
    """Announce that it started (a file), then run until the test writes `release`."""
    folder = pathlib.Path(marker_dir)
    (folder / "started").write_text(str(os.getpid()))
    wait_until(lambda: (folder / "release").exists(), timeout=timeout, what=f"{folder}/release")
    return "released"
