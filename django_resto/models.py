"""The replication journal: what each media server still has to catch up on.

One row per (storage, host, name), holding no bytes and no verb to replay: the
repair derives what to do from the master copy at repair time (file present: PUT
it; absent: DELETE), so replaying operations out of order can never resurrect a
deleted file or bring back old bytes — the flaw that made django-resto drop
django_dust's queue.
"""

from __future__ import annotations

from django.db import models

from .names import MAX_NAME_LENGTH


class PendingReplication(models.Model):
    storage = models.CharField(
        max_length=100,
        help_text="The STORAGES alias of the storage that wrote the file.",
    )
    host = models.CharField(max_length=255, help_text="The media server, as configured.")
    name = models.CharField(max_length=MAX_NAME_LENGTH, help_text="The storage name of the file.")
    operation = models.CharField(
        max_length=10,
        help_text="The latest operation the host missed (PUT or DELETE); informative "
        "for Hybrid and Async storages, which repair from the master copy.",
    )
    sources = models.JSONField(
        default=list,
        blank=True,
        help_text="Hosts that acknowledged the latest write (DistributedStorage copies from "
        "one of them, having no master copy).",
    )
    seq = models.BigIntegerField(
        help_text="The number the database issued to the latest operation, inside its "
        "per-name lock. A newer operation supersedes the row; an older success never "
        "clears it."
    )
    first_attempt = models.DateTimeField(auto_now_add=True)
    last_attempt = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    next_attempt = models.DateTimeField(
        null=True,
        blank=True,
        help_text="Not retried by process_failed_media --watch before then: a failed repair "
        "backs off exponentially. Empty: due now (a fresh failure is retried at once).",
    )

    class Meta:
        verbose_name = "pending replication"
        verbose_name_plural = "pending replications"
        ordering = ["host", "name"]
        constraints = [
            models.UniqueConstraint(
                fields=["storage", "host", "name"], name="django_resto_one_row_per_host_name"
            )
        ]
        indexes = [models.Index(fields=["host", "first_attempt"], name="django_resto_host_age")]

    def __str__(self) -> str:
        return f"{self.operation} {self.name} on {self.host}"


class JournalSequence(models.Model):
    """The counter that numbers operations where the database has no SEQUENCE.

    One row. PostgreSQL uses a real SEQUENCE instead (``django_resto_seq``, created by
    migration 0002): ``nextval`` takes no row lock, so concurrent requests never queue
    on it. See ordering.next_seq.
    """

    id = models.PositiveSmallIntegerField(primary_key=True)
    value = models.BigIntegerField()

    class Meta:
        db_table = "django_resto_sequence"
        verbose_name = "journal sequence"

    def __str__(self) -> str:
        return f"next operation after {self.value}"
