"""Django settings for the test suite."""

import tempfile

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
