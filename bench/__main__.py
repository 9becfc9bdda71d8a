"""`python -m bench run`: every system through every scenario, interleaved, then the table.

Repetitions are interleaved (rep 1 of every scenario and system, then rep 2...)
and the order of systems rotates each time, so a noisy minute on the machine
hurts every system alike rather than one of them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import platform
import signal
import sys
import traceback
from typing import Any

from bench import report, scenarios
from bench.floor import Floor
from bench.peers_broker import BROKER_SYSTEMS
from bench.peers_pg import PG_PEERS
from bench.server import Server, find_server
from bench.systems import SYSTEMS, System

#: Every system by name: ours, the PostgreSQL peers, then the broker peers.
ALL_SYSTEMS: dict[str, type[System]] = {**SYSTEMS, **PG_PEERS, **BROKER_SYSTEMS}
PEER_NAMES = ",".join(name for name in ALL_SYSTEMS if name != "ours")


def _machine(server: Server) -> str:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next(
                (line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), ""
            )
    except OSError:
        pass
    return (
        f"{os.cpu_count()} cores ({model}), Python {platform.python_version()}, "
        f"PostgreSQL {server.version} ({server.description}), "
        f"synchronous_commit={server.sync_commit}"
    )


async def run_all(args: argparse.Namespace) -> list[dict[str, Any]]:
    server = find_server(args.dsn, args.private_server)
    systems: list[System] = []
    for name in args.systems:
        if name not in ALL_SYSTEMS:
            continue
        system = ALL_SYSTEMS[name]()
        reason = system.unavailable() if hasattr(system, "unavailable") else None
        if reason:
            print(f"# skipped {name}: {reason}", flush=True)
            args.skipped[name] = reason
            continue
        systems.append(system)
    if "sql-floor" in args.systems:
        systems.append(Floor())
    sizes = scenarios.Sizes(args.scale)
    chosen = args.scenario
    print(
        f"# {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC — {_machine(server)}"
    )
    print(f"# scale {args.scale}, {args.reps} reps, scenarios {', '.join(chosen)}", flush=True)
    rows: list[dict[str, Any]] = []
    try:
        for rep in range(args.reps):
            for k, scenario in enumerate(chosen):
                shift = (rep + k) % len(systems)
                for system in systems[shift:] + systems[:shift]:
                    if not scenarios.applies(system, scenario):
                        continue
                    row: dict[str, Any] = {"rep": rep, "scenario": scenario, "system": system.name}
                    try:
                        outcome = await scenarios.run(server, system, scenario, sizes)
                    except Exception as exc:  # one failed run must not lose the others
                        row["error"] = f"{type(exc).__name__}: {exc}"
                        if args.verbose:
                            traceback.print_exc()
                    else:
                        row.update(value=outcome.value, jobs=outcome.jobs, extra=outcome.extra)
                    rows.append(row)
                    shown = row.get("error") or f"{outcome.value:,.2f} {report.unit(scenario)}"
                    print(f"  rep {rep + 1} {scenario:16} {system.name:14} {shown}", flush=True)
    finally:
        server.cleanup()
        for system in systems:
            if hasattr(system, "cleanup"):
                with contextlib.suppress(Exception):
                    system.cleanup()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    cmd = sub.add_parser("run", help="run the benchmarks and print the table")
    cmd.add_argument("--reps", type=int, default=3, help="repetitions of each run (default 3)")
    cmd.add_argument("--scale", type=float, default=1.0, help="multiply every size (default 1)")
    cmd.add_argument("--dsn", help="server to use (default 127.0.0.1:5432, else embedded)")
    cmd.add_argument(
        "--private-server",
        action="store_true",
        help="start a private PostgreSQL with pg_stat_statements (counts statements per job)",
    )
    cmd.add_argument(
        "--scenario",
        action="append",
        choices=[*scenarios.SCENARIOS, *scenarios.EXTRA_SCENARIOS, "all"],
        help="repeatable; default: every scenario but memory; 'all' adds memory",
    )
    cmd.add_argument(
        "--systems",
        default="ours,procrastinate,pgqueuer,sql-floor",
        help=f"comma-separated subset of ours,{PEER_NAMES},sql-floor; 'peers' means all",
    )
    cmd.add_argument("--json", help="also write every run's numbers to this file")
    cmd.add_argument("-v", "--verbose", action="store_true", help="print tracebacks of failed runs")
    args = parser.parse_args(argv)
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    if "peers" in args.systems:
        at = args.systems.index("peers")
        args.systems[at : at + 1] = [n for n in ALL_SYSTEMS if n != "ours"]
    unknown = set(args.systems) - {*ALL_SYSTEMS, "sql-floor"}
    if unknown:
        parser.error(f"unknown systems {sorted(unknown)}; known: ours, {PEER_NAMES}, sql-floor")
    args.skipped = {}
    if not args.scenario:
        args.scenario = list(scenarios.SCENARIOS)
    elif "all" in args.scenario:
        args.scenario = [*scenarios.SCENARIOS, *scenarios.EXTRA_SCENARIOS]
    if args.reps < 1 or args.scale <= 0:
        parser.error("--reps must be at least 1 and --scale positive")

    # SIGTERM ends the run like Ctrl-C: scratch databases and a private server are removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    rows = asyncio.run(run_all(args))
    shown = [name for name in args.systems if name not in args.skipped]
    print()
    print(report.render(rows, args.scenario, shown))
    for name, reason in args.skipped.items():
        print(f"- {name} not run: {reason}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": rows}, f, indent=1)
    return 1 if any(row.get("error") for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
