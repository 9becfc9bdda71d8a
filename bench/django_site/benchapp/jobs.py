"""The job both queues run: it reads the order the view wrote (one ORM query)."""

from __future__ import annotations

from django.conf import settings

from bench.django_site.benchapp.models import Order


def _confirm(order_id: int) -> None:
    Order.objects.filter(pk=order_id).exists()


if settings.SYSTEM == "ours":
    from procrastinate_django import app

    confirm_order = app.task(name="confirm_order")(_confirm)
else:
    from django.tasks import task

    confirm_order = task()(_confirm)
