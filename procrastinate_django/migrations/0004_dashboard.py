"""The Dashboard entry of the admin index: a proxy model of the jobs (no table)."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("procrastinate_django", "0003_periodic_defer_and_writable_defaults"),
    ]

    operations = [
        migrations.CreateModel(
            name="ProcrastinateDashboard",
            fields=[],
            options={
                "verbose_name": "dashboard",
                "verbose_name_plural": "dashboard",
                "proxy": True,
                "indexes": [],
                "constraints": [],
            },
            bases=("procrastinate_django.procrastinatejob",),
        ),
    ]
