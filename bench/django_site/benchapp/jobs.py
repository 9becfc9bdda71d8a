"""The job both queues run: it reads the order the view wrote (one ORM query)."""

from __future__ import annotations

from django.conf import settings

from bench.django_site.benchapp.models import Order

if settings.SYSTEM == "ours":
    from procrastinate_django import app

    @app.task(name="confirm_order")
    def confirm_order(order_id: int) -> None:
        Order.objects.filter(pk=order_id).exists()

else:
    from django.tasks import task

    @task()
    def confirm_order(order_id: int) -> None:  # the module path must name the task
        Order.objects.filter(pk=order_id).exists()
