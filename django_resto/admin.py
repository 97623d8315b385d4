"""The replication journal in Django's admin: see what lags, and retry it now.

Rows are written by the storages and deleted by the repairs; editing one by hand
would only lie about a host's state, so everything is read-only. The one thing an
operator may want to do — retry, instead of waiting for the next scheduled
``process_failed_media`` — is an action that runs the same repair.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone

from .models import PendingReplication

#: Characters of ``last_error`` shown in the change list.
ERROR_PREVIEW = 80


class AgeFilter(admin.SimpleListFilter):
    """How long a row has been waiting: recent failures differ from forgotten ones."""

    title = "age"
    parameter_name = "age"

    RANGES = {
        "hour": ("less than 1 hour", timedelta(hours=1)),
        "day": ("less than 1 day", timedelta(days=1)),
        "older": ("older than 1 day", timedelta(days=1)),
    }

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(key, label) for key, (label, _) in self.RANGES.items()]

    def queryset(
        self, request: HttpRequest, queryset: QuerySet[PendingReplication]
    ) -> QuerySet[PendingReplication]:
        value = self.value()
        if value not in self.RANGES:
            return queryset
        threshold = timezone.now() - self.RANGES[value][1]
        if value == "older":
            return queryset.filter(first_attempt__lt=threshold)
        return queryset.filter(first_attempt__gte=threshold)


@admin.register(PendingReplication)
class PendingReplicationAdmin(admin.ModelAdmin):
    list_display = (
        "host",
        "name",
        "operation",
        "attempts",
        "first_attempt",
        "last_attempt",
        "next_attempt",
        "short_error",
    )
    list_filter = ("host", AgeFilter, "storage", "operation")
    search_fields = ("name",)
    readonly_fields = (
        "storage",
        "host",
        "name",
        "operation",
        "sources",
        "seq",
        "first_attempt",
        "last_attempt",
        "next_attempt",
        "attempts",
        "last_error",
    )
    ordering = ("first_attempt", "host", "name")
    actions = ["retry_now"]
    list_per_page = 100

    @admin.display(description="last error", ordering="last_error")
    def short_error(self, row: PendingReplication) -> str:
        error = row.last_error or ""
        if len(error) <= ERROR_PREVIEW:
            return error
        return error[: ERROR_PREVIEW - 1] + "…"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # rows record what a storage saw; an invented one means nothing

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # read-only: the detail page still shows every field

    def has_retry_permission(self, request: HttpRequest) -> bool:
        # The model's own change permission: who may alter the journal may drain it.
        opts = self.opts
        return request.user.has_perm(f"{opts.app_label}.change_{opts.model_name}")

    @admin.action(description="Retry now", permissions=["retry"])
    def retry_now(self, request: HttpRequest, queryset: QuerySet[PendingReplication]) -> None:
        """Repair the selected rows right away, as process_failed_media would."""
        from .repair import repair_rows

        rows = list(queryset)
        report = repair_rows(rows)
        skipped = getattr(report, "skipped", 0)
        text = f"Retried {len(rows)} row(s): {report.repaired} repaired, {report.failed} failed"
        if skipped:
            text += f", {skipped} skipped"
        level = messages.SUCCESS if not report.failed and not skipped else messages.WARNING
        self.message_user(request, text + ".", level)
        for error in list(getattr(report, "errors", []))[:10]:
            self.message_user(request, error, messages.ERROR)
