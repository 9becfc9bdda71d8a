"""Running the suite on pytest-xdist workers, with `serial` tests alone at the end.

`serial` tests (tests/faults: killed workers, restarted servers, timing) must
not share the machine with other tests. Under xdist (`-n N`, which pyproject's
addopts sets), a run has two phases in one session:

1. every other test, spread over the workers;
2. once none is left, every worker but one is shut down, and when they have
   exited the last one runs the serial tests, one after another.

Each worker writes the ids of its `serial` tests to the run's folder before it
reports its collection; the scheduler reads them there. A guard backs the
scheduler up whatever `--dist` is chosen: a file lock that every test holds
shared and a serial test holds exclusively, so a serial test waits for the
tests running beside it to end.

Within phase 1 the tests slowest in the last run (durations kept in pytest's
cache) go first, two at a time per worker, so no worker ends on a long test
while the others idle. The summary prints how long each phase took.

The controller also finds the PostgreSQL server before starting the workers,
so that an embedded server is started once and handed to every worker (see
tests/support/database.py).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
import time
from collections.abc import Generator, Iterator
from typing import Any

import pytest

_FOLDER_KEY = "pcq_serial_folder"


def _distributed(config: pytest.Config) -> bool:
    """True in the controller of an xdist run (not on a worker, not with -n 0)."""
    if hasattr(config, "workerinput"):
        return False
    return (
        bool(getattr(config.option, "numprocesses", None))
        and config.getoption("dist", "no") != "no"
    )


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    if not _distributed(config):
        return
    from tests.support.database import find_server

    find_server()  # before the workers start: they inherit the exported server
    _CONTROLLER["config"] = config
    folder = tempfile.mkdtemp(prefix="pcq-serial-")
    config.stash[_folder_key] = folder


_folder_key = pytest.StashKey[str]()


def pytest_unconfigure(config: pytest.Config) -> None:
    folder = config.stash.get(_folder_key, None)
    if folder:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    folder = node.config.stash.get(_folder_key, None)
    if folder:
        node.workerinput[_FOLDER_KEY] = folder


@pytest.hookimpl(tryfirst=True)
def pytest_collection_finish(session: pytest.Session) -> None:
    """On a worker, before it reports its collection: which of its tests are serial."""
    folder = _folder(session.config)
    if folder is None:
        return
    serial = [item.nodeid for item in session.items if item.get_closest_marker("serial")]
    name = os.path.join(folder, f"serial-{session.config.workerinput['workerid']}")  # type: ignore[attr-defined]
    with open(name + ".tmp", "w") as out:
        out.write("".join(f"{nodeid}\n" for nodeid in serial))
    os.replace(name + ".tmp", name)  # whole, or not there yet


def serial_tests(folder: str) -> set[str]:
    """The serial tests the workers reported (their collections are identical)."""
    found: set[str] = set()
    for name in os.listdir(folder):
        if name.startswith("serial-") and not name.endswith(".tmp"):
            with open(os.path.join(folder, name)) as reported:
                found.update(line for line in reported.read().splitlines() if line)
    return found


def _folder(config: pytest.Config) -> str | None:
    """The run's folder (lock, serial test lists): set in the controller, handed to workers."""
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:
        return workerinput.get(_FOLDER_KEY)
    return config.stash.get(_folder_key, None)


@contextlib.contextmanager
def _guard(item: pytest.Item) -> Iterator[None]:
    """Hold the run's lock (shared; exclusive for a serial test), then any named one of the test's.

    `@pytest.mark.exclusive("name")`: tests naming the same scarce resource (50 of
    the server's 100 connections, say) never run at the same time on two workers.
    Locks are always taken in this order, so waiting on them cannot deadlock.
    """
    folder = _folder(item.config) if hasattr(item.config, "workerinput") else None
    if not folder:
        yield
        return
    names = sorted({str(mark.args[0]) for mark in item.iter_markers("exclusive")})
    with contextlib.ExitStack() as held:
        for name, mode in [
            ("lock", fcntl.LOCK_EX if item.get_closest_marker("serial") else fcntl.LOCK_SH)
        ] + [(f"lock-{name}", fcntl.LOCK_EX) for name in names]:
            lock = held.enter_context(open(os.path.join(folder, name), "a"))
            fcntl.flock(lock, mode)
        yield


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_protocol(
    item: pytest.Item, nextitem: pytest.Item | None
) -> Generator[None, Any, Any]:
    with _guard(item):
        return (yield)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    if config.getoption("dist") != "load":
        return None  # another mode the user chose: the lock alone keeps serial tests apart
    scheduler = _serial_last_scheduling()(config, log)
    config.stash[_scheduler_key] = scheduler
    return scheduler


_scheduler_key = pytest.StashKey[Any]()
_DURATIONS = "pcq/durations"
_seen_key = pytest.StashKey[dict[str, float]]()


def _durations(config: pytest.Config) -> dict[str, float]:
    cache = getattr(config, "cache", None)
    return dict(cache.get(_DURATIONS, {})) if cache is not None else {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """In the controller: each test's duration (setup, call, teardown), for the next run's order."""
    config = _CONTROLLER.get("config")
    if config is None:
        return
    seen = config.stash.setdefault(_seen_key, {})
    seen[report.nodeid] = seen.get(report.nodeid, 0.0) + report.duration


#: The controller's config, set in pytest_configure of an xdist run (logreport hooks get none).
_CONTROLLER: dict[str, pytest.Config] = {}


def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    cache = getattr(config, "cache", None)
    seen = config.stash.get(_seen_key, None)
    if cache is None or not seen or hasattr(config, "workerinput"):
        return
    cache.set(_DURATIONS, {**_durations(config), **{k: round(v, 3) for k, v in seen.items()}})


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """How long each phase took (the suite's speed is watched, not asserted)."""
    scheduler = config.stash.get(_scheduler_key, None)
    if scheduler is None or scheduler.serial_started is None:
        return
    parallel = scheduler.serial_started - scheduler.started
    serial = time.monotonic() - scheduler.serial_started
    terminalreporter.write_line(
        f"phases: {parallel:.0f}s for the other tests on {scheduler.numnodes} workers, "
        f"then {serial:.0f}s for {scheduler.serial_count} serial tests alone"
    )


def _serial_last_scheduling() -> type:
    from xdist.scheduler import LoadScheduling

    class SerialLastScheduling(LoadScheduling):  # type: ignore[misc]
        """xdist's load scheduling, holding the serial tests back for a phase of their own."""

        def __init__(self, config: pytest.Config, log: Any = None) -> None:
            super().__init__(config, log)
            # xdist's own attributes (set by it; declared here for mypy: xdist is untyped)
            self.collection: list[str] | None
            self.maxschedchunk: int | None
            self.serial: list[int] = []
            self.serial_node: Any = None
            self.started = time.monotonic()
            self.serial_started: float | None = None
            self.serial_count = 0

        @property
        def tests_finished(self) -> bool:
            return not self.serial and super().tests_finished

        @property
        def has_pending(self) -> bool:
            return bool(self.serial) or super().has_pending

        def schedule(self) -> None:
            assert self.collection_is_completed
            if self.collection is not None:
                for node in self.nodes:
                    self.check_schedule(node)
                return
            if not self._check_nodes_have_same_collection():
                self.log("**Different tests collected, aborting run**")
                return
            self.collection = next(iter(self.node2collection.values()))
            folder = _folder(self.config)
            serial = serial_tests(folder) if folder else set()
            every = range(len(self.collection))
            self.serial = [i for i in every if self.collection[i] in serial]
            # The slowest tests of the last run first, handed out two at a time, so that
            # no worker is left with a long test at the end while the others wait.
            last = _durations(self.config)
            parallel = [i for i in every if self.collection[i] not in serial]
            self.pending[:] = sorted(parallel, key=lambda i: -last.get(self.collection[i], 0.0))
            if self.maxschedchunk is None:
                self.maxschedchunk = 2
            for node in self.nodes:
                self.check_schedule(node)

        def check_schedule(self, node: Any, duration: float = 0) -> None:
            if node.shutting_down:
                return
            if self.pending or not self.serial:
                super().check_schedule(node, duration=duration)
                return
            # Phase 2: one node runs the serial tests once every other node has exited.
            if self.serial_node is None or self.serial_node not in self.node2pending:
                self.serial_node = node
            if node is not self.serial_node:
                node.shutdown()
                return
            if len(self.node2pending) > 1:
                return  # the others are finishing their last tests
            self.pending[:] = self.serial
            self.serial_started, self.serial_count = time.monotonic(), len(self.serial)
            self.serial = []
            super().check_schedule(node, duration=duration)

        def remove_node(self, node: Any) -> str | None:
            crashed = super().remove_node(node)
            for other in self.nodes:
                self.check_schedule(other)
            return crashed

    return SerialLastScheduling
