"""`procrastinate_core.contrib.sqlalchemy`:
the SQLAlchemy connector (needs the `sqlalchemy` extra)."""

from __future__ import annotations

from procrastinate_core.connectors.sqlalchemy import SQLAlchemyPsycopg2Connector

__all__ = ["SQLAlchemyPsycopg2Connector"]
