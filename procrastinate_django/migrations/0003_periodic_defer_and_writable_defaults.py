"""The unmanaged ProcrastinatePeriodicDefer model over pcq_periodic_defers (state only).

The table belongs to the core's migrations; the defaults added to the other
models (for ORM writes in tests) are not tracked by Django for unmanaged models.
"""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("procrastinate_django", "0002_event_worker"),
    ]

    operations = [
        migrations.CreateModel(
            name="ProcrastinatePeriodicDefer",
            fields=[
                (
                    "pk",
                    models.CompositePrimaryKey(
                        "task_name",
                        "periodic_id",
                        "defer_timestamp",
                        blank=True,
                        editable=False,
                        primary_key=True,
                        serialize=False,
                    ),
                ),
                ("task_name", models.TextField()),
                ("periodic_id", models.TextField(default="")),
                ("defer_timestamp", models.BigIntegerField()),
            ],
            options={
                "verbose_name": "periodic defer",
                "db_table": "pcq_periodic_defers",
                "managed": False,
            },
        ),
    ]
