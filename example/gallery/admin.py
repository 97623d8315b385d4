"""The uploads in Django's admin: adding, replacing and deleting go through the same storage."""

from django.contrib import admin

from .models import Upload


@admin.register(Upload)
class UploadAdmin(admin.ModelAdmin):
    list_display = ["__str__", "file", "uploaded_at"]
    search_fields = ["title", "file"]
    date_hierarchy = "uploaded_at"
    readonly_fields = ["uploaded_at"]
