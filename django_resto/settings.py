"""Options of the django_resto storages and their global ``RESTO_*`` twins.

Every option can be given in ``STORAGES[alias]["OPTIONS"]`` (lower case) or as a
global Django setting; the OPTIONS value wins, then the global setting, then the
default below. This is the same contract django-storages offers, so people who
know one know the other, and it keeps django-resto 1.x settings working as-is.
"""

from __future__ import annotations

import functools
import re
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

# Hosts belong to the transport layer; re-exported here so that
# ``from django_resto.settings import Host, parse_host`` keeps working.
from .hosts import Host as Host
from .hosts import parse_host as parse_host

# Characters that would end or split an HTTP header line if sent in a credential.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# A header name is a token (RFC 9110, section 5.6.2).
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
#: What the journal's columns hold (models.PendingReplication): longer values are refused.
MAX_HOST_LENGTH = 255
MAX_ALIAS_LENGTH = 100

# option name -> (global setting, default). ``None`` as the global setting means
# the option has no global twin (it only makes sense per storage).
OPTIONS: dict[str, tuple[str | None, Any]] = {
    "hosts": ("RESTO_MEDIA_HOSTS", ()),
    "timeout": ("RESTO_TIMEOUT", 2),
    "connect_timeout": ("RESTO_CONNECT_TIMEOUT", None),
    # The slowest transfer a write may make, in bytes per second: a write's deadline is
    # ``timeout`` plus its body size at this rate (see wire.py). 256 KiB/s (2 Mbit/s)
    # lets a 1 GiB upload run for over an hour, and a trickling answer fail.
    "min_transfer_rate": ("RESTO_MIN_TRANSFER_RATE", 256 * 1024),
    # How long an operation waits for the per-name lock another process holds before it
    # fails (journaled): see ordering.py.
    "lock_timeout": ("RESTO_LOCK_TIMEOUT", 10),
    # The dead-host breaker (breaker.py): after a host fails, operations on it fail at
    # once for this many seconds, then one probes it; each failed probe doubles the
    # window, up to breaker_max_window. 0 turns the breaker off.
    "breaker_window": ("RESTO_BREAKER_WINDOW", 5),
    "breaker_max_window": ("RESTO_BREAKER_MAX_WINDOW", 60),
    "fatal_exceptions": ("RESTO_FATAL_EXCEPTIONS", True),
    "show_traceback": ("RESTO_SHOW_TRACEBACK", False),
    "verify": ("RESTO_VERIFY", True),
    "auth": ("RESTO_AUTH", None),
    "token": ("RESTO_TOKEN", None),
    "token_header": ("RESTO_TOKEN_HEADER", "Authorization"),
    "min_replicas": ("RESTO_MIN_REPLICAS", None),
    "max_workers": ("RESTO_MAX_WORKERS", None),
    "async_workers": ("RESTO_ASYNC_WORKERS", 4),
    # AsyncStorage only: "threads" (the in-process pool) or "tasks" (Django's Tasks
    # framework, so replication survives the web process and runs in workers).
    "replicate_with": ("RESTO_REPLICATE_WITH", "threads"),
    # The TASKS alias and the queue that replication tasks are enqueued on.
    "task_backend": ("RESTO_TASK_BACKEND", "default"),
    "task_queue": ("RESTO_TASK_QUEUE", "default"),
    # How many times a replication task that failed enqueues itself again, deferred to
    # its journal row's back-off (tasks.py); past them the row waits for
    # process_failed_media. 0: never (the drain alone retries).
    "task_retries": ("RESTO_TASK_RETRIES", 8),
    # Where nginx serves the JSON autoindex that resto_sync reads (the roles' default).
    "listing_prefix": ("RESTO_LISTING_PREFIX", "/_resto/list/"),
    # The STORAGES alias the journal files this storage's rows (and per-name locks)
    # under. Found in STORAGES when not given; a storage built outside STORAGES names
    # it here, or the journal refuses its failures (nothing could ever drain them).
    "journal_alias": (None, None),
}

#: The values ``replicate_with`` accepts.
REPLICATE_WITH = ("threads", "tasks")

# Options that FileSystemStorage understands; the storages with a local master
# copy pass them through untouched.
LOCAL_OPTIONS = (
    "location",
    "base_url",
    "file_permissions_mode",
    "directory_permissions_mode",
    "allow_overwrite",
)


def get_setting(name: str) -> Any:
    """Return a global django_resto setting, or its default.

    Stable API kept from django-resto 1.x: ``get_setting("MEDIA_HOSTS")`` and
    ``get_setting("RESTO_MEDIA_HOSTS")`` are the same thing.
    """
    if not name.startswith("RESTO_"):
        name = "RESTO_" + name
    for global_name, default in OPTIONS.values():
        if global_name == name:
            return getattr(settings, name, default)
    raise KeyError(f"Unknown django_resto setting {name!r}")


def resolve_options(
    backend: str, given: dict[str, Any], allowed: tuple[str, ...]
) -> dict[str, Any]:
    """Merge explicit options with global settings and defaults, validating both.

    ``allowed`` lists the extra option names the backend itself accepts (for
    instance FileSystemStorage's). An unknown name is an error, not a silent
    no-op: a typo in STORAGES must not quietly disable authentication.
    """
    unknown = sorted(set(given) - set(OPTIONS) - set(allowed))
    if unknown:
        raise ImproperlyConfigured(
            f"Invalid setting {unknown[0]!r} for {backend}. "
            f"Valid options are: {', '.join(sorted([*OPTIONS, *allowed]))}."
        )
    resolved: dict[str, Any] = {}
    for option, (global_name, default) in OPTIONS.items():
        if option in given:
            value, source = given[option], f"OPTIONS[{option!r}]"
        elif global_name is not None and hasattr(settings, global_name):
            value, source = getattr(settings, global_name), global_name
        else:
            value, source = default, f"the default of {option!r}"
        resolved[option] = _validate(option, value, source)
    return resolved


def _validate(option: str, value: Any, source: str) -> Any:
    def fail(expected: str) -> ImproperlyConfigured:
        return ImproperlyConfigured(f"{source} must be {expected}, got {value!r}.")

    if option == "hosts":
        if isinstance(value, str) or not isinstance(value, list | tuple):
            raise fail("a list of hosts such as ['media-1:8080']")
        if not all(isinstance(host, str) for host in value):
            raise fail("a list of strings")
        if any(len(host) > MAX_HOST_LENGTH for host in value):
            raise fail(
                f"a list of hosts of at most {MAX_HOST_LENGTH} characters (the journal's column)"
            )
        if len(set(value)) != len(value):
            raise fail("a list without duplicates")
        return tuple(value)
    if option in ("timeout", "connect_timeout", "lock_timeout"):
        if value is None and option == "connect_timeout":
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise fail("a positive number of seconds")
        return float(value)
    if option in ("fatal_exceptions", "show_traceback"):
        if not isinstance(value, bool):
            raise fail("True or False")
        return value
    if option == "verify":
        if not isinstance(value, bool | str):
            raise fail("True, False or the path of a CA bundle")
        return value
    if option == "auth":
        if value is None:
            return None
        if (
            not isinstance(value, list | tuple)
            or len(value) != 2
            or not all(isinstance(part, str) for part in value)
        ):
            # Never echo the value: it holds a password.
            raise ImproperlyConfigured(f"{source} must be a (username, password) pair of strings.")
        if ":" in value[0] or any(_CONTROL.search(part) for part in value):
            # HTTP Basic joins them with a colon; a line break would end the header.
            raise ImproperlyConfigured(
                f"{source}: the username may not contain ':', and neither part may contain "
                "line breaks or other control characters."
            )
        return tuple(value)
    if option == "token":
        if value is not None and (not isinstance(value, str) or not value):
            raise ImproperlyConfigured(f"{source} must be a non-empty string or None.")
        if value is not None and (_CONTROL.search(value) or value != value.strip()):
            # A token read from a file often keeps its newline; it would end the header.
            raise ImproperlyConfigured(
                f"{source} must not contain line breaks, control characters or surrounding "
                "whitespace."
            )
        return value
    if option == "token_header":
        if not isinstance(value, str) or not _TOKEN.fullmatch(value):
            raise fail("an HTTP header name (letters, digits and !#$%&'*+.^_`|~-)")
        return value
    if option in ("min_replicas", "max_workers"):
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise fail("a positive integer or None")
        return value
    if option == "async_workers":
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise fail("a positive integer")
        return value
    if option == "task_retries":
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise fail("a number of retries (an integer, 0 or more)")
        return value
    if option == "replicate_with":
        if not isinstance(value, str) or value not in REPLICATE_WITH:
            raise fail(" or ".join(repr(choice) for choice in REPLICATE_WITH))
        return value
    if option in ("breaker_window", "breaker_max_window"):
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise fail("a number of seconds (0 or more)")
        return float(value)
    if option == "min_transfer_rate":
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise fail("a positive number of bytes per second")
        return float(value)
    if option == "journal_alias":
        if value is None:
            return None
        if not isinstance(value, str) or not value or value != value.strip():
            raise fail("a STORAGES alias (a non-empty name without surrounding spaces)")
        if len(value) > MAX_ALIAS_LENGTH:
            raise fail(f"an alias of at most {MAX_ALIAS_LENGTH} characters (the journal's column)")
        return value
    if option == "listing_prefix":
        if not isinstance(value, str) or not value.startswith("/") or not value.endswith("/"):
            raise fail("a URL path that starts and ends with '/'")
        return value
    if option in ("task_backend", "task_queue"):
        # Names, not objects: they travel to the worker with every task.
        if not isinstance(value, str) or not value.strip() or value != value.strip():
            raise fail("a non-empty name without surrounding spaces")
        return value
    raise AssertionError(f"no validation for option {option!r}")  # pragma: no cover


@functools.lru_cache(maxsize=64)
def media_path(base_url: str | None) -> str:
    """The URL path under which media servers keep files: MEDIA_URL's path.

    The seed's rule: the URL that receives a PUT is the one browsers GET, with the
    host changed. A CDN-style absolute MEDIA_URL therefore contributes its path only.
    Cached: every save asks it once per host, and a site has one or two such URLs.
    """
    if not base_url:
        return "/"
    parts = urlsplit(base_url)
    if parts.query or parts.fragment:
        raise ImproperlyConfigured(
            f"base_url (MEDIA_URL) {base_url!r} must not contain a query string or a fragment."
        )
    path = parts.path or "/"
    if not path.startswith("/"):
        path = "/" + path
    if not path.endswith("/"):
        path += "/"
    return path
