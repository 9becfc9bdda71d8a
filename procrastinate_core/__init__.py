"""procrastinate_core: a PostgreSQL task queue with the API of `procrastinate`.

Optional connectors (aiopg, psycopg2, SQLAlchemy) are importable from here
but only import their driver when used.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from typing import TYPE_CHECKING, Any

from procrastinate_core.app import App
from procrastinate_core.blueprints import Blueprint
from procrastinate_core.connectors.base import BaseConnector
from procrastinate_core.connectors.psycopg import PsycopgConnector, SyncPsycopgConnector
from procrastinate_core.deferrer import JobDeferrer
from procrastinate_core.job_context import JobContext
from procrastinate_core.jobs import Job, Status
from procrastinate_core.retry import BaseRetryStrategy, RetryDecision, RetryStrategy
from procrastinate_core.tasks import Task

if TYPE_CHECKING:
    from procrastinate_core.connectors.aiopg import AiopgConnector
    from procrastinate_core.connectors.psycopg2 import Psycopg2Connector
    from procrastinate_core.connectors.sqlalchemy import SQLAlchemyPsycopg2Connector

try:
    __version__ = importlib.metadata.version("procrastinate-core")
except importlib.metadata.PackageNotFoundError:  # run from a source tree that is not installed
    __version__ = "0+unknown"

_LAZY = {
    "AiopgConnector": "procrastinate_core.connectors.aiopg",
    "Psycopg2Connector": "procrastinate_core.connectors.psycopg2",
    "SQLAlchemyPsycopg2Connector": "procrastinate_core.connectors.sqlalchemy",
}

__all__ = [
    "AiopgConnector",
    "App",
    "BaseConnector",
    "BaseRetryStrategy",
    "Blueprint",
    "Job",
    "JobContext",
    "JobDeferrer",
    "Psycopg2Connector",
    "PsycopgConnector",
    "RetryDecision",
    "RetryStrategy",
    "SQLAlchemyPsycopg2Connector",
    "Status",
    "SyncPsycopgConnector",
    "Task",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'procrastinate_core' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
