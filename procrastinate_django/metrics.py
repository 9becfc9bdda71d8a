"""A Prometheus scrape endpoint for the queue gauges, served by the Django site.

Add it to your URLs (`path("metrics/", metrics_view)`); a scraper sends
`Authorization: Bearer <PROCRASTINATE_METRICS_TOKEN>`, or a logged-in staff
user who may view jobs reads it in a browser. Anyone else gets 403. Workers
serve their own job metrics (`manage.py procrastinate worker --metrics-port`):
only the process that ran a job knows how long it took.
"""

from __future__ import annotations

import hmac

from django.http import HttpRequest, HttpResponse, HttpResponseForbidden

from procrastinate_django.settings import settings


def _allowed(request: HttpRequest) -> bool:
    token = settings.METRICS_TOKEN
    if token:
        sent = request.headers.get("Authorization", "")
        if hmac.compare_digest(sent.encode(), f"Bearer {token}".encode()):
            return True
    user = getattr(request, "user", None)
    return bool(
        user is not None
        and user.is_authenticated
        and user.is_staff
        and user.has_perm("procrastinate_django.view_procrastinatejob")
    )


def metrics_view(request: HttpRequest) -> HttpResponse:
    """The queue gauges (jobs per queue and status, latency, workers) in Prometheus' text format."""
    if not _allowed(request):
        return HttpResponseForbidden(
            "Send Authorization: Bearer <PROCRASTINATE_METRICS_TOKEN>, or log in as staff "
            "with the view_procrastinatejob permission."
        )
    from procrastinate_core.metrics import QueueCollector, read_snapshot, render, require_prometheus
    from procrastinate_django.procrastinate_app import app

    prometheus = require_prometheus()
    snapshot = read_snapshot(app.job_manager)
    registry = prometheus.CollectorRegistry()
    registry.register(QueueCollector(lambda: snapshot))
    body, content_type = render(registry)
    return HttpResponse(body, content_type=content_type)
