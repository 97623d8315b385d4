"""What the suite's worker processes share: Django set up by hand, events on stdout.

The drills' workers (tests/drill_worker.py, tests/race_worker.py) run as separate OS
processes against the test's own database and master copy, as gunicorn workers and
timers would; they configure Django themselves rather than import a settings module.
"""

from __future__ import annotations

import json
import sys
from typing import Any


def emit(**event: Any) -> None:
    """One JSON line on stdout, flushed at once: the drill reads it while we run."""
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def configure_django(config: dict[str, Any], storages: dict[str, Any], secret: str) -> None:
    """Django against ``config["databases"]`` and ``config["media_root"]``, with ``storages``."""
    import django
    from django.conf import settings

    settings.configure(
        SECRET_KEY=secret,
        USE_TZ=True,
        INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth", "django_resto"],
        DATABASES=config["databases"],
        MEDIA_ROOT=config["media_root"],
        MEDIA_URL="/media/",
        STORAGES={
            "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
            "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
            **storages,
        },
        LOGGING_CONFIG=None,
    )
    django.setup()
