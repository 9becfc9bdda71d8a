"""Entry point of a fault worker process: `python -m tests.faults.run_worker '<options json>'`."""

from __future__ import annotations

import faulthandler
import json
import logging
import os
import signal
import sys


def main() -> None:
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format=f"%(asctime)s pid={os.getpid()} %(levelname)s %(name)s: %(message)s",
    )
    # The harness sends SIGUSR1 to see where a stuck worker is.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    options = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
    from tests.faults.fault_app import app

    app.run_worker(**options)


if __name__ == "__main__":
    main()
