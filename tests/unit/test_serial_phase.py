"""The suite's xdist scheduling: `serial` tests run after every other test, at most
SERIAL_WIDTH at a time, `serial(alone=True)` ones last and alone; tests marked `exclusive`
with the same name never run at the same time.

Each case runs a small pytest session on three xdist workers in a subprocess, with a
serial width of two (so that the width, not the number of workers, is what bounds them);
its tests append `start`/`end` lines to one file (appends are atomic), so the
file's order is the order things happened on both workers.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: The serial width of the sessions run here (one worker fewer than they have).
WIDTH = 2

TESTS = """
import os
import time
import pytest

def record(event, request):
    with open(os.environ["PCQ_ORDER_LOG"], "a") as log:
        log.write(f"{event} {request.node.name} {os.getpid()}\\n")

@pytest.fixture(autouse=True)
def _record(request):
    record("start", request)
    yield
    record("end", request)

@pytest.mark.serial
@pytest.mark.parametrize("i", range(4))
def test_serial(i):
    time.sleep(0.2)

@pytest.mark.serial(alone=True)
@pytest.mark.parametrize("i", range(2))
def test_alone(i):
    time.sleep(0.1)

@pytest.mark.parametrize("i", range(12))
def test_parallel(i):
    pass

@pytest.mark.exclusive("scarce")
@pytest.mark.parametrize("i", range(4))
def test_exclusive(i):
    pass
"""


def run_session(tmp_path: Path, *options: str) -> list[tuple[str, str, str]]:
    (tmp_path / "test_mix.py").write_text(TESTS)
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\nmarkers =\n    serial: last\n    exclusive: one at a time\n"
    )
    log = tmp_path / "order.log"
    env = {
        **os.environ,
        "PCQ_ORDER_LOG": str(log),
        "PYTHONPATH": str(ROOT),
        "PCQ_SERIAL_WIDTH": str(WIDTH),
    }
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "tests.support.serial_phase",
            "-n",
            str(WIDTH + 1),
            "-q",
            *options,
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "22 passed" in done.stdout
    return [tuple(line.split()) for line in log.read_text().splitlines()]  # type: ignore[misc]


def assert_serial_tests_ran_apart(events: list[tuple[str, str, str]]) -> None:
    """Serial tests never beside another test but one serial; alone ones beside none."""
    running: set[str] = set()
    for event, name, _ in events:
        if event == "start":
            running.add(name)
        else:
            running.remove(name)
        serial = {n for n in running if n.startswith(("test_serial", "test_alone"))}
        assert not serial or running == serial and len(serial) <= WIDTH, (
            f"{sorted(running)} ran together"
        )
        alone = {n for n in running if n.startswith("test_alone")}
        assert not alone or len(running) == 1, f"{sorted(running)} ran together"
        exclusive = {n for n in running if n.startswith("test_exclusive")}
        assert len(exclusive) <= 1, f"{sorted(exclusive)} share a scarce resource but ran together"


def test_serial_tests_run_after_the_others_width_at_a_time_and_alone_ones_last(tmp_path):
    events = run_session(tmp_path)

    def where(prefix: str) -> list[int]:
        return [i for i, (_, name, _) in enumerate(events) if name.startswith(prefix)]

    serial, alone, parallel = where("test_serial"), where("test_alone"), where("test_parallel")
    assert len(serial) == 8 and len(alone) == 4 and len(parallel) == 24
    # Defined first in the file, run after; but a worker runs a test once it knows
    # the next one, so each worker's last test may come once the next phase's are
    # handed out (never beside them: assert_serial_tests_ran_apart).
    assert sum(1 for i in parallel if i > min(serial)) <= (WIDTH + 1) * 2  # start and end
    assert sum(1 for i in serial if i > min(alone)) <= 2
    assert_serial_tests_ran_apart(events)
    # WIDTH workers ran serial tests (side by side, the guard allowing WIDTH at a time).
    assert len({pid for _, name, pid in events if name.startswith("test_serial")}) == WIDTH
    assert len({pid for _, name, pid in events if name.startswith("test_alone")}) == 1
    # An exclusive group runs on one worker, back to back, instead of waiting on its lock.
    assert len({pid for _, name, pid in events if name.startswith("test_exclusive")}) == 1


@pytest.mark.parametrize("dist", ["loadfile"])
def test_with_another_dist_mode_the_locks_keep_serial_tests_apart(tmp_path, dist):
    assert_serial_tests_ran_apart(run_session(tmp_path, "--dist", dist))
