"""Running the suite on pytest-xdist workers, with `serial` tests in phases at the end.

`serial` tests (tests/faults: worker processes killed, frozen, servers
restarted, timings) must not share the machine with the rest of the suite.
Under xdist (`-n N`, which pyproject's addopts sets), a run has three phases
in one session:

1. every other test, spread over the workers;
2. once none is left, every worker but SERIAL_WIDTH (4) is shut down, and
   when they have exited the serial tests run on those, at most four at a
   time: a fault scenario mostly waits (on its jobs' sleeps, on a recovery
   window), so four of them share two cores without being slowed down;
3. then `@pytest.mark.serial(alone=True)` tests (the ones that load the
   machine, or must have it to themselves) run on one worker, one at a time.

Each worker writes the ids of its serial tests to the run's folder before it
reports its collection; the scheduler reads them there. A guard backs the
scheduler up whatever `--dist` is chosen: file locks, SERIAL_WIDTH "slots",
that every other test holds shared, a serial test holds one of exclusively and
an `alone` test holds all of exclusively, so a serial test waits for the tests
running beside it to end.

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
import json
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
    lines = [f"{kind} {item.nodeid}\n" for item in session.items if (kind := _kind(item))]
    lines += [
        f"exclusive:{mark.args[0]} {item.nodeid}\n"
        for item in session.items
        for mark in item.iter_markers("exclusive")
    ]
    name = os.path.join(folder, f"serial-{session.config.workerinput['workerid']}")  # type: ignore[attr-defined]
    with open(name + ".tmp", "w") as out:
        out.write("".join(lines))
    os.replace(name + ".tmp", name)  # whole, or not there yet


#: How many serial tests may run at the same time (phase 2). A fault scenario
#: mostly waits (its jobs' sleeps, a recovery window): four of them kept the two
#: cores about half busy (2026-12-07: 75-81 s for the 66 of phase 2, against
#: 98 s for 53 at two wide plus 75-84 s for the private-server ones alone).
#: PCQ_SERIAL_WIDTH overrides it (tests/unit/test_serial_phase.py runs narrower than its workers).
SERIAL_WIDTH = int(os.environ.get("PCQ_SERIAL_WIDTH", "4"))


def _kind(item: pytest.Item) -> str | None:
    """The test's phase: "alone", "serial", or None for the first one."""
    marks = list(item.iter_markers("serial"))
    if not marks:
        return None
    return "alone" if any(mark.kwargs.get("alone") for mark in marks) else "serial"


def serial_tests(folder: str) -> dict[str, str]:
    """The serial tests the workers reported (their collections are identical), and their kind."""
    return {
        nodeid: tag
        for tag, nodeids in _reported(folder).items()
        if tag in ("serial", "alone")
        for nodeid in nodeids
    }


def _reported(folder: str) -> dict[str, set[str]]:
    """What the workers reported: tag ("serial", "alone", "exclusive:<name>") -> test ids."""
    found: dict[str, set[str]] = {}
    for name in os.listdir(folder):
        if name.startswith("serial-") and not name.endswith(".tmp"):
            with open(os.path.join(folder, name)) as reported:
                for line in reported.read().splitlines():
                    if line:
                        tag, nodeid = line.split(" ", 1)
                        found.setdefault(tag, set()).add(nodeid)
    return found


def _folder(config: pytest.Config) -> str | None:
    """The run's folder (lock, serial test lists): set in the controller, handed to workers."""
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:
        return workerinput.get(_FOLDER_KEY)
    return config.stash.get(_folder_key, None)


@contextlib.contextmanager
def _guard(item: pytest.Item) -> Iterator[None]:
    """Hold the run's slots (shared; one or all exclusive for a serial test), then any named lock.

    `@pytest.mark.exclusive("name")`: tests naming the same scarce resource (50 of
    the server's 100 connections, say) never run at the same time on two workers.
    A test waiting for several locks takes them in one order (slots, then names
    sorted) and a serial test waiting for a slot holds none, so waiting cannot
    deadlock.
    """
    folder = _folder(item.config) if hasattr(item.config, "workerinput") else None
    if not folder:
        yield
        return
    names = sorted({str(mark.args[0]) for mark in item.iter_markers("exclusive")})
    kind = _kind(item)
    slots = [os.path.join(folder, f"slot-{n}") for n in range(SERIAL_WIDTH)]
    with contextlib.ExitStack() as held:
        if kind == "serial":
            held.enter_context(_any_slot(slots))
        else:
            mode = fcntl.LOCK_EX if kind == "alone" else fcntl.LOCK_SH
            for path in slots:
                fcntl.flock(held.enter_context(open(path, "a")), mode)
        for name in names:
            fcntl.flock(
                held.enter_context(open(os.path.join(folder, f"lock-{name}"), "a")), fcntl.LOCK_EX
            )
        yield


@contextlib.contextmanager
def _any_slot(slots: list[str]) -> Iterator[None]:
    """One of the slots, exclusively: the first free one, polling while none is."""
    while True:
        for path in slots:
            with open(path, "a") as slot:
                try:
                    fcntl.flock(slot, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue
                yield
                return
        time.sleep(0.05)


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
#: When each test's last report came (monotonic), for the phases' timings.
_finished_key = pytest.StashKey[dict[str, float]]()


#: The slowest tests of a reference run (seconds, on a busy machine): the order of a run
#: without pytest's cache (CI, a fresh clone). Refresh it now and then from `--durations`.
_SLOW_TESTS = os.path.join(os.path.dirname(__file__), "slow_tests.json")


def _durations(config: pytest.Config) -> dict[str, float]:
    with open(_SLOW_TESTS) as seed:
        known: dict[str, float] = json.load(seed)
    cache = getattr(config, "cache", None)
    return {**known, **(cache.get(_DURATIONS, {}) if cache is not None else {})}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """In the controller: each test's duration (setup, call, teardown), for the next run's order."""
    config = _CONTROLLER.get("config")
    if config is None:
        return
    seen = config.stash.setdefault(_seen_key, {})
    seen[report.nodeid] = seen.get(report.nodeid, 0.0) + report.duration
    config.stash.setdefault(_finished_key, {})[report.nodeid] = time.monotonic()


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
    """How long each phase took (the suite's speed is watched, not asserted).

    A phase ends when its last test reports: the next one's first tests may
    already be handed out (waiting on the guard) by then.
    """
    scheduler = config.stash.get(_scheduler_key, None)
    if scheduler is None or len(scheduler.ran) < 2:
        return
    finished = config.stash.get(_finished_key, {})
    parts, since = [], scheduler.started
    for what, width, tests in scheduler.ran:
        end = max((finished.get(scheduler.collection[i], since) for i in tests), default=since)
        parts.append(f"{end - since:.0f}s for {what} on {width} worker{'s' if width > 1 else ''}")
        since = max(since, end)
    terminalreporter.write_line("phases: " + ", then ".join(parts))


class _Phase:
    """Tests to run once the previous phase is over, on at most `width` workers."""

    def __init__(self, what: str, tests: list[int], width: int) -> None:
        self.what, self.tests, self.width = what, tests, width


def _serial_last_scheduling() -> type:
    from xdist.scheduler import LoadScheduling

    class SerialLastScheduling(LoadScheduling):  # type: ignore[misc]
        """xdist's load scheduling, holding the serial tests back for phases of their own."""

        def __init__(self, config: pytest.Config, log: Any = None) -> None:
            super().__init__(config, log)
            # xdist's own attributes (set by it; declared here for mypy: xdist is untyped)
            self.collection: list[str] | None
            self.maxschedchunk: int | None
            self.later: list[_Phase] = []
            self.keep: list[Any] = []  # the nodes kept for the next phase
            self.started = time.monotonic()
            #: (what, workers, tests) of each phase begun, for the summary.
            self.ran: list[tuple[str, int, list[int]]] = []

        @property
        def tests_finished(self) -> bool:
            return not self.later and super().tests_finished

        @property
        def has_pending(self) -> bool:
            return bool(self.later) or super().has_pending

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
            kinds = serial_tests(folder) if folder else {}
            every = range(len(self.collection))
            by_kind = {
                kind: [i for i in every if kinds.get(self.collection[i]) == kind]
                for kind in ("serial", "alone")
            }
            self.later = [
                phase
                for phase in (
                    _Phase(
                        f"{len(by_kind['serial'])} serial tests", by_kind["serial"], SERIAL_WIDTH
                    ),
                    _Phase(f"{len(by_kind['alone'])} serial tests alone", by_kind["alone"], 1),
                )
                if phase.tests
            ]
            # The slowest tests of the last run first, handed out two at a time, so that
            # no worker is left with a long test at the end while the others wait.
            last = _durations(self.config)
            parallel = [i for i in every if self.collection[i] not in kinds]
            self.pending[:] = sorted(parallel, key=lambda i: -last.get(self.collection[i], 0.0))
            self.ran.append(("the other tests", len(self.nodes), parallel))
            for phase in self.later:
                phase.tests.sort(key=lambda i: -last.get(self.collection[i], 0.0))
            if self.maxschedchunk is None:
                self.maxschedchunk = 2
            busy = self._pin_exclusive_groups(_reported(folder) if folder else {}, last)
            for node in self.nodes:
                if node not in busy:
                    self.check_schedule(node)

        def _pin_exclusive_groups(
            self, reported: dict[str, set[str]], last: dict[str, float]
        ) -> set[Any]:
            """Each `exclusive` group's tests, one after another on a node of their own, first.

            Spread over the nodes, they would wait on each other's lock, each
            idling a node (the bench smoke tests: minutes of them); back to back
            on one node, they never wait, and the other nodes share the rest.
            """
            groups = []
            for tag, nodeids in reported.items():
                if tag.startswith("exclusive:"):
                    tests = [i for i in self.pending if self.collection[i] in nodeids]
                    if len(tests) > 1:
                        groups.append(tests)
            groups.sort(key=lambda tests: -sum(last.get(self.collection[i], 0.0) for i in tests))
            busy: set[Any] = set()
            for node, tests in zip(self.nodes, groups, strict=False):
                tests = [i for i in tests if i in self.pending]  # not pinned with another group
                self.pending[:] = [i for i in self.pending if i not in tests]
                self.node2pending[node].extend(tests)
                node.send_runtest_some(tests)
                busy.add(node)
            return busy

        def check_schedule(self, node: Any, duration: float = 0) -> None:
            if node.shutting_down:
                return
            if self.pending or not self.later:
                super().check_schedule(node, duration=duration)
            self._after_sending()

        def _after_sending(self) -> None:
            """Once a phase's tests are all handed out: end the run, or begin the next phase.

            A worker runs a test once it knows the next one (or that there is none):
            a node left with one test waits for more or for its shutdown, so shut
            down every node not kept now, whether or not it asks for more work.
            """
            if self.pending:
                return
            if not self.later:
                for each in self.nodes:
                    if not each.shutting_down:
                        each.shutdown()
                return
            phase = self.later[0]
            self.keep = [kept for kept in self.keep if kept in self.node2pending]
            if not self.keep:  # the least busy nodes, which will be free first
                live = [each for each in self.nodes if not each.shutting_down]
                live.sort(key=lambda each: len(self.node2pending[each]))
                self.keep = live[: phase.width]
                for each in live[phase.width :]:
                    each.shutdown()
            if len(self.node2pending) > len(self.keep) or any(
                len(self.node2pending[kept]) > 1 for kept in self.keep
            ):
                return  # the others are finishing their last tests
            # A kept node may still hold its last test of the phase before, waiting
            # to know what follows: the guard's locks keep it from running beside
            # the next phase's tests.
            self.later.pop(0)
            self.pending[:] = phase.tests
            self.ran.append((phase.what, len(self.keep), phase.tests))
            kept, self.keep = self.keep, []
            for each in kept:
                super().check_schedule(each)
            self._after_sending()

        def remove_node(self, node: Any) -> str | None:
            crashed = super().remove_node(node)
            for other in self.nodes:
                self.check_schedule(other)
            return crashed

    return SerialLastScheduling
