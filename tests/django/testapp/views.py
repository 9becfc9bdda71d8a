"""Views deferring jobs the ways users do: sync, async, and a failing atomic request."""

from __future__ import annotations

from django.db import transaction
from django.http import HttpRequest, HttpResponse, JsonResponse

from tests.django.testapp.models import Note
from tests.django.testapp.tasks import record


def defer_view(request: HttpRequest) -> HttpResponse:
    Note.objects.create(text="from view")
    job_id = record.defer(value="view")
    return JsonResponse({"job_id": job_id})


@transaction.non_atomic_requests
async def defer_async_view(request: HttpRequest) -> HttpResponse:
    job_id = await record.defer_async(value="async view")
    return JsonResponse({"job_id": job_id})


def defer_then_fail_view(request: HttpRequest) -> HttpResponse:
    """With ATOMIC_REQUESTS, the 500 rolls back the note and the job together."""
    Note.objects.create(text="doomed")
    record.defer(value="doomed")
    raise RuntimeError("the view fails after deferring")
