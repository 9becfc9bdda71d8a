"""Helpers for users' unit tests: `InMemoryConnector`, a connector without a database.

app = App(connector=InMemoryConnector())
my_task.defer(x=1)
app.run_worker(wait=False)      # runs every ready job, then returns
assert [j["status"] for j in app.connector.jobs.values()] == ["succeeded"]
"""

from __future__ import annotations

from procrastinate_core.connectors.in_memory import InMemoryConnector

__all__ = ["InMemoryConnector"]
