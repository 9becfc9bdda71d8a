"""`procrastinate_core.contrib.aiopg`: the aiopg connector (needs the `aiopg` extra)."""

from __future__ import annotations

from procrastinate_core.connectors.aiopg import AiopgConnector

__all__ = ["AiopgConnector"]
