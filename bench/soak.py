"""F25 soak (../shared/RELIABILITY.md): minutes of mixed load with faults, then leak and duplicate
figures.

Not a test (it runs for minutes): `python -m bench.soak --minutes 5`. It reuses the
fault harness (tests/faults): real worker processes, the ledger, the invariants.

Load: `--rate` jobs/s for `--minutes` (async and sync sleeps; 1 % failing with
retries; 0.5 % aborted while running; one periodic task every second);
workers run with delete_jobs="successful". Faults: every listener backend is
terminated every 60 s; one worker is SIGKILLed and restarted at minute 3.
Samples every 10 s: RSS, threads and open fds of each worker process, and
connections per application_name. Prints a JSON report.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.faults.conftest import Harness, WorkerProcess
from tests.support.database import find_server
from tests.support.waiting import wait_until

SAMPLE_EVERY = 10.0


def proc_stats(pid: int) -> dict[str, float]:
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {
        "rss_mb": int(fields["VmRSS"].split()[0]) / 1024,
        "threads": int(fields["Threads"]),
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
    }


def slope_per_minute(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value), per minute."""
    if len(points) < 3:
        return 0.0
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return 60 * sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--rate", type=float, default=70.0, help="jobs deferred per second")
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--connector", choices=["psycopg", "aiopg"], default="psycopg")
    args = parser.parse_args()

    server = find_server()
    dbname = server.create_database()
    tmp = Path(tempfile.mkdtemp(prefix="pcq-soak-"))
    harness = Harness(server.conninfo(dbname), args.connector, tmp)
    options = {
        "concurrency": args.concurrency,
        "delete_jobs": "successful",
        "shutdown_graceful_timeout": 10,
    }
    env = {"PCQ_FAULT_PERIODIC": "1"}
    workers: dict[str, WorkerProcess] = {
        f"W{n}": harness.start_worker(f"W{n}", env=env, **options) for n in range(args.workers)
    }
    samples: dict[int, list[tuple[float, dict[str, float]]]] = {}
    connections: list[dict[str, int]] = []
    killed_in_flight: list[int] = []
    deferred = aborted = failing = 0
    duration = args.minutes * 60
    start = time.monotonic()
    next_sample = next_listener_kill = start
    next_listener_kill += 60
    kill_at = start + min(180, duration * 0.6)
    killed = False
    rng = random.Random(25)
    to_abort: list[tuple[float, int]] = []
    try:
        while (now := time.monotonic()) - start < duration:
            # Defer this tick's share of jobs: a mix of async, sync, failing and abortable ones.
            batch = max(1, int(args.rate / 10))
            for _ in range(batch):
                roll = rng.random()
                if roll < 0.01:
                    harness.defer("fail_after", kwargs={"seconds": 0})
                    failing += 1
                elif roll < 0.015:
                    [job] = harness.defer("cooperative", kwargs={"seconds": 30})
                    to_abort.append((now + 1.0, job))
                    aborted += 1
                elif roll < 0.5:
                    harness.defer("sleep_async", kwargs={"seconds": rng.uniform(0, 0.1)})
                else:
                    harness.defer("sleep_sync", kwargs={"seconds": rng.uniform(0, 0.1)})
                deferred += 1
            for due, job in [item for item in to_abort if item[0] <= now]:
                harness.conn.execute(
                    "UPDATE pcq_jobs SET abort_requested = true WHERE id = %s AND status = 'doing'",
                    (job,),
                )
                harness.conn.execute(
                    "UPDATE pcq_jobs SET status = 'cancelled' WHERE id = %s AND status = 'todo'",
                    (job,),
                )
                to_abort.remove((due, job))
            if now >= next_listener_kill:
                harness.conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = %s AND application_name LIKE 'fault-W%%-listener'",
                    (harness.dbname,),
                )
                next_listener_kill += 60
            if not killed and now >= kill_at:
                victim = workers["W0"]
                killed_in_flight = [
                    row[0]
                    for row in harness.all(
                        "SELECT j.id FROM pcq_jobs j JOIN pcq_workers w ON w.id = j.worker_id "
                        "WHERE j.status = 'doing' AND w.pid = %s",
                        (victim.pid,),
                    )
                ]
                victim.signal(signal.SIGKILL)
                victim.wait(10)
                victim.expected_exit = -signal.SIGKILL
                workers["W0"] = harness.start_worker("W0-restarted", env=env, **options)
                killed = True
            if now >= next_sample:
                for worker in workers.values():
                    if worker.proc.poll() is None:
                        samples.setdefault(worker.pid, []).append(
                            (now - start, proc_stats(worker.pid))
                        )
                connections.append(
                    dict(
                        harness.all(
                            "SELECT application_name, count(*) FROM pg_stat_activity WHERE "
                            "datname = %s "
                            "GROUP BY 1",
                            (harness.dbname,),
                        )
                    )
                )
                next_sample += SAMPLE_EVERY
            time.sleep(max(0.0, 0.1 - (time.monotonic() - now)))
        # Drain, then stop.
        wait_until(
            lambda: (
                harness.one(
                    "SELECT count(*) FROM pcq_jobs WHERE status IN ('todo', 'doing') "
                    "AND task_name <> 'every_second'"
                )
                == 0
            ),
            timeout=120,
            interval=0.5,
            what="queue drained",
        )
        harness.stop_all(timeout=30)
        report = build_report(
            harness, samples, connections, killed_in_flight, deferred, aborted, failing, args
        )
        harness.check(
            zombies=killed_in_flight,
            expected_tracebacks=(
                r"OSError: fails after a while",
                r"JobAborted|stopped on request",
                r"terminat|connection",
            ),
        )
        report["invariants"] = "I1-I6 hold"
    finally:
        harness.close()
        server.drop_database(dbname)
    print(json.dumps(report, indent=2, default=str))


def build_report(
    harness: Harness,
    samples: dict[int, list[tuple[float, dict[str, float]]]],
    connections: list[dict[str, int]],
    killed_in_flight: list[int],
    deferred: int,
    aborted: int,
    failing: int,
    args: argparse.Namespace,
) -> dict[str, Any]:
    per_worker = {}
    for pid, series in samples.items():
        warm = [(t, s) for t, s in series if t >= series[0][0] + 60]
        if len(warm) < 3:
            continue
        rss = [(t, s["rss_mb"]) for t, s in warm]
        per_worker[pid] = {
            "samples": len(warm),
            "rss_first_mb": round(warm[0][1]["rss_mb"], 1),
            "rss_last_mb": round(warm[-1][1]["rss_mb"], 1),
            "rss_slope_mb_per_min": round(slope_per_minute(rss), 3),
            "rss_final_over_minute1": round(warm[-1][1]["rss_mb"] / warm[0][1]["rss_mb"], 3),
            "threads_min_max": [
                min(s["threads"] for _, s in warm),
                max(s["threads"] for _, s in warm),
            ],
            "fds_min_max": [min(s["fds"] for _, s in warm), max(s["fds"] for _, s in warm)],
        }
    duplicates = harness.all(
        # a job body that completed successfully in more than one attempt
        "SELECT job_id FROM fault_ledger WHERE outcome = 'success' GROUP BY job_id HAVING "
        "count(DISTINCT attempt) > 1"
    )
    dup_ids = [row[0] for row in duplicates]
    return {
        "minutes": args.minutes,
        "rate_per_s": args.rate,
        "workers": args.workers,
        "concurrency": args.concurrency,
        "connector": args.connector,
        "jobs_deferred": deferred,
        "jobs_aborted_on_purpose": aborted,
        "jobs_failing_on_purpose": failing,
        "ledger_starts": harness.one("SELECT count(*) FROM fault_ledger"),
        "jobs_started_in_two_attempts": harness.one(
            "SELECT count(*) FROM (SELECT job_id FROM fault_ledger GROUP BY job_id "
            "HAVING count(DISTINCT attempt) > 1) s"
        ),
        "jobs_succeeded_twice": len(dup_ids),
        "of_which_in_flight_on_killed_worker": len(set(dup_ids) & set(killed_in_flight)),
        "recorded_successes_twice": harness.one(
            "SELECT count(*) FROM (SELECT job_id FROM pcq_events WHERE type = 'succeeded' "
            "GROUP BY job_id HAVING count(*) > 1) s"
        ),
        "max_connections_per_application_name": {
            name: max(sample.get(name, 0) for sample in connections)
            for name in sorted({name for sample in connections for name in sample})
        },
        "events_rows": harness.one("SELECT count(*) FROM pcq_events"),
        "periodic_defers_rows": harness.one("SELECT count(*) FROM pcq_periodic_defers"),
        "job_rows_left": harness.one("SELECT count(*) FROM pcq_jobs"),
        "per_worker": per_worker,
    }


if __name__ == "__main__":
    main()
