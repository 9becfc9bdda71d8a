"""The view: write an order and defer its job in one transaction, as a shop would."""

from __future__ import annotations

from django.conf import settings
from django.db import transaction
from django.http import HttpRequest, HttpResponse

from bench.django_site.benchapp.jobs import confirm_order
from bench.django_site.benchapp.models import Order


def place_order(request: HttpRequest, number: int) -> HttpResponse:
    with transaction.atomic():
        order = Order.objects.create(number=number)
        if settings.SYSTEM in ("ours", "procrastinate"):
            confirm_order.defer(order_id=order.pk)  # through Django's connection
        elif settings.SYSTEM == "celery":
            # Celery's Django pattern: published once the transaction commits
            # (Celery 5.4+: Task.delay_on_commit, transaction.on_commit underneath).
            confirm_order.delay_on_commit(order_id=order.pk)
        else:
            confirm_order.enqueue(order_id=order.pk)  # an ORM insert, same transaction
    return HttpResponse(str(order.pk))
