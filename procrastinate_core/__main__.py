"""`python -m procrastinate_core ...`: the same CLI as the `procrastinate-core` script."""

from __future__ import annotations

import sys

from procrastinate_core.cli import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m procrastinate_core"))
