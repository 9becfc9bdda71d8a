"""procrastinate_django: the task queue as a Django app (the counterpart of
procrastinate.contrib.django).

    INSTALLED_APPS = [..., "procrastinate_django"]

    from procrastinate_django import app

    @app.task(queue="emails")
    def send(to: str) -> None: ...

See docs/django.md.
"""

from __future__ import annotations

from procrastinate_django.connector import DjangoConnector, connector_params
from procrastinate_django.procrastinate_app import DjangoApp, app

__all__ = ["DjangoApp", "DjangoConnector", "app", "connector_params"]
