"""Django settings for the test suite."""

import tempfile
from importlib.util import find_spec

SECRET_KEY = "django_resto tests"
DEBUG = False
USE_TZ = True
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django_resto",
]
# A file, not :memory:: replication threads write the journal concurrently, and
# SQLite's shared-cache memory databases answer "table is locked" instead of waiting.
_DB_DIR = tempfile.mkdtemp(prefix="django_resto_tests_db_")
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": f"{_DB_DIR}/db.sqlite3",
        "OPTIONS": {"timeout": 30},
        "TEST": {"NAME": f"{_DB_DIR}/test.sqlite3"},
    }
}
MEDIA_ROOT = tempfile.mkdtemp(prefix="django_resto_tests_media_")
MEDIA_URL = "/media/"
RESTO_MEDIA_HOSTS = []
LOGGING_CONFIG = None

# Django's Tasks framework (built in since 6.0, else the django-tasks backport) for
# tests/test_tasks.py: "default" runs tasks at once, "db" stores them for a db_worker
# process (django-tasks-db). Without them installed the rest of the suite still runs.
_TASKS_PACKAGE = "django.tasks" if find_spec("django.tasks") else "django_tasks"
if find_spec(_TASKS_PACKAGE):
    TASKS = {"default": {"BACKEND": f"{_TASKS_PACKAGE}.backends.immediate.ImmediateBackend"}}
    if find_spec("django_tasks_db"):
        INSTALLED_APPS.append("django_tasks_db")
        TASKS["db"] = {"BACKEND": "django_tasks_db.DatabaseBackend", "QUEUES": ["default", "resto"]}
