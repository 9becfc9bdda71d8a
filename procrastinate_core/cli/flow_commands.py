"""Shell commands for flow control (#13): pause and resume queues and tasks, list them.

`procrastinate-core shell pause_queue emails` stops every worker from starting
jobs of `emails` (running ones finish) until `resume_queue emails`; the paused
state is a table, so it survives worker and database restarts. The shell
(shell.py) registers these parsers and mixes these handlers in.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

NewParser = Callable[[str, str], argparse.ArgumentParser]


def add_parsers(new: NewParser) -> None:
    """Register the flow-control commands with the shell's parser factory."""
    for kind in ("queue", "task"):
        for verb, what in (
            ("pause", f"Stop workers from starting jobs of a {kind} (running ones finish)."),
            ("resume", f"Let workers start jobs of a paused {kind} again."),
        ):
            parser = new(f"{verb}_{kind}", what)
            parser.add_argument("name", metavar=kind.upper(), help=f"the {kind} name")
    new("list_paused", "List the paused queues and tasks.")


class FlowShellCommands:
    """Handlers of the commands above; ShellCommands provides `manager` and `say`."""

    manager: Any
    say: Callable[[str], None]

    def _set_paused(self, kind: str, name: str, paused: bool) -> int:
        verb = "pause" if paused else "resume"
        changed = getattr(self.manager, f"{verb}_{kind}")(name)
        state = "paused" if paused else "resumed"
        held = "held" if paused else "released"
        self.say(f"{kind.capitalize()} {name!r} {state}: {changed} waiting job(s) {held}.")
        return 0

    def cmd_pause_queue(self, args: argparse.Namespace) -> int:
        return self._set_paused("queue", args.name, True)

    def cmd_resume_queue(self, args: argparse.Namespace) -> int:
        return self._set_paused("queue", args.name, False)

    def cmd_pause_task(self, args: argparse.Namespace) -> int:
        return self._set_paused("task", args.name, True)

    def cmd_resume_task(self, args: argparse.Namespace) -> int:
        return self._set_paused("task", args.name, False)

    def cmd_list_paused(self, args: argparse.Namespace) -> int:
        rows = self.manager.list_paused()
        for row in rows:
            self.say(f"{row['kind']} {row['name']}: paused since {row['paused_at'].isoformat()}")
        if not rows:
            self.say("Nothing is paused.")
        return 0
