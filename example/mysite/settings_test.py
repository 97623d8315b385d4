"""Settings for the example's own tests: the real settings, read from a test environment.

The example is configured only through environment variables, so its tests set those
variables, before ``settings.py`` reads them, rather than bypass the file. Each test then
points STORAGES at the media servers it starts (see tests/conftest.py).
"""

import os
import tempfile

# Never created: pytest-django tests on an in-memory database, and every test gets its
# own MEDIA_ROOT (tests/conftest.py).
_TMP = f"{tempfile.gettempdir()}/resto-example-tests"

os.environ.update(
    {
        "DJANGO_SECRET_KEY": "example site tests",
        "DEBUG": "0",
        "ALLOWED_HOSTS": "testserver",
        "DATABASE_PATH": f"{_TMP}/db.sqlite3",
        "MEDIA_ROOT": f"{_TMP}/media",
        "MEDIA_URL": "/media/",
        "STATIC_ROOT": f"{_TMP}/static",
        "RESTO_BACKEND": "hybrid",
        "RESTO_MEDIA_HOSTS": "",
        "RESTO_FATAL_EXCEPTIONS": "1",
    }
)
for _name in (
    "CSRF_TRUSTED_ORIGINS",
    "HTTPS",
    "RESTO_AUTH_USER",
    "RESTO_AUTH_PASSWORD",
    "RESTO_MIN_REPLICAS",
    "RESTO_TIMEOUT",
    "RESTO_LISTING_PREFIX",
):
    os.environ.pop(_name, None)

from .settings import *  # noqa: E402, F403
