"""An app for processes run under libfaketime (tests/acceptance/test_clock_skew.py).

`python -m tests.acceptance.clock_app worker JSON_OPTIONS` runs a worker;
`python -m tests.acceptance.clock_app defer SECONDS` defers one `noop` job with
`schedule_in={"seconds": SECONDS}` and prints its id. Their clock is shifted by
libfaketime; the database's is not.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time

import procrastinate_core as pc

DSN = os.environ.get("PCQ_TEST_DSN", "")
app = pc.App(
    connector=pc.PsycopgConnector(conninfo=DSN, min_size=1, max_size=4),
    periodic_defaults={"max_delay": float(os.environ.get("PCQ_MAX_DELAY", "600"))},
)

#: The retry wait the tests look for.
RETRY_WAIT = 5


@app.task(name="noop")
def noop() -> None:
    return None


@app.task(name="fails", retry=pc.RetryStrategy(max_attempts=2, wait=RETRY_WAIT))
def fails() -> None:
    raise RuntimeError("fails on purpose, to be retried")


@app.task(name="sleep")
def sleep(seconds: float) -> None:
    time.sleep(seconds)


@app.periodic(cron="* * * * * */2", periodic_id="every-2s")  # 6th field: seconds
@app.task(name="tick")
def tick(timestamp: int) -> int:
    return timestamp


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(process)d %(name)s %(message)s")
    command = sys.argv[1]
    if command == "worker":
        options = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
        app.run_worker(**options)
    elif command == "defer":
        with app.open():
            print(app.tasks["noop"].configure(schedule_in={"seconds": float(sys.argv[2])}).defer())
    else:
        raise SystemExit(f"unknown command {command!r}; expected worker or defer")


if __name__ == "__main__":
    main()
