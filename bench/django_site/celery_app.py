"""The site's Celery app (BENCH_DJANGO_SYSTEM=celery), configured from Django's settings.

`celery -A bench.django_site.celery_app worker` runs it, as Celery's "First steps
with Django" guide lays out (settings under the CELERY_ namespace).
"""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.django_site.settings")

app = Celery("bench_django_site")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.imports = ["bench.django_site.benchapp.jobs"]
