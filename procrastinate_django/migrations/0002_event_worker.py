"""The event's worker (core migration 0005), in the unmanaged model's state only.

The column itself is added by the core's SchemaManager, which the post_migrate
handler runs (see procrastinate_django/schema_migration.py).
"""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("procrastinate_django", "0001_initial")]

    operations = [
        migrations.AddField(
            model_name="procrastinateevent",
            name="worker_id",
            field=models.BigIntegerField(null=True),
        ),
    ]
