"""Settings of the example site: every value comes from an environment variable.

The same file runs the local demo (``make demo``), a developer's ``runserver`` and a
deployment under gunicorn, so nothing here is specific to one of them: the environment
decides, and the defaults are the safe ones (``DEBUG`` off, no secret key invented
outside ``DEBUG``, a local-only storage when no media server is named).

Environment variables (booleans accept 1/0, true/false, yes/no, on/off):

``DJANGO_SECRET_KEY``
    Required unless ``DEBUG`` is on, where a fixed development key is used.
``DEBUG``
    Django's debug mode; default off. On, Django also serves ``MEDIA_URL`` from
    ``MEDIA_ROOT`` (``runserver`` without media servers).
``ALLOWED_HOSTS``
    Comma-separated host names the site answers to; default ``localhost,127.0.0.1``.
``CSRF_TRUSTED_ORIGINS``
    Comma-separated origins (``https://www.example.com``) allowed to POST forms when a
    proxy changes the scheme or host; default none.
``HTTPS``
    On when a TLS-terminating proxy, which sets ``X-Forwarded-Proto``, fronts the site:
    cookies become secure-only and plain HTTP is redirected. Default off.
``DATABASE_PATH``
    The SQLite database file; default ``db.sqlite3`` next to ``manage.py``.
``MEDIA_ROOT``
    The master copy of the uploads; default ``media/`` next to ``manage.py``. With several
    application servers, point it at storage they share.
``MEDIA_URL``
    Where browsers fetch uploads; default ``/media/``. Its path is also where the media
    servers keep the files (``http://media-1:8080/media/uploads/...``).
``STATIC_ROOT``
    Where ``collectstatic`` puts the admin's assets; default ``static/`` next to
    ``manage.py``.
``RESTO_BACKEND``
    ``hybrid`` (default: master copy, then every media server during the request),
    ``async`` (master copy, media servers in the background) or ``distributed`` (media
    servers only).
``RESTO_MEDIA_HOSTS``
    Comma-separated media servers, ``name:port`` or ``https://name:port``; default none
    (files stay in ``MEDIA_ROOT``; ``manage.py check`` warns).
``RESTO_AUTH_USER``, ``RESTO_AUTH_PASSWORD``
    HTTP Basic credentials for writes to the media servers; both or neither.
``RESTO_FATAL_EXCEPTIONS``
    On (default) an upload or delete that fails on a media server fails the request:
    consistency first. Off, the failure is logged and journaled and the request
    succeeds: availability first, ``manage.py process_failed_media`` catches up.
``RESTO_MIN_REPLICAS``
    Media servers that must acknowledge an upload, whatever ``RESTO_FATAL_EXCEPTIONS``
    says; default the backend's (0 for hybrid and async, 1 for distributed).
``RESTO_TIMEOUT``
    Seconds to wait for each media server; default 2.
``RESTO_LISTING_PREFIX``
    URL path of nginx's JSON autoindex of the media root, for ``manage.py resto_sync``;
    default ``/_resto/list/``.
``LOG_LEVEL``
    Level of the ``django_resto`` logger on the console; default ``INFO``.
"""

import os
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default).strip()


def env_bool(name: str, default: bool) -> bool:
    """Parse a boolean strictly: a typo must not silently flip DEBUG or the failure policy."""
    value = env_str(name).lower()
    if not value:
        return default
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (1/0, true/false), got {value!r}.")


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in env_str(name, default).split(",") if item.strip()]


def env_number(name: str, kind: type[int] | type[float]) -> int | float | None:
    value = env_str(name)
    if not value:
        return None
    try:
        return kind(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a number, got {value!r}.") from None


DEBUG = env_bool("DEBUG", False)

SECRET_KEY = env_str("DJANGO_SECRET_KEY")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("Set DJANGO_SECRET_KEY (or DEBUG=1 for local development only).")
    SECRET_KEY = "django-insecure-example-site-development-only"

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "localhost,127.0.0.1")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")

if env_bool("HTTPS", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = True
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    # The replication journal, the system checks and the repair commands.
    "django_resto",
    "gallery",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "mysite.urls"
WSGI_APPLICATION = "mysite.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": env_str("DATABASE_PATH") or str(BASE_DIR / "db.sqlite3"),
        # Replication threads and the timers write the journal while a request holds the
        # database: WAL lets readers and the writer work at once, and the timeout waits
        # for the write lock instead of failing with "database is locked".
        "OPTIONS": {
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL",
            "timeout": 20,
        },
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = env_str("STATIC_ROOT") or str(BASE_DIR / "static")

MEDIA_ROOT = env_str("MEDIA_ROOT") or str(BASE_DIR / "media")
MEDIA_URL = env_str("MEDIA_URL") or "/media/"

# --- django_resto -----------------------------------------------------------------------

RESTO_BACKENDS = {
    "hybrid": "django_resto.storage.HybridStorage",
    "async": "django_resto.storage.AsyncStorage",
    "distributed": "django_resto.storage.DistributedStorage",
}
_backend = env_str("RESTO_BACKEND", "hybrid").lower()
if _backend not in RESTO_BACKENDS:
    raise ImproperlyConfigured(
        f"RESTO_BACKEND must be one of {', '.join(RESTO_BACKENDS)}, got {_backend!r}."
    )

_resto_options: dict = {
    "hosts": env_list("RESTO_MEDIA_HOSTS"),
    "timeout": env_number("RESTO_TIMEOUT", float) or 2,
    "fatal_exceptions": env_bool("RESTO_FATAL_EXCEPTIONS", True),
}
_min_replicas = env_number("RESTO_MIN_REPLICAS", int)
if _min_replicas is not None:
    _resto_options["min_replicas"] = _min_replicas
_user, _password = env_str("RESTO_AUTH_USER"), os.environ.get("RESTO_AUTH_PASSWORD", "")
if bool(_user) != bool(_password):
    raise ImproperlyConfigured("Set both RESTO_AUTH_USER and RESTO_AUTH_PASSWORD, or neither.")
if _user:
    _resto_options["auth"] = (_user, _password)

STORAGES = {
    "default": {"BACKEND": RESTO_BACKENDS[_backend], "OPTIONS": _resto_options},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
RESTO_LISTING_PREFIX = env_str("RESTO_LISTING_PREFIX") or "/_resto/list/"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {
        # Replication failures name the host and the file: operators must see them.
        "django_resto": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO").upper()},
    },
}
