"""tests/django/settings.py with DATABASES pointing at a private PgBouncer
(test_django_through_pgbouncer.py).

The bouncer's address and mode come from the environment the test sets:
PCQ_PGBOUNCER_PORT, PCQ_PGBOUNCER_MODE, and PCQ_PGBOUNCER_LISTEN_DSN (the
server itself, for the worker's listener in transaction mode).
"""

from __future__ import annotations

import os

from tests.django.settings import *  # noqa: F403 - the same project, another database address
from tests.django.settings import DATABASES

DATABASES["default"] = {
    **DATABASES["default"],
    "HOST": "127.0.0.1",
    "PORT": os.environ["PCQ_PGBOUNCER_PORT"],
    # Django's own advice behind a transaction pooler (its .iterator() would use server-side
    # cursors).
    "DISABLE_SERVER_SIDE_CURSORS": True,
}
PROCRASTINATE_POOLER = os.environ["PCQ_PGBOUNCER_MODE"]
PROCRASTINATE_LISTEN_DSN = os.environ.get("PCQ_PGBOUNCER_LISTEN_DSN") or None
