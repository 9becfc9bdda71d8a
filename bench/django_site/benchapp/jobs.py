"""The job every queue runs: it confirms the order the view wrote (one ORM UPDATE)."""

from __future__ import annotations

from typing import Any

from django.conf import settings

from bench.django_site.benchapp.models import Order


def _confirm(order_id: int) -> None:
    Order.objects.filter(pk=order_id).update(confirmed=True)


confirm_order: Any
if settings.SYSTEM == "ours":
    from procrastinate_django import app

    confirm_order = app.task(name="confirm_order")(_confirm)
elif settings.SYSTEM == "procrastinate":
    from procrastinate.contrib.django import app as procrastinate_app

    confirm_order = procrastinate_app.task(name="confirm_order")(_confirm)
elif settings.SYSTEM == "celery":
    from bench.django_site.celery_app import app as celery_app

    confirm_order = celery_app.task(name="confirm_order")(_confirm)
else:
    from django.tasks import task

    @task()
    def confirm_order(order_id: int) -> None:  # the module path must name the task
        _confirm(order_id)
