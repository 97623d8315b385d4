"""Settings for the ``db_worker`` process that tests/test_tasks.py starts.

The worker must see what the test process sees: the same test database, SQLite or
PostgreSQL (not a copy: the tasks and the journal rows are in it), the same MEDIA_ROOT
(the master copy it reads) and the same STORAGES entry (the media servers listen on
ports picked per test). The test passes the three through environment variables, the
database as JSON from tests.dbconfig.subprocess_databases().
"""

import contextlib
import json
import os

import tests.settings as _base
from tests.settings import *  # noqa: F403

# Importing tests.settings made temporary directories this process does not use.
for _unused in filter(None, (_base._DB_DIR, _base.MEDIA_ROOT)):
    with contextlib.suppress(OSError):
        os.rmdir(_unused)

DATABASES = json.loads(os.environ["RESTO_WORKER_DATABASES"])
MEDIA_ROOT = os.environ["RESTO_WORKER_MEDIA_ROOT"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    **json.loads(os.environ["RESTO_WORKER_STORAGES"]),
}

# What the worker did ends up in the log file the test shows when it fails.
LOGGING_CONFIG = "logging.config.dictConfig"
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler"}},
    "loggers": {
        # django.tasks (Django >= 6.0) or django_tasks (the backport) log each task's
        # start and end; Django's own "django" handlers print nothing unless DEBUG.
        name: {"handlers": ["stderr"], "level": "INFO", "propagate": False}
        for name in ("django_resto", "django.tasks", "django_tasks", "django_tasks_db")
    },
}
