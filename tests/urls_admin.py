"""URLs for the admin tests (tests/test_admin.py): only the admin site."""

from django.contrib import admin
from django.urls import path

urlpatterns = [path("admin/", admin.site.urls)]
