"""Number operations from the database, not the clock.

Rows written before this migration carry ``time.time_ns()`` values, and so do rows
written by processes still running the older code during a rolling upgrade. The
counter starts at 2**62, above any nanosecond clock reading until the year 2116: every
operation the database numbers is newer than every row the clock numbered, so a success
after the upgrade clears them all.
"""

from django.db import migrations, models

# ordering.FIRST_SEQ, written out: a migration must not change when the code does.
FIRST_SEQ = 1 << 62


def start_value(apps, schema_editor):
    model = apps.get_model("django_resto", "PendingReplication")
    largest = model.objects.using(schema_editor.connection.alias).aggregate(models.Max("seq"))[
        "seq__max"
    ]
    return max(FIRST_SEQ, (largest or 0) + 1)


def create_counter(apps, schema_editor):
    start = start_value(apps, schema_editor)
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(f"CREATE SEQUENCE django_resto_seq START WITH {int(start)}")
    sequence = apps.get_model("django_resto", "JournalSequence")
    sequence.objects.using(schema_editor.connection.alias).create(id=1, value=start)


def drop_counter(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("DROP SEQUENCE IF EXISTS django_resto_seq")


class Migration(migrations.Migration):
    dependencies = [("django_resto", "0001_initial")]

    operations = [
        migrations.CreateModel(
            name="JournalSequence",
            fields=[
                ("id", models.PositiveSmallIntegerField(primary_key=True, serialize=False)),
                ("value", models.BigIntegerField()),
            ],
            options={"db_table": "django_resto_sequence", "verbose_name": "journal sequence"},
        ),
        migrations.AlterField(
            model_name="pendingreplication",
            name="seq",
            field=models.BigIntegerField(
                help_text="The number the database issued to the latest operation, inside "
                "its per-name lock. A newer operation supersedes the row; an older success "
                "never clears it."
            ),
        ),
        migrations.RunPython(create_counter, drop_counter),
    ]
