"""When a journal row may be retried: the back-off of ``process_failed_media --watch``.

Nullable, so the column is added without rewriting the table and rows journaled before
the upgrade (or by processes still running the older code during a rolling upgrade) are
due at once, as they were.
"""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("django_resto", "0002_sequence")]

    operations = [
        migrations.AddField(
            model_name="pendingreplication",
            name="next_attempt",
            field=models.DateTimeField(
                blank=True,
                null=True,
                help_text="Not retried by process_failed_media --watch before then: a failed "
                "repair backs off exponentially. Empty: due now (a fresh failure is retried "
                "at once).",
            ),
        ),
    ]
