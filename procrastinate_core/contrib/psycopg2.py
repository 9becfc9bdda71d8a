"""`procrastinate_core.contrib.psycopg2`: the psycopg2 connector (needs the `psycopg2` extra)."""

from __future__ import annotations

from procrastinate_core.connectors.psycopg2 import Psycopg2Connector

__all__ = ["Psycopg2Connector"]
