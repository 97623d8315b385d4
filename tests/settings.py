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
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
MEDIA_ROOT = tempfile.mkdtemp(prefix="django_resto_tests_media_")
MEDIA_URL = "/media/"
RESTO_MEDIA_HOSTS = []
LOGGING_CONFIG = None
