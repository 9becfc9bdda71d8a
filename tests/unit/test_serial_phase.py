"""The suite's xdist scheduling: `serial` tests run alone, after every other test;
tests marked `exclusive` with the same name never run at the same time.

Each case runs a small pytest session on two xdist workers in a subprocess;
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

TESTS = """
import os
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
@pytest.mark.parametrize("i", range(3))
def test_serial(i):
    pass

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
        "[pytest]\nmarkers =\n    serial: alone\n    exclusive: one at a time\n"
    )
    log = tmp_path / "order.log"
    env = {**os.environ, "PCQ_ORDER_LOG": str(log), "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "tests.support.serial_phase",
            "-n",
            "2",
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
    assert "19 passed" in done.stdout
    return [tuple(line.split()) for line in log.read_text().splitlines()]  # type: ignore[misc]


def assert_serial_tests_ran_alone(events: list[tuple[str, str, str]]) -> None:
    running: set[str] = set()
    for event, name, _ in events:
        if event == "start":
            running.add(name)
        else:
            running.remove(name)
        serial = {n for n in running if n.startswith("test_serial")}
        assert not serial or running == serial and len(serial) == 1, (
            f"{sorted(running)} ran together"
        )
        exclusive = {n for n in running if n.startswith("test_exclusive")}
        assert len(exclusive) <= 1, f"{sorted(exclusive)} share a scarce resource but ran together"


def test_serial_tests_run_alone_after_the_others(tmp_path):
    events = run_session(tmp_path)
    serial = [i for i, (_, name, _) in enumerate(events) if name.startswith("test_serial")]
    parallel = [i for i, (_, name, _) in enumerate(events) if name.startswith("test_parallel")]
    assert len(serial) == 6 and len(parallel) == 24
    assert min(serial) > max(parallel)  # defined first in the file, run last
    assert_serial_tests_ran_alone(events)
    assert len({pid for _, name, pid in events if name.startswith("test_serial")}) == 1


@pytest.mark.parametrize("dist", ["loadfile"])
def test_with_another_dist_mode_the_lock_keeps_serial_tests_alone(tmp_path, dist):
    assert_serial_tests_ran_alone(run_session(tmp_path, "--dist", dist))
