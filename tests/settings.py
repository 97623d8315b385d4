"""Django settings for the test suite."""

import atexit
import os
import shutil
import tempfile
from importlib.util import find_spec
from typing import Any

SECRET_KEY = "django_resto tests"
DEBUG = False
USE_TZ = True
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django_resto",
]
# RESTO_TEST_DB=postgresql runs the suite on PostgreSQL (psycopg 3) instead of SQLite.
# The ENGINE must be right from the start; the server is the suite's own cluster, whose
# host and port tests/conftest.py fills in before the test database is created.
_TEST_DB = os.environ.get("RESTO_TEST_DB", "sqlite")
_DB_DIR = ""
if _TEST_DB == "postgresql":
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            # The cluster's NAME, USER, HOST and PORT: see django_db_modify_db_settings.
            "NAME": "",
            "USER": "",
            "HOST": "",
            "PORT": "",
            "TEST": {"NAME": "test_django_resto"},
        }
    }
elif _TEST_DB == "sqlite":
    # A file, not :memory:: replication threads write the journal concurrently, and
    # SQLite's shared-cache memory databases answer "table is locked" instead of waiting.
    # Some tests have other processes write it too: WAL lets readers go on while one
    # writes, and the timeout makes writers wait for each other's locks.
    _DB_DIR = tempfile.mkdtemp(prefix="django_resto_tests_db_")
    atexit.register(shutil.rmtree, _DB_DIR, ignore_errors=True)
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": f"{_DB_DIR}/db.sqlite3",
            "OPTIONS": {
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL",
                "timeout": 30,
            },
            "TEST": {"NAME": f"{_DB_DIR}/test.sqlite3"},
        }
    }
else:
    raise ValueError(f"RESTO_TEST_DB={_TEST_DB!r}: use 'sqlite' (the default) or 'postgresql'")
MEDIA_ROOT = tempfile.mkdtemp(prefix="django_resto_tests_media_")
# Removed when the process ends: every run used to leave both directories in /tmp.
atexit.register(shutil.rmtree, MEDIA_ROOT, ignore_errors=True)
MEDIA_URL = "/media/"
RESTO_MEDIA_HOSTS: list[str] = []
LOGGING_CONFIG = None

# Django's Tasks framework (built in since 6.0, else the django-tasks backport) for
# tests/test_tasks.py: "default" runs tasks at once, "db" stores them for a db_worker
# process (django-tasks-db). Without them installed the rest of the suite still runs.
_TASKS_PACKAGE = "django.tasks" if find_spec("django.tasks") else "django_tasks"
if find_spec(_TASKS_PACKAGE):
    TASKS: dict[str, dict[str, Any]] = {
        "default": {"BACKEND": f"{_TASKS_PACKAGE}.backends.immediate.ImmediateBackend"}
    }
    if find_spec("django_tasks_db"):
        INSTALLED_APPS.append("django_tasks_db")
        TASKS["db"] = {"BACKEND": "django_tasks_db.DatabaseBackend", "QUEUES": ["default", "resto"]}
