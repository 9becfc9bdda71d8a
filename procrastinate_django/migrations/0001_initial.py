"""The queue schema (applied by the core's SchemaManager) and the read-only models over it.

Backwards is a no-op on purpose: see procrastinate_django/schema_migration.py.
"""

from django.db import migrations, models

from procrastinate_django import schema_migration


class Migration(migrations.Migration):
    initial = True

    dependencies: list[tuple[str, str]] = []

    operations = [
        migrations.RunPython(schema_migration.forwards, schema_migration.backwards),
        migrations.CreateModel(
            name="ProcrastinateEvent",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                ("type", models.TextField()),
                ("attempt", models.IntegerField()),
                ("at", models.DateTimeField()),
            ],
            options={
                "verbose_name": "event",
                "db_table": "pcq_events",
                "ordering": ["id"],
                "managed": False,
            },
        ),
        migrations.CreateModel(
            name="ProcrastinateJob",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                ("queue_name", models.TextField(verbose_name="queue")),
                ("task_name", models.TextField(verbose_name="task")),
                ("priority", models.IntegerField()),
                ("lock", models.TextField(null=True)),
                ("queueing_lock", models.TextField(null=True)),
                ("args", models.JSONField()),
                (
                    "status",
                    models.TextField(
                        choices=[
                            ("todo", "todo"),
                            ("doing", "doing"),
                            ("succeeded", "succeeded"),
                            ("failed", "failed"),
                            ("cancelled", "cancelled"),
                            ("aborted", "aborted"),
                        ]
                    ),
                ),
                ("scheduled_at", models.DateTimeField(null=True)),
                ("attempts", models.IntegerField()),
                ("worker_id", models.BigIntegerField(null=True)),
                ("abort_requested", models.BooleanField()),
                ("created_at", models.DateTimeField()),
                ("started_at", models.DateTimeField(null=True)),
                ("finished_at", models.DateTimeField(null=True)),
                ("result", models.JSONField(null=True)),
                ("error", models.JSONField(null=True)),
            ],
            options={
                "verbose_name": "job",
                "db_table": "pcq_jobs",
                "ordering": ["-id"],
                "permissions": [
                    ("retry_job", "Can retry failed jobs"),
                    ("cancel_job", "Can cancel waiting jobs"),
                    ("abort_job", "Can abort running jobs"),
                ],
                "managed": False,
            },
        ),
        migrations.CreateModel(
            name="ProcrastinateWorker",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                ("name", models.TextField(null=True)),
                ("host", models.TextField(null=True)),
                ("pid", models.IntegerField(null=True)),
                ("started_at", models.DateTimeField()),
                ("last_heartbeat", models.DateTimeField()),
            ],
            options={
                "verbose_name": "worker",
                "db_table": "pcq_workers",
                "managed": False,
            },
        ),
    ]
